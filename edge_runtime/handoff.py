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
    """``handle(job)`` for each job given to :meth:`put`, in order, on one thread.

    With ``flush``, the thread takes every job already waiting (up to ``depth + 1``), handles them
    one by one and then calls ``flush()`` once (also before an exception leaves the thread), so
    the handler can finish the group together, such as storing it in one transaction. Jobs of a
    group after one that raised are handled after the restart, in order.
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[T], object],
        depth: int = 2,
        *,
        restart: bool = True,
        flush: Callable[[], object] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.name = name
        self._handle = handle
        self._flush = flush
        self._carry: list[object] = []  # the rest of a group whose job raised
        self.groups = self.grouped = 0  # groups flushed, jobs in them
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

    def _take(self) -> list[object]:
        """The next job; with ``flush``, also every job already waiting behind it."""
        jobs, self._carry = self._carry or [self._queue.get()], []
        while self._flush is not None and jobs[-1] is not _STOP and len(jobs) <= self._queue.maxsize:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            self.busy_since = time.monotonic()
            try:
                for i, job in enumerate(jobs):
                    if job is _STOP:
                        self._carry = []
                        return
                    self._carry = jobs[i + 1 :]
                    self._handle(job)  # type: ignore[arg-type]
                self._carry = []
            except BaseException as exc:
                self.error = exc
                raise  # to the supervisor: logged, reported, and the thread restarted
            finally:
                try:
                    taken = len(jobs) - len(self._carry) - (jobs[-1] is _STOP)
                    if self._flush is not None and taken > 0:
                        self.groups += 1
                        self.grouped += taken
                        self._flush()
                except BaseException as exc:
                    self.error = exc
                    raise
                finally:
                    self.busy_since = None
