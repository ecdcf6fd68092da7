"""The daemon's local listeners: the HTTP API and the Prometheus endpoint.

The HTTP server is built with the daemon (its token and TLS files are read then: without them the
daemon does not start) and started after the pipelines; a port another process holds is an error
and an ``http.unavailable`` event, and the daemon's work goes on without its local HTTP face. The
metrics endpoint serves a snapshot the health timer refreshes (:meth:`LocalServers.refresh`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge_runtime.config import Config
from edge_runtime.health import HealthReporter

log = logging.getLogger(__name__)


class LocalServers:
    """The HTTP API (when ``[http]`` is enabled) and the metrics endpoint (``[metrics]``)."""

    def __init__(self, config: Config, http_host: Callable[[], Any]) -> None:
        self.config = config
        self.http: Any = None
        self.metrics: Any = None
        if config.http.enabled:  # reads the token and TLS files now: without them, no start
            from edge_runtime.http.server import HttpServer

            self.http = HttpServer(config.http, http_host(), config.resolve)

    def start(self, health: HealthReporter, event: Callable[[str, str, dict[str, Any]], None]) -> None:
        """The HTTP API first, then the metrics endpoint (a daemon whose metrics answer has all its
        threads)."""
        if self.http is not None:
            from edge_runtime.http.server import HttpError

            try:
                self.http.start()
            except HttpError as exc:
                log.error("%s; running without the HTTP API", exc)
                event("http.unavailable", str(exc), {})
        if self.config.metrics.enabled:
            from edge_runtime.reporting.metrics import MetricsServer
            from edge_runtime.reporting.metrics_http import Limits

            m = self.config.metrics
            limits = Limits(backlog=m.backlog, max_connections=m.max_connections, timeout_s=m.timeout_s)
            self.metrics = MetricsServer(health, m.host, m.port, limits=limits, refresh_s=m.refresh_s)
            self.metrics.start()

    def refresh(self, report: dict[str, Any] | None = None) -> None:
        """A new metrics snapshot (from ``report`` when the health timer just made one)."""
        if self.metrics is not None:
            self.metrics.refresh(report)

    def metrics_due_in(self) -> float | None:
        """Seconds until the metrics snapshot is due (None: no metrics endpoint)."""
        return None if self.metrics is None else float(self.metrics.due_in())

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.http is not None:
            self.http.stop()
