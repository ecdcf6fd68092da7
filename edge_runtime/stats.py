"""Bounded running statistics: latency percentiles and event rates (pure, thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np


class LatencyWindow:
    """The last ``size`` latencies of one stage, in milliseconds, with percentiles."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)
            self.count += 1

    def percentiles(self, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64, count=len(self._values))
        if values.size == 0:
            return {f"p{q:g}": None for q in qs}
        result = np.percentile(values, qs)
        return {f"p{q:g}": round(float(v), 3) for q, v in zip(qs, result, strict=True)}


class RateMeter:
    """Events per second over a sliding window of the last ``window_s`` seconds.

    The rate is the number of events in ``(now - window, now]`` divided by the window, where the
    window is ``window_s`` once the meter has run that long and the time since it started (or
    since :meth:`reset`) before: a steady 1 Hz source reads 1.0, 20 events in the first second
    read 20.0, and the rate decays to 0 within ``window_s`` after the events stop. The clock is
    monotonic (injectable for tests); a process that was stopped (SIGSTOP) sees the pause as
    time without events, never as a burst.
    """

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.window_s = window_s
        self.clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self._start = clock()
        self._last: float | None = None

    def reset(self) -> None:
        """Forget every event; the window starts again now."""
        with self._lock:
            self._times.clear()
            self._start = self.clock()

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            self._times.append(now)
            self._last = now
            self._trim(now)

    def last_age(self) -> float | None:
        """Seconds since the last event (None: no event yet), however long ago it was."""
        last = self._last
        return None if last is None else round(self.clock() - last, 3)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def rate(self) -> float:
        now = self.clock()
        with self._lock:
            self._trim(now)
            n = len(self._times)
            span = min(self.window_s, now - self._start)
        if n == 0 or span <= 0:
            return 0.0
        return round(n / span, 3)
