"""What the update feature needs from the daemon, as small Protocols.

The updater never sees the daemon or the pipeline class: it is handed an :class:`UpdateHost`
(the daemon implements it) and talks to each pipeline through :class:`UpdatablePipeline` (the
pipeline's public hooks for updates). Tests build an updater against a fake host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from edge_runtime.config import Config
from edge_runtime.reporting.commands import Command
from edge_runtime.runtime.model import Model

Observer = Callable[[list[npt.NDArray[Any]], float], None]
"""Called with the outputs and invoke time (ms) of each inference of the serving model."""


class Runner(Protocol):
    """A model bound to a pipeline's inputs and post-processing."""

    @property
    def model(self) -> Model: ...

    @property
    def info(self) -> dict[str, Any]:
        """``{"name", "sha256", "version"}`` of the model, as results report it."""
        ...

    def capture_inputs(self, timeout: float) -> list[npt.NDArray[Any]] | None: ...


class Watcher(Protocol):
    """A probation, as a pipeline sees it."""

    def observe(self, outputs: list[npt.NDArray[Any]], invoke_ms: float) -> None: ...

    def end(self, reason: str) -> None: ...


class UpdatablePipeline(Protocol):
    """The hooks a pipeline offers to the updater."""

    @property
    def name(self) -> str: ...

    @property
    def errors(self) -> int: ...

    @property
    def last_error(self) -> str: ...

    def serving(self) -> Runner:
        """The runner of the first model (the one updates replace)."""
        ...

    def load_candidate(self, path: Path, version: str) -> Model:
        """Load ``path`` like the first model (same delegates, threads, backend)."""
        ...

    def runner_for(self, path: Path, version: str, model: Model | None = None) -> Runner:
        """The first model's bindings and post-processing on another file."""
        ...

    def swap_model(self, runner: Any) -> Any:
        """Serve ``runner`` from the next inference on; returns the runner it replaced."""
        ...

    def invoke_p95(self) -> float | None:
        """The serving model's invoke p95 in ms, None before enough results."""
        ...

    def begin_watch(self, runner: Any, watcher: Watcher) -> Any:
        """Serve ``runner`` from the next inference on, under watch: ``watcher.observe`` after
        each real result it produces, ``watcher.end(reason)`` when the pipeline stops serving it
        first (paused, stopped, replaced by a reload). Returns the runner it replaced; raises an
        :class:`~edge_runtime.errors.EdgeRuntimeError` on a paused or stopping pipeline."""
        ...

    def end_watch(self, reason: str, watcher: Watcher | None = None) -> None:
        """End the watch; with ``watcher``: only that one, without calling its ``end``."""
        ...


class UpdateHost(Protocol):
    """The daemon, as the updater sees it."""

    @property
    def config(self) -> Config: ...

    @property
    def stopping(self) -> bool: ...

    def pipeline(self, name: str) -> UpdatablePipeline:
        """The running pipeline ``name``; raises :class:`~edge_runtime.reporting.commands.CommandError`."""
        ...

    def event(self, kind: str, message: str, fields: dict[str, Any]) -> None: ...

    def reply(self, command: Command, body: dict[str, Any]) -> None:
        """A further reply to ``command`` (each step of a long-running command)."""
        ...
