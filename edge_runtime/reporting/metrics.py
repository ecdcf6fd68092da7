"""Optional Prometheus endpoint: ``/metrics`` served from a snapshot of the health document.

A scrape never builds a health report: it is answered with the exposition text of the last
:meth:`MetricsServer.refresh`, which the daemon's health timer calls every ``metrics.refresh_s``
(and with each periodic health report). A scrape costs a dictionary lookup and a socket write, so
the endpoint's load does not reach the pipelines however often or however many clients scrape.
The server (:mod:`edge_runtime.reporting.metrics_http`) bounds its listen backlog, its open
connections and each connection's wall-clock time. ``prometheus_client`` is imported only when a
server starts or a snapshot is made, so the package imports (and ``edge-runtime validate-config``
works) without it. Snapshots use ``reporter.report(mark=False)``, which leaves the periodic
report's "since the last report" window alone.

Exposed families (all prefixed ``edge_runtime_``; times in seconds, as Prometheus wants):

- ``build_info{version,device}``, ``uptime_seconds``, ``health_ok`` (1 only when the derived state
  is ok: 0 while results are lost), ``health_state`` (0 ok, 1 degraded, 2 failing), ``problems``,
  ``component_ok{component}`` (one per component of the derived state), ``pipeline_ok``,
  ``source_ok``, ``outbox_ok``, ``health_truncations_total``
- per ``pipeline``: ``pipeline_results_total``, ``pipeline_triggers_total``,
  ``pipeline_dropped_frames_total``, ``pipeline_skipped_stale_total``, ``pipeline_errors_total``,
  ``pipeline_fps_in``, ``pipeline_fps_out``, ``pipeline_paused``,
  ``pipeline_latency_seconds{stage,quantile}`` (quantile 0.5, 0.95, 0.99)
- per ``source``: ``source_up{type}`` (1 up, 0 otherwise), ``source_reconnects_total``,
  ``source_samples_total``, ``source_parse_errors_total``, ``source_rate_hz`` (serial rate or
  camera fps), ``source_last_sample_age_seconds``
- ``outbox_depth``, ``outbox_bytes``, ``outbox_dropped_total``, ``outbox_oldest_age_seconds``,
  ``outbox_store_errors_total`` (results and events that could not be stored)
- ``mqtt_connected``, ``mqtt_reconnects_total`` (reconnections that succeeded, health's
  ``mqtt.reconnects``)
- ``metrics_snapshot_age_seconds`` (how old the served snapshot is)
- ``process_cpu_percent``, ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
  ``process_peak_resident_memory_bytes``, ``process_open_fds``, ``process_threads``, ``cpu_cores``,
  ``load1``, ``load5``, ``load15``, ``temperature_celsius{zone}``, ``disk_free_bytes{path}``
- the monitor's families (:mod:`.monitor_metrics`)

and, unprefixed, the standard process collector's ``process_*`` families (``prometheus_client``'s
``ProcessCollector``, read from ``/proc/self`` when the snapshot is made). docs/metrics.md lists
every family with its type and labels (a test holds it to what a running daemon exports).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.health import STAGES, HealthReporter
from edge_runtime.reporting.metrics_http import BoundedHttpServer, Limits, Response
from edge_runtime.reporting.monitor_metrics import monitor_families

if TYPE_CHECKING:
    from prometheus_client.metrics_core import HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

PREFIX = "edge_runtime_"
INSTALL_HINT = "pip install prometheus-client"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(EdgeRuntimeError, OSError):
    """The metrics endpoint could not listen on its address."""


class MetricsUnavailableError(EdgeRuntimeError, ImportError):
    """``prometheus_client`` is not installed."""


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise MetricsUnavailableError(
            f"metrics need the prometheus_client package: {INSTALL_HINT} ({exc})"
        ) from exc


def _number(value: Any) -> float | None:
    """A sample value, or None for what Prometheus cannot show (missing, text)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


class _Families:
    """Metric families keyed by name, made on first use with the label names of that use."""

    def __init__(self) -> None:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        self._gauge = GaugeMetricFamily
        self._counter = CounterMetricFamily
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        self.histograms: dict[str, HistogramMetricFamily] = {}

    def gauge(self, name: str, doc: str, value: Any, **labels: str) -> None:
        self._add(name, doc, value, labels, counter=False)

    def counter(self, name: str, doc: str, value: Any, **labels: str) -> None:
        self._add(name, doc, value, labels, counter=True)

    def histogram(
        self, name: str, doc: str, buckets: list[tuple[str, float]], total: float, **labels: str
    ) -> None:
        """A cumulative histogram: ``buckets`` as (upper bound, cumulative count), ending with +Inf."""
        from prometheus_client.metrics_core import HistogramMetricFamily

        full = PREFIX + name
        family = self.histograms.get(full)
        if family is None:
            family = self.histograms[full] = HistogramMetricFamily(full, doc, labels=list(labels))
        family.add_metric(list(labels.values()), buckets, total)

    def _add(self, name: str, doc: str, value: Any, labels: dict[str, str], counter: bool) -> None:
        number = _number(value)
        if number is None:
            return
        full = PREFIX + name
        family = self.families.get(full)
        if family is None:
            kind = self._counter if counter else self._gauge
            family = kind(full, doc, labels=list(labels))
            self.families[full] = family
        family.add_metric(list(labels.values()), number)


