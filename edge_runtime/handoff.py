"""A second stage for a worker thread: jobs handed over in order, done on another thread.

A pipeline's worker prepares the inputs and invokes the model; post-processing and emitting (the
outbox write) run here, on the next result's invoke time, since ``invoke`` releases the GIL. The
queue is short and a full queue blocks the producer: nothing is ever dropped, and a stage that
falls behind slows the worker down instead of growing memory.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from edge_runtime.supervision import spawn

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()


class StageDiedError(RuntimeError):
    """The stage's thread is gone: handing it more work would block forever."""


class Stage(Generic[T]):
    """``handle(job)`` for each job given to :meth:`put`, in order, on one thread."""

    def __init__(
        self, name: str, handle: Callable[[T], object], depth: int = 2, *, restart: bool = True
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.name = name
        self._handle = handle
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self.busy_since: float | None = None  # monotonic time the job in hand started, or None
        self.error: BaseException | None = None  # the last exception a job raised
        # a job that raises is dropped and reported by the supervisor; the thread takes the next
        # one (restart) or ends, and then put() raises instead of blocking (restart=False)
        self._thread = spawn(
            name,
            self._run,
            restart=restart,  # restarted until it reads the stop mark: close drains
        )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, job: T) -> None:
        """Hand ``job`` over; blocks while the queue is full. Raises :class:`StageDiedError` when the
        thread is gone (its exception is the cause)."""
        while True:
            if not self._thread.is_alive():
                raise StageDiedError(f"{self.name}: thread died: {self.error!r}") from self.error
            try:
                self._queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, timeout: float | None = None) -> bool:
        """Finish every job handed over, then end the thread; whether it ended within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if deadline is not None and time.monotonic() > deadline:
                    return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._thread.join(remaining)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            self.busy_since = time.monotonic()
            try:
                self._handle(job)  # type: ignore[arg-type]
            except BaseException as exc:
                self.error = exc
                raise  # to the supervisor: logged, reported, and the thread restarted
            finally:
                self.busy_since = None
