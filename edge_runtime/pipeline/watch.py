"""The watch a pipeline keeps over a model on probation (the hook of
:meth:`edge_runtime.updates.host.UpdatablePipeline.begin_watch`).

A :class:`WatchSlot` holds at most one watcher and the runner it watches. The pipeline reports each
result of that runner to it, and ends the watch (the watcher's ``end(reason)``) when it stops
serving the runner: paused, stopped, or being replaced by a reload (:meth:`WatchSlot.block`, which
also refuses new watches until :meth:`WatchSlot.allow`).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy.typing as npt

from edge_runtime.errors import PipelineError


class Watcher(Protocol):
    """Watches the results of one runner (a model on probation)."""

    def observe(self, outputs: list[npt.NDArray[Any]], invoke_ms: float) -> None: ...

    def end(self, reason: str) -> None: ...


class WatchSlot:
    """One pipeline's watch: who watches which runner, and whether a new watch may start."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self._lock = threading.Lock()
        self.watcher: Watcher | None = None
        self.runner: object | None = None
        self._blocked = ""

    def begin(self, runner: object, watcher: Watcher, refusal: str) -> None:
        """Watch ``runner``; :class:`PipelineError` with ``refusal`` (or the block reason, or
        "already watched") when a watch may not start now."""
        with self._lock:
            why = self._blocked or refusal or ("has a model on probation already" if self.watcher else "")
            if why:
                raise PipelineError(f"pipeline {self.pipeline} {why}")
            self.watcher, self.runner = watcher, runner

    def end(self, reason: str, watcher: Watcher | None = None) -> None:
        """End the watch (only ``watcher``'s, when given: then without calling its ``end``)."""
        with self._lock:
            current = self.watcher
            if current is None or (watcher is not None and current is not watcher):
                return
            self.watcher, self.runner = None, None
        if watcher is None:
            current.end(reason)

    def block(self, reason: str) -> None:
        with self._lock:
            self._blocked = reason
        self.end(reason)

    def allow(self) -> None:
        with self._lock:
            self._blocked = ""

    def observe(self, runner: object, outputs: list[npt.NDArray[Any]], invoke_ms: float) -> None:
        """A result of ``runner``: reported when it is the watched one."""
        watcher = self.watcher
        if watcher is not None and runner is self.runner:
            watcher.observe(outputs, invoke_ms)
