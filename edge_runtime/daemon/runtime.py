"""What a config runs: its sources and pipelines, built, started and stopped together.

The daemon builds a whole new runtime before it touches the running one (a reload that fails to
build leaves the old one running), then swaps it in with :func:`stop_runtime` and
:func:`start_runtime`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.config import Config, ModelConfig
from edge_runtime.daemon.preflight import resolve_source_paths
from edge_runtime.memory import set_arena_max
from edge_runtime.monitor.config import MonitorConfig
from edge_runtime.monitor.drift import checked, manifest_reference
from edge_runtime.monitor.service import Monitor, Reference
from edge_runtime.pipeline import Pipeline, load_model
from edge_runtime.pipeline.runner import ModelRunner
from edge_runtime.runtime.model import Model
from edge_runtime.sources import build_source
from edge_runtime.sources.base import Source
from edge_runtime.sources.camera import CameraSource
from edge_runtime.updates.protocol import reference_digest
from edge_runtime.updates.store import ModelStore
from edge_runtime.updates.updater import Updater

log = logging.getLogger(__name__)

Event = Callable[[str, str, dict[str, Any]], None]


class Sink(Protocol):
    """Where results go besides the outbox (stdout, tests)."""

    def publish(self, result: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class ResultBudget:
    """At most ``limit`` results in total (None: unlimited); thread-safe."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.used = max(0, self.used - 1)


def build_runtime(
    config: Config,
    *,
    emit: Callable[[list[dict[str, Any]]], None],
    event: Event,
    seq_start: Callable[[str], int],
    budget: ResultBudget,
    load: Callable[[ModelConfig, Config], Model] = load_model,
) -> tuple[dict[str, Source], list[Pipeline]]:
    """The sources and pipelines of ``config``, built (models loaded) but not started; source
    state changes and delegate fallbacks are reported through ``event``; ``emit`` gets the results
    of a pipeline in order, several at once under load."""
    set_arena_max(config.runtime.malloc_arenas)  # before the source threads allocate
    if any(p.startswith("demo:") for p in config.paths()):
        from edge_runtime.demo import ensure_assets

        ensure_assets(config.device.state_dir)
    sources = {
        name: build_source(name, resolve_source_paths(config, sc)) for name, sc in config.sources.items()
    }

    def source_event(name: str, state: str, detail: str) -> None:
        if state in ("up", "down", "finished"):
            message = f"source {name} is {state}" + (f": {detail}" if detail else "")
            event(f"source.{state}", message, {"source": name})

    for source in sources.values():
        source.add_listener(source_event)
    pipelines: list[Pipeline] = []
    for pc in config.pipelines:
        pipeline = Pipeline(
            pc,
            config,
            sources,
            lambda result: emit([result]),
            device=config.device.id,
            seq_start=seq_start(pc.name),
            event=event,
            budget=budget if budget.limit is not None else None,
            load=load,
            emit_many=emit,
        )
        pipelines.append(pipeline)
        for runner in pipeline.runners + ([pipeline.cascade] if pipeline.cascade else []):
            model = runner.model
            backend = f"{model.backend.name} {model.backend.version}"
            log.info(
                "pipeline %s: model %s (%s) %s, backend %s",
                pc.name, model.name, model.sha256[:12], model.placement, backend,
            )  # fmt: skip
            if model.failures:
                event(
                    "delegate.fallback",
                    f"pipeline {pc.name}: model {model.name}: {model.placement}",
                    {"pipeline": pc.name, "model": model.name, "delegate": model.delegate},
                )
    size_decoders(sources, pipelines)
    return sources, pipelines


def size_decoders(sources: Mapping[str, Source], pipelines: Iterable[Pipeline]) -> None:
    """Tell each camera the size every model input it feeds fits in (its reduced JPEG decode);
    a camera whose frames a cascade crops is decoded at full size."""
    largest: dict[str, tuple[int, int]] = {}
    full: set[str] = set()
    for pipeline in pipelines:
        fan_in = pipeline.fan_in.names if pipeline.fan_in is not None else []
        for runner in pipeline.runners:
            for _, builder, name in runner.images:
                for bound in fan_in if name in fan_in else [name]:
                    w, h = largest.get(bound, (0, 0))
                    largest[bound] = (max(w, builder.width), max(h, builder.height))
                    if pipeline.cascade is not None:
                        full.add(bound)
    for name, source in sources.items():
        if isinstance(source, CameraSource):
            source.largest_input = None if name in full else largest.get(name)


