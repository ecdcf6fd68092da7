"""The daemon: builds sources, pipelines and sinks from a Config and runs them until told to stop.

The main thread owns signals (SIGTERM and SIGINT stop it cleanly), the stop conditions
(``--max-results``, ``--duration``, every pipeline finished) and shutdown: pipelines finish
the inference in flight, sources close, sinks flush.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Protocol

from edge_runtime import __version__
from edge_runtime.config import Config
from edge_runtime.pipeline import Pipeline
from edge_runtime.sources import SourceConfig, build_source
from edge_runtime.sources.base import Source
from edge_runtime.sources.camera import CameraConfig, uri_kind
from edge_runtime.sources.replay import ReplayConfig

log = logging.getLogger(__name__)


class Sink(Protocol):
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

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.limit is not None and self.used >= self.limit


class Service:
    """One running daemon."""

    def __init__(
        self,
        config: Config,
        sinks: Sequence[Sink],
        *,
        max_results: int | None = None,
        duration_s: float | None = None,
    ) -> None:
        self.config = config
        self.sinks = list(sinks)
        self.duration_s = duration_s
        self.budget = ResultBudget(max_results)
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.sources: dict[str, Source] = {}
        self.pipelines: list[Pipeline] = []
        self.started_mono = time.monotonic()
        self._emit_lock = threading.Lock()

    # -- building ----------------------------------------------------------------------------------

    def _uses_demo(self) -> bool:
        return any(p.startswith("demo:") for p in self.config.paths())

    def build(self) -> None:
        """Create sources and load every model; raises on the first pipeline that cannot be built."""
        if self._uses_demo():
            from edge_runtime.demo import ensure_assets

            ensure_assets(self.config.device.state_dir)
        for name, sc in self.config.sources.items():
            self.sources[name] = build_source(name, resolve_source_paths(self.config, sc))
        for pc in self.config.pipelines:
            self.pipelines.append(Pipeline(pc, self.config, self.sources, self._emit, self.config.device.id))
            for runner in self.pipelines[-1].runners:
                log.info(
                    "pipeline %s: model %s (%s) %s, backend %s %s",
                    pc.name,
                    runner.model.name,
                    runner.model.sha256[:12],
                    runner.model.placement,
                    runner.model.backend.name,
                    runner.model.backend.version,
                )

    def _emit(self, result: dict[str, Any]) -> None:
        with self._emit_lock:
            if not self.budget.take():
                self.stop("max results reached")
                return
            for sink in self.sinks:
                sink.publish(result)
            if self.budget.exhausted:
                self.stop("max results reached")

    # -- running -----------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signal.Signals(signum).name)

    def start(self) -> None:
        for source in self.sources.values():
            source.start()
        for pipeline in self.pipelines:
            pipeline.start()
        log.info(
            "edge-runtime %s running: device %s, %d pipelines, %d sources",
            __version__,
            self.config.device.id,
            len(self.pipelines),
            len(self.sources),
        )

    def run(self, install_signals: bool = True) -> int:
        """Build, start, wait for a stop condition, shut down; returns the exit code."""
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.build()
        self.start()
        try:
            while not self.stop_event.wait(0.1):
                if self.duration_s is not None and time.monotonic() - self.started_mono >= self.duration_s:
                    self.stop("duration reached")
                elif self.pipelines and all(p.finished for p in self.pipelines):
                    self.stop("every pipeline finished")
        finally:
            self.shutdown()
        return 0

    def shutdown(self, timeout: float = 2.0) -> None:
        log.info("stopping: %s", self.stop_reason or "shutdown")
        for pipeline in self.pipelines:
            pipeline.request_stop()
        deadline = time.monotonic() + timeout
        for pipeline in self.pipelines:
            pipeline.stop(max(0.05, deadline - time.monotonic()))
        for source in self.sources.values():
            source.stop(max(0.05, deadline - time.monotonic()))
        for sink in self.sinks:
            sink.close()
        for pipeline in self.pipelines:
            log.info("pipeline %s stats: %s", pipeline.name, json.dumps(pipeline.stats()))
        for name, source in self.sources.items():
            log.info("source %s stats: %s", name, json.dumps(source.stats()))


def resolve_source_paths(config: Config, sc: SourceConfig) -> SourceConfig:
    """A camera file or replay file path resolved against the config's folder (and demo:)."""
    if isinstance(sc, CameraConfig) and isinstance(sc.uri, str) and uri_kind(sc.uri) == "file":
        return sc.model_copy(update={"uri": str(config.resolve(sc.uri))})
    if isinstance(sc, ReplayConfig):
        return sc.model_copy(update={"path": str(config.resolve(sc.path))})
    return sc
