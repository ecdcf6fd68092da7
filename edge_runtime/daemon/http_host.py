"""The daemon as the HTTP API's host (:class:`edge_runtime.http.host.Host`): what the server may
read (status, health, pipelines, sources, model store versions) and the results and events it
subscribes to. Service keeps only the two hooks this needs: its result listeners and the reporter's
event listeners."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime import __version__

if TYPE_CHECKING:
    from edge_runtime.config import Config
    from edge_runtime.health import HealthReporter
    from edge_runtime.healthwatch import DaemonHealth
    from edge_runtime.pipeline import Pipeline
    from edge_runtime.reporting.reporter import Reporter
    from edge_runtime.sources.base import Source

Listener = Callable[[str, dict[str, Any]], None]


class Daemon(Protocol):
    """What of :class:`~edge_runtime.daemon.service.Service` the host reads (no import of it: the
    service imports this module)."""

    config: Config
    stop_event: threading.Event
    started_mono: float
    pipelines: list[Pipeline]
    sources: dict[str, Source]
    health: HealthReporter | None
    reloads: int
    updater: Any
    reporter: Reporter | None
    result_listeners: list[Listener]
    watch: DaemonHealth | None


class ServiceHost:
    """A running :class:`~edge_runtime.daemon.service.Service`, as the HTTP server sees it."""

    def __init__(self, service: Daemon) -> None:
        self.service = service

    def http_status(self) -> dict[str, Any]:
        s = self.service
        return {
            "device": s.config.device.id,
            "state": "stopping" if s.stop_event.is_set() else "online",
            "version": __version__,
            "uptime_s": round(time.monotonic() - s.started_mono, 3),
            "pipelines": [p.name for p in s.pipelines],
            "health": None
            if s.watch is None
            else {"state": s.watch.changes.device, "problems": s.watch.changes.problems},
        }

    def http_health(self) -> dict[str, Any]:
        assert self.service.health is not None
        return {**self.service.health.report(mark=False), "reloads": self.service.reloads}

    def http_pipelines(self) -> list[Pipeline]:
        return list(self.service.pipelines)

    def http_sources(self) -> dict[str, Source]:
        return dict(self.service.sources)

    def http_model_versions(self, pipeline: str) -> list[dict[str, Any]]:
        store = getattr(self.service.updater, "store", None)
        return list(store.versions(pipeline)) if store is not None else []

    def http_subscribe(self, listener: Listener) -> Callable[[], None]:
        reporter = self.service.reporter
        assert reporter is not None
        lists = (self.service.result_listeners, reporter.listeners)
        for found in lists:
            found.append(listener)

        def unsubscribe() -> None:
            for found in lists:
                if listener in found:
                    found.remove(listener)

        return unsubscribe