def _parse_errors(stats: Mapping[str, Any]) -> Any:
    total = stats.get("parse_errors_total")
    if total is not None:
        return total
    errors = stats.get("parse_errors")
    if isinstance(errors, Mapping):
        return sum(int(v) for v in errors.values())
    return errors


def families(doc: Mapping[str, Any], disk_path: str = "") -> list[Metric]:
    """The metric families of one health document (needs ``prometheus_client``).

    ``disk_path`` labels the free-space gauge (the state directory).
    """
    f = _Families()
    f.gauge(
        "build_info",
        "Build and device of this daemon (always 1).",
        1,
        version=doc["version"],
        device=doc["device"],
    )
    f.gauge("uptime_seconds", "Seconds since the daemon started.", doc.get("uptime_s"))
    f.gauge(
        "health_ok", "1 when the health state is ok, 0 when degraded or failing.", doc.get("state") == "ok"
    )
    f.gauge(
        "health_state",
        "Derived health state: 0 ok, 1 degraded, 2 failing.",
        {"ok": 0, "degraded": 1, "failing": 2}.get(str(doc.get("state")), 2),
    )
    f.gauge("problems", "Problems in the health document.", len(doc.get("problems") or []))
    f.counter("health_truncations", "Health documents cut to their size bound.", doc.get("truncations"))
    components: Mapping[str, Mapping[str, Any]] = doc.get("components") or {}
    for key, c in components.items():
        f.gauge(
            "component_ok",
            "1 when this component's derived state is ok.",
            c.get("state") == "ok",
            component=key,
        )
        kind, _, name = key.partition("/")
        if kind in ("pipeline", "source") and name:
            f.gauge(
                f"{kind}_ok",
                f"1 when the {kind}'s derived state is ok.",
                c.get("state") == "ok",
                **{kind: name},
            )
        elif kind == "outbox":
            f.gauge(
                "outbox_ok",
                "1 when every result is stored (no store errors, disk above the reserve).",
                c.get("state") == "ok",
            )

    for name, p in (doc.get("pipelines") or {}).items():
        for key, help_ in (
            ("results", "Results emitted."),
            ("triggers", "Triggers received."),
            ("dropped_frames", "Frames dropped because the pipeline was busy."),
            ("skipped_stale", "Triggers skipped because their inputs were too old."),
            ("errors", "Inference or post-processing errors."),
        ):
            f.counter(f"pipeline_{key}", help_, p.get(key), pipeline=name)
        f.gauge("pipeline_fps_in", "Triggers per second.", p.get("fps_in"), pipeline=name)
        f.gauge("pipeline_fps_out", "Results per second.", p.get("fps_out"), pipeline=name)
        f.gauge("pipeline_paused", "1 while the pipeline is paused.", p.get("paused"), pipeline=name)
        latency = p.get("latency_ms") or {}
        for stage in STAGES:
            for q, ms in (latency.get(stage) or {}).items():
                value = _number(ms)
                f.gauge(
                    "pipeline_latency_seconds",
                    "Latency quantiles over the recent window.",
                    None if value is None else value / 1000.0,
                    pipeline=name,
                    stage=stage,
                    quantile=str(float(q.removeprefix("p")) / 100),
                )

    for name, s in (doc.get("sources") or {}).items():
        f.gauge(
            "source_up",
            "1 while the source delivers data, else 0.",
            s.get("state") == "up",
            source=name,
            type=str(s.get("type", "")),
        )
        f.counter("source_reconnects", "Reconnections of the source.", s.get("reconnects"), source=name)
        f.counter("source_samples", "Samples read (frames or lines).", s.get("samples"), source=name)
        f.counter("source_parse_errors", "Lines that could not be parsed.", _parse_errors(s), source=name)
        rate = s.get("rate_hz", s.get("fps"))
        f.gauge("source_rate_hz", "Samples per second (serial rate or camera fps).", rate, source=name)
        f.gauge(
            "source_last_sample_age_seconds",
            "Age of the newest sample.",
            s.get("last_sample_age_s"),
            source=name,
        )

    monitor_families(f, doc.get("monitor") or {})

    outbox = doc.get("outbox")
    if outbox is not None:
        f.gauge("outbox_depth", "Messages waiting in the outbox.", outbox.get("depth"))
        f.gauge("outbox_bytes", "Bytes waiting in the outbox.", outbox.get("bytes"))
        f.counter("outbox_dropped", "Messages dropped by the outbox bounds.", outbox.get("dropped"))
        f.counter(
            "outbox_store_errors", "Results and events that could not be stored.", outbox.get("store_errors")
        )
        f.gauge("outbox_oldest_age_seconds", "Age of the oldest waiting message.", outbox.get("oldest_age_s"))
    mqtt = doc.get("mqtt")
    if mqtt is not None:
        f.gauge("mqtt_connected", "1 while connected to the broker.", bool(mqtt.get("connected")))
        f.counter("mqtt_reconnects", "Reconnections to the broker.", mqtt.get("reconnects"))

    system = doc.get("system") or {}
    f.gauge(
        "process_cpu_percent",
        "CPU use since the last health report (100 = one core).",
        system.get("cpu_percent"),
    )
    f.counter("process_cpu_seconds", "User and system CPU time.", system.get("cpu_seconds"))
    f.gauge("process_resident_memory_bytes", "Resident set size.", system.get("rss_bytes"))
    f.gauge("process_peak_resident_memory_bytes", "Peak resident set size.", system.get("peak_rss_bytes"))
    f.gauge("process_open_fds", "Open file descriptors.", system.get("open_fds"))
    f.gauge("process_threads", "Threads of the process.", system.get("threads"))
    f.gauge("cpu_cores", "Cores the process may run on.", system.get("cores"))
    for minutes, value in zip((1, 5, 15), system.get("load_avg") or (), strict=False):
        f.gauge(f"load{minutes}", f"{minutes} minute load average.", value)
    for zone, celsius in (system.get("temperature_c") or {}).items():
        f.gauge("temperature_celsius", "Thermal zone temperature.", celsius, zone=zone)
    f.gauge(
        "disk_free_bytes",
        "Free bytes on the state directory's file system.",
        system.get("disk_free_bytes"),
        path=disk_path,
    )
    return [*f.families.values(), *f.histograms.values()]


