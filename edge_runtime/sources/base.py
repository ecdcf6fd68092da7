"""What every source shares: samples, the thread that reads them, backoff and counters.

A source owns one thread that reads its device and keeps only what the pipelines need: a camera
keeps the latest frame (never a growing queue), a sensor keeps bounded per-channel ring buffers.
Pipelines wait on a source for news with :meth:`Source.wait_for`, which returns as soon as a
sample newer than the one they last saw arrives. Times are monotonic (``time.monotonic()``)
for alignment, plus the wall clock for reports.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.sources.buffer import SensorBuffers
from edge_runtime.supervision import spawn

log = logging.getLogger(__name__)


class BackoffConfig(BaseModel):
    """Reconnect delays: ``initial_s``, multiplied by ``factor`` after each failure, capped at ``max_s``.

    A source comes back at most ``max_s`` (plus jitter) after its peer does, sooner when the peer
    can be watched (a device node or file that reappears: see :mod:`edge_runtime.recovery`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_s: float = Field(0.5, gt=0, le=3600, description="First delay after a failure, in seconds.")
    max_s: float = Field(
        1.0,
        gt=0,
        le=86400,
        description="Longest delay between attempts, in seconds: bounds how long recovery takes "
        "after the peer is back.",
    )
    factor: float = Field(2.0, ge=1.0, le=100, description="Growth of the delay after each failure.")
    jitter: float = Field(0.1, ge=0, le=1, description="Random spread, as a share of the delay.")


class Backoff:
    """Exponential backoff with jitter; :meth:`reset` after a success."""

    def __init__(self, config: BackoffConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or BackoffConfig()
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        c = self.config
        delay = min(c.initial_s * c.factor**self.attempts, c.max_s)
        self.attempts += 1
        spread = delay * c.jitter
        return float(max(0.0, delay + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self.attempts = 0


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame: BGR uint8 pixels and when they were captured. ``scale`` > 1: decoded at
    reduced size (an MJPEG frame at 1/2 or 1/4), each pixel covers ``scale`` x ``scale`` of the camera's."""

    image: npt.NDArray[np.uint8]
    seq: int
    t_mono: float
    t_wall: float
    scale: int = 1


@runtime_checkable
class FrameSource(Protocol):
    """A source of image frames (a camera): the latest frame, never a queue."""

    def get(self, after_seq: int = 0, timeout: float = 1.0) -> Frame | None:
        """The first frame newer than ``after_seq``, waiting up to ``timeout``."""
        ...

    def latest(self) -> Frame | None:
        """The newest frame, taken (so the reader may replace it)."""
        ...

    def peek(self) -> Frame | None:
        """The newest frame, left in place."""
        ...


@runtime_checkable
class SensorSource(Protocol):
    """A source of sensor samples: parsed channels in bounded ring buffers."""

    @property
    def buffers(self) -> SensorBuffers: ...


class SourceConfigBase(BaseModel):
    """Options every source has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reconnect: BackoffConfig = Field(
        default_factory=BackoffConfig, description="Backoff between reconnect attempts."
    )


class Source(abc.ABC):
    """Base of camera, serial and replay sources: one reader thread, state and counters.

    Subclasses implement :meth:`_open`, :meth:`_read_once` and :meth:`_close`. ``_read_once``
    returns False when the device is gone or the stream ended (the base reconnects with backoff)
    and raises :class:`~edge_runtime.errors.SourceError` on a failure worth logging.
    """

    kind: ClassVar[str] = "source"

    def __init__(
        self, name: str, config: SourceConfigBase, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.state = "stopped"
        self.last_error = ""
        self.down_cause = ""  # why the current outage began (last_error: the latest failure)
        self.reconnects = 0
        self.samples = 0
        self.last_sample_mono: float | None = None
        self.seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(config.reconnect)
        self._listeners: list[Callable[[str, str, str], None]] = []
        self._news: list[threading.Event] = []  # set on every new sample (multi-source pipelines)
        self.finished = False
        self.heartbeat = time.monotonic()  # refreshed before every read: a stale one while "up" is a wedge

    # -- lifecycle -----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[str, str, str], None]) -> None:
        """``listener(source_name, state, detail)`` is called on every state change."""
        self._listeners.append(listener)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            if state == "down" and detail and detail != self.last_error:  # a new cause while down
                self.last_error = detail
                log.warning("source %s is still down: %s", self.name, detail)
            return
        self.state = state
        if detail:
            self.last_error = detail if state == "down" else self.last_error
        if state == "down":
            self.down_cause = detail or "no data"
        level = logging.WARNING if state == "down" else logging.INFO
        log.log(level, "source %s is %s%s", self.name, state, f": {detail}" if detail else "")
        for listener in self._listeners:
            listener(self.name, state, detail)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._set_state("starting")
        self._thread = spawn(
            f"source-{self.name}", self._run, should_restart=lambda: not self._stop.is_set(), start=False
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._set_state("stopped")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wedged(self, limit_s: float) -> str:
        """Why this source looks stuck (a read blocked for over ``limit_s``), or ""."""
        if self._thread is None or self.finished or self.state == "stopped":
            return ""
        if not self._thread.is_alive():
            return f"source {self.name}: reader thread died"
        age = time.monotonic() - self.heartbeat
        if self.state == "up" and age > limit_s:
            return f"source {self.name}: a read has been blocked for {age:.1f} s"
        return ""

    def _run(self) -> None:
        from edge_runtime.errors import SourceError

        while not self._stop.is_set():
            try:
                self._open()
            except SourceError as exc:
                self._set_state("down", str(exc))
                self._wait_reconnect()
                self.reconnects += 1
                continue
            self._set_state("up")
            self._backoff.reset()
            try:
                while not self._stop.is_set():
                    self.heartbeat = time.monotonic()
                    if not self._read_once():
                        break
            except SourceError as exc:
                self._set_state("down", str(exc))
            finally:
                self._close()
            if self._stop.is_set() or self.finished:
                break
            if self.state != "down":
                self._set_state("down", "stream ended or device gone")
            self._wait_reconnect()
            self.reconnects += 1
        if self.finished:
            self._set_state("finished")

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _wait_reconnect(self) -> None:
        """The backoff delay, cut short (and the backoff reset) when the peer is seen again."""
        from edge_runtime.recovery import wait_for_peer

        if wait_for_peer(self._stop, self._backoff.next_delay(), self._peer_probe()):
            log.info("source %s: its device is back; reconnecting now", self.name)
            self._backoff.reset()

    def _peer_probe(self) -> Callable[[], bool] | None:
        """A cheap check that the device is there again (None: none; subclasses override)."""
        return None

    # -- subclass hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Open the device, port, file or stream; raise SourceError when it cannot."""

    @abc.abstractmethod
    def _read_once(self) -> bool:
        """Read and publish what is there; False when the device is gone or the stream ended."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release what :meth:`_open` took (called on every reconnect and at stop)."""

    # -- news for pipelines ------------------------------------------------------------------------

    def _publish(self, t_mono: float) -> None:
        """Subclasses call this after storing a new sample."""
        with self._cond:
            self.seq += 1
            self.samples += 1
            self.last_sample_mono = t_mono
            self._cond.notify_all()
        for news in self._news:
            news.set()

    def add_news_event(self, event: threading.Event) -> None:
        """``event`` is set after every new sample (one event can watch several sources)."""
        self._news.append(event)

    def wait_for(self, after_seq: int, timeout: float) -> int:
        """Block until ``seq`` passes ``after_seq`` (returns the new seq) or ``timeout`` (returns
        ``after_seq``), or until the source stops."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.seq <= after_seq and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self.seq

    def last_sample_age(self) -> float | None:
        return None if self.last_sample_mono is None else self.clock() - self.last_sample_mono

    def stats(self) -> dict[str, Any]:
        age = self.last_sample_age()
        return {
            "type": self.kind,
            "state": self.state,
            "samples": self.samples,
            "reconnects": self.reconnects,
            "last_sample_age_s": None if age is None else round(age, 3),
            "last_error": self.last_error,
            "down_cause": self.down_cause if self.state == "down" else "",
        }