def start_runtime(
    sources: Iterable[Source],
    pipelines: Iterable[Pipeline],
    monitor: Monitor | None = None,
    config: Config | None = None,
    updater: Updater | None = None,
) -> None:
    """Sources, data capture (under the config's state directory), the monitor
    (``edge_runtime.monitor``; drift references are looked up in the ``updater``'s model store
    first), then the pipelines: the monitor sees their first result and first input."""
    sources, pipelines = list(sources), list(pipelines)
    for source in sources:
        source.start()
    mc = config.monitor if config is not None else MonitorConfig()
    if monitor is not None and config is not None:
        monitor.capture.start(mc.capture, pipelines, config.device.state_dir)
    if monitor is not None:
        store = updater.store if updater is not None else None
        models = {p.name: p.runners[0].model for p in pipelines}
        refs = {name: model_reference(m.path, m.sha256, store, name) for name, m in models.items()}
        monitor.start(mc, {s.name: s for s in sources}, refs)
        for pipeline in pipelines:
            _tap_inputs(monitor, pipeline.name, pipeline.runners[0])
            pipeline.on_swap = _follow_swaps(monitor, pipeline.name, store)
    for pipeline in pipelines:
        pipeline.start()


def _tap_inputs(monitor: Monitor, name: str, runner: ModelRunner) -> None:
    """Input drift: the serving model's inputs, sampled as they are built (when its reference
    has input histograms that fit the model)."""
    live = monitor.input_drift.get(name)
    problems = live.mismatches(runner.model.inputs) if live is not None else []
    if problems:
        log.warning("pipeline %s: no input drift: its reference does not fit: %s", name, "; ".join(problems))
        monitor.input_drift.pop(name, None)
        live = None
    runner.input_tap = live


def model_reference(
    path: Path, model_sha256: str, store: ModelStore | None = None, pipeline: str = ""
) -> Reference | None:
    """The drift reference of the model ``model_sha256`` (file ``path``) of ``pipeline``: the one
    an update stored with it in ``store``, else its entry's ``monitor_reference`` in a
    ``manifest*.json`` beside the file, else None. A reference that does not check out is logged
    and ignored (no drift, never a crash)."""
    try:
        doc, origin = (store.reference(pipeline, model_sha256) if store else None), "update"
        if doc is None:
            doc, origin = manifest_reference(path), "manifest"
        if doc is None:
            return None
        doc = checked(doc, str(path))
        return Reference(doc, reference_digest(doc), model_sha256, origin)
    except ValueError as exc:
        log.error("model %s: drift reference ignored: %s", path, exc)
        return None


def _follow_swaps(monitor: Monitor, name: str, store: ModelStore | None) -> Callable[[ModelRunner], None]:
    """A pipeline's ``on_swap``: its drift (outputs and inputs) follows the model that now serves."""

    def swapped(runner: ModelRunner) -> None:
        model = runner.model
        monitor.set_reference(name, model_reference(model.path, model.sha256, store, name))
        _tap_inputs(monitor, name, runner)

    return swapped


def stop_runtime(
    sources: Iterable[Source],
    pipelines: Iterable[Pipeline],
    timeout: float = 2.0,
    monitor: Monitor | None = None,
) -> None:
    """The monitor, pipelines (the inference in flight ends, the results handed over are emitted),
    then sources, all within ``timeout``."""
    if monitor is not None:
        monitor.stop()
    pipelines = list(pipelines)
    for pipeline in pipelines:
        pipeline.request_stop()
    deadline = time.monotonic() + timeout
    for pipeline in pipelines:
        pipeline.stop(max(0.05, deadline - time.monotonic()))
    if monitor is not None:
        monitor.capture.stop(max(0.05, deadline - time.monotonic()))
    for source in sources:
        source.stop(max(0.05, deadline - time.monotonic()))
