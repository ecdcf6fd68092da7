"""The thread engine of a pipeline: a worker, an invoke stage and a result stage, with no model logic.

The worker runs the pipeline's loop; each inference's inputs are built into one of ``slots``
staging slots (:meth:`StageEngine.take_slot`), handed to the invoke stage (:meth:`submit`), whose
output goes to the result stage (:meth:`to_results`). Hand-offs are short blocking queues
(:class:`~edge_runtime.handoff.Stage`): in order, nothing dropped, a stage that falls behind slows
the one before it instead of growing memory. When the loop returns, every job handed over is run
and finished before the stages end. :meth:`stuck` tells the watchdog about a dead thread, a job in
hand for too long, or a loop that makes no progress.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from edge_runtime.errors import PipelineError
from edge_runtime.handoff import Stage
from edge_runtime.supervision import Supervised, spawn

log = logging.getLogger(__name__)

J = TypeVar("J")  # a job for the invoke stage
R = TypeVar("R")  # an invoke stage's output, for the result stage


class StageEngine(Generic[J, R]):
    """Three threads for one pipeline ``name``.

    ``invoke(job)`` runs on the invoke stage and returns what the result stage gets (None: nothing,
    the job failed and was accounted for); ``finish(result)`` runs on the result stage. With
    ``flush``, the result stage takes every result waiting (up to ``result_depth + 1``), calls
    ``finish`` on each and then ``flush()`` once: a group stored in one transaction under load.
    """

    def __init__(
        self,
        name: str,
        invoke: Callable[[J], R | None],
        finish: Callable[[R], None],
        slots: int = 2,
        *,
        flush: Callable[[], object] | None = None,
        result_depth: int = 2,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.name = name
        self._invoke = invoke
        self._finish = finish
        self._flush = flush
        self._result_depth = result_depth
        self._slot_count = slots
        self.stopping = threading.Event()
        self.finished = False
        self.last_progress = time.monotonic()
        self._slots: queue.Queue[int] = queue.Queue()
        self._thread: Supervised | None = None
        self._invoker: Stage[J] | None = None
        self._results: Stage[R] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, loop: Callable[[], bool]) -> None:
        """Run ``loop`` on the worker thread; it returns True when the pipeline has finished (its
        source ended, its budget is spent) and False when it was asked to stop."""
        self.stopping.clear()
        self.finished = False
        self._slots = queue.Queue()
        for slot in range(self._slot_count):
            self._slots.put(slot)
        self._results = Stage(f"results-{self.name}", self._finish, self._result_depth, flush=self._flush)
        self._invoker = Stage(f"invoke-{self.name}", self._invoke_then_hand_over, depth=1)
        self._thread = spawn(
            f"pipeline-{self.name}",
            lambda: self._run(loop),
            should_restart=lambda: not self.stopping.is_set(),
            on_exit=self._close_stages,
        )

    def _run(self, loop: Callable[[], bool]) -> None:
        """The worker's body: a crash is restarted by the supervisor (the loop runs again on the
        same stages); the stages are closed once the worker ends for good (:meth:`_close_stages`)."""
        self.finished = loop()

    def _close_stages(self) -> None:
        for stage in (self._invoker, self._results):
            if stage is not None:
                stage.close()  # every inference handed over is run and emitted first

    def request_stop(self) -> None:
        self.stopping.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the inference in flight (and the results handed over are finished)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def result_groups(self) -> tuple[int, int]:
        """(groups the result stage flushed, results in them): their ratio is the mean group size."""
        stage = self._results
        return (0, 0) if stage is None else (stage.groups, stage.grouped)

    # -- hand-offs (worker side) ---------------------------------------------------------------------

    def take_slot(self) -> int:
        """A free staging slot; blocks while the invoke stage holds them all."""
        while True:
            try:
                return self._slots.get(timeout=0.5)
            except queue.Empty:
                assert self._invoker is not None
                if not self._invoker.alive:  # nobody will give a slot back
                    raise PipelineError(f"pipeline {self.name}: the invoke stage died") from None

    def release_slot(self, slot: int) -> None:
        self._slots.put(slot)

    def submit(self, job: J) -> None:
        """Hand ``job`` to the invoke stage (blocks while it is busy with the previous one)."""
        assert self._invoker is not None
        self._invoker.put(job)

    def _invoke_then_hand_over(self, job: J) -> None:
        result = self._invoke(job)
        if result is not None:
            assert self._results is not None
            self._results.put(result)

    # -- the watchdog's view --------------------------------------------------------------------------

    def stuck(self, limit_s: float) -> str:
        """Why this pipeline makes no progress (a dead thread, an invoke, a post-processing or a
        wait over ``limit_s``), or ""."""
        if self._thread is None or self.finished:
            return ""
        now = time.monotonic()
        problems = [(not self._thread.is_alive(), "worker thread died")]
        for stage, doing in ((self._invoker, "an inference"), (self._results, "a post-processing")):
            if stage is not None:
                busy = stage.busy_since
                problems.append((not stage.alive, f"{stage.name} thread died"))
                problems.append(
                    (
                        busy is not None and now - busy > limit_s,
                        f"{doing} has run for {now - (busy or now):.1f} s",
                    )
                )
        problems.append(
            (now - self.last_progress > limit_s, f"no progress for {now - self.last_progress:.1f} s")
        )
        return next((f"pipeline {self.name}: {why}" for bad, why in problems if bad), "")