class MetricsServer:
    """Serves ``/metrics`` on ``host:port`` (port 0: any free port, see :attr:`port`) from the
    snapshot made by :meth:`refresh`."""

    def __init__(
        self,
        reporter: HealthReporter,
        host: str = "127.0.0.1",
        port: int = 9108,
        *,
        limits: Limits | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        self.reporter = reporter
        self.host = host
        self.requested_port = port
        self.limits = limits or Limits()
        self.refresh_s = refresh_s
        self.refreshes = 0
        self._text = b""
        self._made = 0.0  # time.monotonic() of the snapshot
        self._lock = threading.Lock()
        self._http: BoundedHttpServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (the requested one until started)."""
        return self.requested_port if self._http is None else self._http.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def http(self) -> BoundedHttpServer | None:
        """The HTTP server while started (its counters: accepted, evicted, timed_out, answered)."""
        return self._http

    def due_in(self) -> float:
        """Seconds until the snapshot should be refreshed (0 when it is due)."""
        return max(0.0, self._made + self.refresh_s - time.monotonic())

    def refresh(self, doc: Mapping[str, Any] | None = None) -> None:
        """Make a new snapshot from ``doc`` (a health report already made) or a fresh non-marking
        report. Called by the health timer; never by a scrape."""
        from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

        if doc is None:
            doc = self.reporter.report(mark=False)
        made = time.monotonic()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(families(doc, str(self.reporter.state_dir))))
        ProcessCollector(registry=registry)  # the standard process_* families (Linux /proc)
        text = generate_latest(registry)
        with self._lock:
            self._text, self._made = text, made
            self.refreshes += 1

    def _respond(self, path: str) -> Response:
        if path != "/metrics":
            return 404, b"not found: the metrics are at /metrics\n", "text/plain; charset=utf-8"
        with self._lock:
            text, made = self._text, self._made
        age = f"# HELP {PREFIX}metrics_snapshot_age_seconds Age of this snapshot.\n"
        age += f"# TYPE {PREFIX}metrics_snapshot_age_seconds gauge\n"
        age += f"{PREFIX}metrics_snapshot_age_seconds {time.monotonic() - made:.3f}\n"
        return 200, text + age.encode(), CONTENT_TYPE

    def start(self) -> None:
        if self._http is not None:
            return
        _require_prometheus()
        if self._made == 0.0:
            self.refresh()
        http = BoundedHttpServer(self.host, self.requested_port, self._respond, self.limits)
        try:
            http.start()
        except OSError as exc:
            raise MetricsError(
                exc.errno, f"metrics endpoint {self.host}:{self.requested_port}: {exc.strerror or exc}"
            ) from exc
        self._http = http
        log.info(
            "serving Prometheus metrics on %s (backlog %d, at most %d connections, %.1f s each)",
            self.url, self.limits.backlog, self.limits.max_connections, self.limits.timeout_s,
        )  # fmt: skip

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the listening socket (the port is free afterwards)."""
        http, self._http = self._http, None
        if http is not None:
            http.stop(timeout)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Fixed:
    """A collector that yields metric families made beforehand."""

    def __init__(self, made: list[Metric]) -> None:
        self.made = made

    def collect(self) -> Iterator[Metric]:
        yield from self.made
