"""Health: system probes and the periodic health document published on ``{prefix}/{device}/health``.

The probes read Linux interfaces directly (``/proc``, ``/sys``, ``os``, ``resource``); each never
raises and returns ``None`` (or an empty dict) when its interface is unavailable. The roots are
parameters so tests can point them at a tree of real files.

:class:`HealthReporter` pulls live statistics from callables (pipelines, sources, outbox, MQTT)
and builds the JSON-ready document::

    {"v": 1, "device": str, "ts": float (epoch s, 3 decimals), "version": str, "uptime_s": float,
     "state": "ok" | "degraded" | "failing",  # derived by edge_runtime.healthstate
     "problems": [str, ...],                  # every reason, failing ones first; empty when "ok"
     "components": {"pipeline/NAME" | "source/NAME" | "outbox" | "mqtt" | "system" | ...:
                    {"state", "reasons": [str, ...]}},
     "pipelines": {name: {"fps_in", "fps_out", "results", "triggers", "dropped_frames",
                          "skipped_stale", "rate_limited", "paused_skips", "errors", "last_error",
                          "paused", "batch", "results_per_write" (mean results per outbox transaction),
                          "sources": {camera: {"frames", "results", "dropped", "skipped"}},  # fan-in
                          "latency_ms": {"pre" | "invoke" | "post" | "total":
                                         {"p50", "p95", "p99"}},   # ms, null before any sample
                          "models": [{"name", "sha256", "version", "delegate", "placement"}]}},
     "sources": {name: {"type", "state", "reconnects", "last_sample_age_s", "samples",
                        "last_error", ... "rate_hz" (serial) | "fps" (camera), "parse_errors",
                        "parse_errors_total" (serial, replay)}},
     "outbox": {"depth", "bytes", "oldest_age_s", "dropped", ...} | null,   # null: no outbox
     "mqtt": {"connected", "reconnects", "last_error", ...} | null,         # null: MQTT disabled
     "system": {"cpu_percent", "cpu_seconds", "cores", "rss_bytes", "peak_rss_bytes",
                "load_avg": [1m, 5m, 15m] | null, "temperature_c": {zone type: °C},
                "disk_free_bytes", "open_fds", "threads"},
     ...}                                                                   # keys from ``extra``

The state and its reasons are derived by :func:`edge_runtime.healthstate.assess` (see
``docs/health.md``); each cause is one line of ``problems``. The document is bounded: past
``max_bytes`` its longest per-source lists are cut and ``truncated`` is set (counted in
:attr:`HealthReporter.truncations`). Counters are totals since start; "since the previous report" is
measured against the last :meth:`HealthReporter.report` call with ``mark=True`` (the periodic
report), so Prometheus scrapes (``mark=False``) do not move that window.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_runtime import healthstate
from edge_runtime.healthstate import MAX_HEALTH_BYTES, HealthLimits

__all__ = [
    "CpuMeter",
    "HealthReporter",
    "cpu_cores",
    "cpu_seconds",
    "disk_free_bytes",
    "load_average",
    "memory_bytes",
    "open_fds",
    "peak_rss_bytes",
    "process_rss_bytes",
    "temperatures_c",
    "thread_count",
]

STAGES = ("pre", "invoke", "post", "total")
QUANTILES = ("p50", "p95", "p99")
MODEL_KEYS = ("name", "sha256", "version", "delegate", "placement")

# -- system probes ---------------------------------------------------------------------------------


def _status_field(field: str, proc: str) -> int | None:
    """An integer field of ``{proc}/self/status`` (``kB`` values converted to bytes)."""
    try:
        with open(Path(proc) / "self" / "status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == field:
                    parts = rest.split()
                    value = int(parts[0])
                    return value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux
    except (ImportError, OSError, ValueError):
        return None


def process_rss_bytes(proc: str = "/proc") -> int | None:
    """Resident set size of this process (VmRSS; peak RSS from getrusage when /proc is missing)."""
    value = _status_field("VmRSS", proc)
    return value if value is not None else _ru_maxrss_bytes()


def peak_rss_bytes(proc: str = "/proc") -> int | None:
    """Peak resident set size of this process (VmHWM, else getrusage's ru_maxrss)."""
    value = _status_field("VmHWM", proc)
    return value if value is not None else _ru_maxrss_bytes()


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def temperatures_c(sys_root: str = "/sys") -> dict[str, float]:
    """Thermal zone type -> °C from ``{sys_root}/class/thermal/thermal_zone*/{type,temp}``.

    A zone whose temperature cannot be read is left out; a type seen twice gets the zone's
    number appended (``cpu-thermal``, ``cpu-thermal_1``).
    """
    base = Path(sys_root) / "class" / "thermal"
    try:
        zones = [p for p in base.iterdir() if p.name.startswith("thermal_zone")]
    except OSError:
        return {}

    def number(p: Path) -> int:
        suffix = p.name.removeprefix("thermal_zone")
        return int(suffix) if suffix.isdigit() else 1 << 30

    out: dict[str, float] = {}
    for zone in sorted(zones, key=lambda p: (number(p), p.name)):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            millidegrees = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        key = kind if kind not in out else f"{kind}_{zone.name.removeprefix('thermal_zone')}"
        out[key] = round(millidegrees / 1000.0, 1)
    return out


def disk_free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user on the file system holding ``path`` or its nearest parent."""
    current = Path(path).absolute()
    while True:
        try:
            if current.exists():
                return int(shutil.disk_usage(current).free)
        except OSError:
            return None
        if current.parent == current:
            return None
        current = current.parent


def memory_bytes(proc: str = "/proc") -> tuple[int | None, int | None]:
    """(MemAvailable, MemTotal) of the machine in bytes from ``{proc}/meminfo``."""
    try:
        text = (Path(proc) / "meminfo").read_text(encoding="ascii", errors="replace")
        fields = {k: v.split()[0] for k, _, v in (line.partition(":") for line in text.splitlines()) if v}
        return int(fields["MemAvailable"]) * 1024, int(fields["MemTotal"]) * 1024
    except (OSError, ValueError, KeyError, IndexError):
        return None, None


def open_fds(proc: str = "/proc") -> int | None:
    """Open file descriptors of this process."""
    try:
        return len(os.listdir(Path(proc) / "self" / "fd"))
    except OSError:
        return None


def thread_count(proc: str = "/proc") -> int | None:
    """Threads of this process (all of them, from /proc; Python's threads when it is missing)."""
    value = _status_field("Threads", proc)
    return value if value is not None else threading.active_count()


def cpu_cores() -> int | None:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def cpu_seconds() -> float:
    """User plus system CPU time of this process, in seconds."""
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """Process CPU use in percent since the previous call (100 = one core busy)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = cpu_seconds,
    ) -> None:
        self.clock = clock
        self.cpu = cpu
        self.cores = cpu_cores()
        self._lock = threading.Lock()
        self._last = (clock(), cpu())

    def percent(self, advance: bool = True) -> float | None:
        """CPU % since the previous advancing call (or construction); ``None`` if no time passed.

        ``advance=False`` reads without starting a new interval.
        """
        now, used = self.clock(), self.cpu()
        with self._lock:
            last_wall, last_cpu = self._last
            if advance:
                self._last = (now, used)
        wall = now - last_wall
        if wall <= 0:
            return None
        return round(max(used - last_cpu, 0.0) / wall * 100.0, 1)


# -- the health document ---------------------------------------------------------------------------

Stats = dict[str, Any]


def _none_stats() -> Stats | None:
    return None


def _normalise_pipeline(stats: Mapping[str, Any]) -> Stats:
    out: Stats = dict(stats)
    for alias, key in (("skipped", "skipped_stale"), ("dropped", "dropped_frames")):
        if key not in out and alias in out:
            out[key] = out.pop(alias)
    for key in ("results", "dropped_frames", "skipped_stale", "errors"):
        out.setdefault(key, 0)
    for key in ("fps_in", "fps_out"):
        out.setdefault(key, 0.0)
    latency = stats.get("latency_ms") or {}
    out["latency_ms"] = {stage: {q: (latency.get(stage) or {}).get(q) for q in QUANTILES} for stage in STAGES}
    out["models"] = [{**dict.fromkeys(MODEL_KEYS), **m} for m in stats.get("models") or []]
    return out


def _normalise_source(stats: Mapping[str, Any]) -> Stats:
    out: Stats = dict(stats)
    out.setdefault("type", "source")
    out.setdefault("state", "unknown")
    out.setdefault("reconnects", 0)
    out.setdefault("last_sample_age_s", None)
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class HealthReporter:
    """Builds the health document from live statistics; see the module docstring for its shape."""

    def __init__(  # noqa: PLR0913, PLR0917 (the live figures it reads, one callable each; bounds)
        self,
        version: str,
        device: str,
        state_dir: Path,
        pipelines: Callable[[], dict[str, Stats]],
        sources: Callable[[], dict[str, Stats]],
        outbox: Callable[[], Stats | None] = _none_stats,
        mqtt: Callable[[], Stats | None] = _none_stats,
        extra: Callable[[], Stats] | None = None,
        *,
        sys_root: str = "/sys",
        proc_root: str = "/proc",
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        limits: HealthLimits | None = None,
        max_bytes: int = MAX_HEALTH_BYTES,
    ) -> None:
        """``started`` is the ``clock()`` reading uptime counts from (default: now)."""
        self.version = version
        self.device = device
        self.state_dir = Path(state_dir)
        self.pipelines = pipelines
        self.sources = sources
        self.outbox = outbox
        self.mqtt = mqtt
        self.extra = extra
        self.sys_root = sys_root
        self.proc_root = proc_root
        self.clock = clock
        self.started = clock() if started is None else started
        self.cpu = CpuMeter()
        self._lock = threading.Lock()
        self.limits = limits or HealthLimits()
        self.max_bytes = max_bytes
        self.truncations = 0
        """Documents cut to ``max_bytes`` (the health document's refusal counter)."""
        self._marked: dict[str, int] | None = None

    def system(self, advance: bool = True) -> Stats:
        """The ``system`` section: process CPU/memory/fds/threads, load, temperatures, disk."""
        load = load_average()
        available, total = memory_bytes(self.proc_root)
        return {
            "cpu_percent": self.cpu.percent(advance),
            "cpu_seconds": round(cpu_seconds(), 3),
            "cores": self.cpu.cores,
            "rss_bytes": process_rss_bytes(self.proc_root),
            "peak_rss_bytes": peak_rss_bytes(self.proc_root),
            "load_avg": None if load is None else list(load),
            "temperature_c": temperatures_c(self.sys_root),
            "disk_free_bytes": disk_free_bytes(self.state_dir),
            "mem_available_bytes": available,
            "mem_total_bytes": total,
            "open_fds": open_fds(self.proc_root),
            "threads": thread_count(self.proc_root),
        }

    def report(self, mark: bool = True) -> Stats:
        """The health document. ``mark=False`` (scrapes, status lines) keeps the report window."""
        pipelines = {name: _normalise_pipeline(s) for name, s in self.pipelines().items()}
        sources = {name: _normalise_source(s) for name, s in self.sources().items()}
        outbox = self.outbox()
        mqtt = self.mqtt()
        with self._lock:
            system = self.system(advance=mark)
        doc: Stats = {
            "v": 1,
            "device": self.device,
            "ts": round(time.time(), 3),
            "version": self.version,
            "uptime_s": round(self.clock() - self.started, 3),
            "state": "ok",
            "problems": [],
            "components": {},
            "pipelines": pipelines,
            "sources": sources,
            "outbox": outbox,
            "mqtt": mqtt,
            "system": system,
        }
        if self.extra is not None:
            extra = self.extra()
            clash = sorted(set(extra) & set(doc))
            if clash:
                raise ValueError(f"health extra keys clash with built-in keys: {', '.join(clash)}")
            doc.update(extra)
        with self._lock:
            health = healthstate.assess(doc, self._marked, self.limits)
            if mark:
                self._marked = healthstate.counters(doc)
        doc["state"], doc["problems"], doc["components"] = (
            health.state,
            list(health.reasons),
            health.as_dict(),
        )
        if healthstate.bound_document(doc, self.max_bytes):
            self.truncations += 1
        doc["truncations"] = self.truncations
        return doc

    def summary(self, doc: Mapping[str, Any] | None = None) -> str:
        """One line for systemd's STATUS=, e.g. ``2 pipelines, 29.8 fps, mqtt connected, outbox 0``.

        Built from ``doc`` (a report already made) or a fresh non-marking report.
        """
        if doc is None:
            doc = self.report(mark=False)
        pipelines: Mapping[str, Mapping[str, Any]] = doc.get("pipelines") or {}
        fps = sum(float(p.get("fps_out") or 0.0) for p in pipelines.values())
        parts = [_count(len(pipelines), "pipeline"), f"{fps:.1f} fps"]
        mqtt = doc.get("mqtt")
        if mqtt is None:
            parts.append("mqtt off")
        else:
            parts.append("mqtt connected" if mqtt.get("connected") else "mqtt disconnected")
        outbox = doc.get("outbox")
        if outbox is not None:
            parts.append(f"outbox {outbox.get('depth', 0)}")
        line = ", ".join(parts)
        problems = doc.get("problems") or []
        if problems:
            line += f"; {doc.get('state', 'degraded')}: {problems[0]}"
            if len(problems) > 1:
                line += f" (+{len(problems) - 1} more)"
        return line
