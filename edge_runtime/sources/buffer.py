"""Bounded, thread-safe per-channel ring buffers of timestamped sensor values.

A sensor source appends ``(t_mono, value)`` per channel as lines arrive; pipelines take ordered
copies of the recent past (:meth:`SensorBuffers.window`) and sample them at the trigger time
(:mod:`edge_runtime.fusion`). Memory is fixed by ``capacity``: the oldest values are overwritten.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class Ring:
    """A fixed-capacity ring of (time, value) pairs, oldest overwritten. Not locked by itself."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"ring capacity must be at least 2, got {capacity}")
        self.capacity = capacity
        self._t = np.zeros(capacity, dtype=np.float64)
        self._v = np.zeros(capacity, dtype=np.float64)
        self._next = 0
        self.count = 0

    def append(self, t: float, value: float) -> None:
        self._t[self._next] = t
        self._v[self._next] = value
        self._next = (self._next + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def ordered(self, since: float | None = None) -> tuple[FloatArray, FloatArray]:
        """Copies of (times, values), oldest first; only times >= ``since`` when given."""
        if self.count < self.capacity:
            t, v = self._t[: self.count].copy(), self._v[: self.count].copy()
        else:
            t = np.concatenate((self._t[self._next :], self._t[: self._next]))
            v = np.concatenate((self._v[self._next :], self._v[: self._next]))
        if since is not None and t.size:
            start = int(np.searchsorted(t, since, side="left"))
            t, v = t[start:], v[start:]
        return t, v

    def latest(self) -> tuple[float, float] | None:
        if not self.count:
            return None
        i = (self._next - 1) % self.capacity
        return float(self._t[i]), float(self._v[i])


class SensorBuffers:
    """Named channels, each a :class:`Ring`, behind one lock.

    Channels named up front always exist; others are added as values arrive, up to
    ``max_channels`` in all (None: no cap). Values for a channel past the cap are refused and
    counted in :attr:`refused`, so input with ever new keys cannot grow memory.
    """

    def __init__(self, capacity: int, channels: Iterable[str] = (), max_channels: int | None = None) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._rings: dict[str, Ring] = {c: Ring(capacity) for c in channels}
        self.max_channels = max_channels
        self.refused = 0
        """Values refused because their channel would pass ``max_channels``."""

    @property
    def channels(self) -> list[str]:
        with self._lock:
            return list(self._rings)

    def append(self, t: float, values: Mapping[str, float]) -> int:
        """Store one line's values, all at time ``t``; returns how many were refused (cap)."""
        refused = 0
        with self._lock:
            for name, value in values.items():
                ring = self._rings.get(name)
                if ring is None:
                    if self.max_channels is not None and len(self._rings) >= self.max_channels:
                        refused += 1
                        continue
                    ring = self._rings[name] = Ring(self.capacity)
                ring.append(t, value)
            self.refused += refused
        return refused

    def window(self, channel: str, since: float | None = None) -> tuple[FloatArray, FloatArray]:
        """Ordered copies of one channel's (times, values); empty arrays for an unknown channel."""
        with self._lock:
            ring = self._rings.get(channel)
            if ring is None:
                return np.zeros(0), np.zeros(0)
            return ring.ordered(since)

    def latest(self, channel: str) -> tuple[float, float] | None:
        with self._lock:
            ring = self._rings.get(channel)
            return None if ring is None else ring.latest()
