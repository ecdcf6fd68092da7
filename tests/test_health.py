"""Health probes on this machine, thermal zones from a sysfs tree of real files, the health
document and its degraded states, and the Prometheus endpoint over real HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.processes import free_port
from edge_runtime.health import (
    CpuMeter,
    HealthReporter,
    cpu_cores,
    cpu_seconds,
    disk_free_bytes,
    load_average,
    open_fds,
    peak_rss_bytes,
    process_rss_bytes,
    temperatures_c,
    thread_count,
)
from edge_runtime.reporting.metrics import MetricsError, MetricsServer

# -- probes on this machine ------------------------------------------------------------------------


def test_memory_fds_threads_cores() -> None:
    rss = process_rss_bytes()
    peak = peak_rss_bytes()
    assert rss is not None and rss > 1024 * 1024
    assert peak is not None and peak >= rss
    fds = open_fds()
    assert fds is not None and fds >= 3
    threads = thread_count()
    assert threads is not None and threads >= 1
    cores = cpu_cores()
    assert cores is not None and cores >= 1


def test_load_average_and_disk(tmp_path: Path) -> None:
    load = load_average()
    assert load is not None and len(load) == 3
    assert all(isinstance(v, float) and v >= 0 for v in load)
    free = disk_free_bytes(tmp_path)
    assert free is not None and free > 0
    # a state dir that does not exist yet: its nearest existing parent is measured
    assert disk_free_bytes(tmp_path / "not" / "yet") == pytest.approx(free, rel=0.01)


def test_cpu_meter_counts_busy_time() -> None:
    meter = CpuMeter()
    assert meter.cores is not None and meter.cores >= 1
    # burn 0.2 s of CPU time (however long that takes on a loaded machine)
    start_cpu, start_wall = cpu_seconds(), time.monotonic()
    x = 0
    while cpu_seconds() - start_cpu < 0.2 and time.monotonic() - start_wall < 10:
        x += 1
    expected = 100 * (cpu_seconds() - start_cpu) / (time.monotonic() - start_wall)
    peek = meter.percent(advance=False)
    busy = meter.percent()
    assert peek is not None and busy is not None
    assert busy > 0.5 * expected > 0
    assert peek > 0.5 * expected
    time.sleep(0.2)
    idle = meter.percent()
    assert idle is not None and idle < busy


def test_cpu_meter_without_elapsed_time_is_none() -> None:
    meter = CpuMeter(clock=lambda: 5.0)
    assert meter.percent() is None


def test_probes_without_proc_fall_back_or_return_none(tmp_path: Path) -> None:
    proc = str(tmp_path)  # an empty tree: no self/status, no self/fd
    rss = process_rss_bytes(proc)
    assert rss is not None and rss > 0  # from getrusage
    assert open_fds(proc) is None
    threads = thread_count(proc)
    assert threads is not None and threads >= 1  # Python's own count


def test_probes_read_a_proc_status_file(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text(
        "Name:\tedge-runtime\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t7\n"
    )
    (tmp_path / "self" / "fd").mkdir()
    for n in range(4):
        (tmp_path / "self" / "fd" / str(n)).write_text("")
    assert process_rss_bytes(str(tmp_path)) == 102400 * 1024
    assert peak_rss_bytes(str(tmp_path)) == 204800 * 1024
    assert thread_count(str(tmp_path)) == 7
    assert open_fds(str(tmp_path)) == 4


def _zone(root: Path, n: int, kind: str, temp: str) -> None:
    zone = root / "class" / "thermal" / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(temp + "\n")


def test_temperatures_from_a_sysfs_tree(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "cpu-thermal", "48312")
    _zone(tmp_path, 1, "gpu-thermal", "41000")
    _zone(tmp_path, 2, "cpu-thermal", "50555")  # same type twice
    _zone(tmp_path, 10, "soc", "")  # unreadable value: left out
    (tmp_path / "class" / "thermal" / "cooling_device0").mkdir()  # not a zone
    assert temperatures_c(str(tmp_path)) == {"cpu-thermal": 48.3, "gpu-thermal": 41.0, "cpu-thermal_2": 50.6}


def test_temperatures_without_thermal_zones(tmp_path: Path) -> None:
    assert temperatures_c(str(tmp_path)) == {}
    assert isinstance(temperatures_c(), dict)  # this machine: maybe none, never an error


# -- the health document ---------------------------------------------------------------------------


def _pipeline(errors: int = 0, last_error: str = "") -> dict[str, Any]:
    """What ``Pipeline.stats()`` returns."""
    counters = {"results": 120, "triggers": 130, "skipped_stale": 4, "dropped_frames": 6, "rate_limited": 0}
    model = {"name": "digits", "sha256": "ab" * 32, "version": "3", "delegate": "cpu", "placement": "cpu"}
    latency = {
        "pre": {"p50": 1.2, "p95": 2.0, "p99": 2.5},
        "invoke": {"p50": 8.0, "p95": 9.5, "p99": 12.0},
        "post": {"p50": 0.3, "p95": 0.4, "p99": 0.6},
        "total": {"p50": None, "p95": None, "p99": None},
    }
    return {**counters, "paused_skips": 0, "errors": errors, "last_error": last_error, "fps_in": 15.2,
            "fps_out": 14.9, "paused": False, "latency_ms": latency, "models": [model]}  # fmt: skip


def _source(kind: str, **stats: Any) -> dict[str, Any]:
    """What ``Source.stats()`` returns (base keys plus the kind's own)."""
    base = {"type": kind, "state": "up", "samples": 0, "reconnects": 0, "last_sample_age_s": None}
    return {**base, "last_error": "", **stats}


class Live:
    """Mutable stand-ins for the daemon's live statistics."""

    def __init__(self) -> None:
        self.pipelines = {"digits": _pipeline(), "fused": _pipeline()}
        self.sources = {
            "front": _source("camera", samples=500, reconnects=1, last_sample_age_s=0.03, fps=15.0),
            "imu": _source("serial", samples=900, last_sample_age_s=0.01, rate_hz=50.0,
                           parse_errors={"bad_number": 2}, parse_errors_total=2),
        }  # fmt: skip
        self.outbox: dict[str, Any] | None = {"depth": 0, "bytes": 0, "oldest_age_s": None, "dropped": 0}
        self.mqtt: dict[str, Any] | None = {"connected": True, "reconnects": 0, "last_error": ""}

    def reporter(self, tmp_path: Path, **kwargs: Any) -> HealthReporter:
        live = (lambda: self.pipelines, lambda: self.sources, lambda: self.outbox, lambda: self.mqtt)
        return HealthReporter("1.2.3", "cam-01", tmp_path / "state", *live, **kwargs)


@pytest.fixture
def live() -> Live:
    return Live()


def test_report_has_every_field(live: Live, tmp_path: Path) -> None:
    _zone(tmp_path / "sys", 0, "cpu-thermal", "55000")
    reporter = live.reporter(tmp_path, sys_root=str(tmp_path / "sys"))
    doc = reporter.report()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["v"] == 1 and doc["device"] == "cam-01" and doc["version"] == "1.2.3"
    assert abs(doc["ts"] - time.time()) < 5 and round(doc["ts"], 3) == doc["ts"]
    assert doc["uptime_s"] >= 0
    assert doc["state"] == "ok" and doc["problems"] == []
    p = doc["pipelines"]["digits"]
    for key in ("fps_in", "fps_out", "results", "dropped_frames", "skipped_stale", "errors", "triggers"):
        assert key in p
    assert set(p["latency_ms"]) == {"pre", "invoke", "post", "total"}
    assert p["latency_ms"]["invoke"] == {"p50": 8.0, "p95": 9.5, "p99": 12.0}
    assert p["latency_ms"]["total"] == {"p50": None, "p95": None, "p99": None}
    assert p["models"] == [
        {"name": "digits", "sha256": "ab" * 32, "version": "3", "delegate": "cpu", "placement": "cpu"}
    ]
    s = doc["sources"]["imu"]
    assert (s["type"], s["state"], s["rate_hz"], s["reconnects"]) == ("serial", "up", 50.0, 0)
    assert s["last_sample_age_s"] == 0.01 and s["parse_errors"] == {"bad_number": 2}
    assert doc["sources"]["front"]["fps"] == 15.0
    assert doc["outbox"]["depth"] == 0 and doc["mqtt"]["connected"] is True
    system = doc["system"]
    assert set(system) >= {"cpu_percent", "cores", "rss_bytes", "peak_rss_bytes", "load_avg"}
    assert set(system) >= {"temperature_c", "disk_free_bytes", "open_fds", "threads"}
    assert system["temperature_c"] == {"cpu-thermal": 55.0}
    assert len(system["load_avg"]) == 3
    assert system["rss_bytes"] > 0 and system["disk_free_bytes"] > 0 and system["threads"] >= 1


def test_report_normalises_sparse_stats(tmp_path: Path) -> None:
    reporter = HealthReporter(
        "1",
        "d",
        tmp_path,
        pipelines=lambda: {"p": {"skipped": 2, "models": [{"name": "m"}]}},
        sources=lambda: {"s": {}},
    )
    doc = reporter.report()
    p = doc["pipelines"]["p"]
    assert (p["skipped_stale"], p["dropped_frames"], p["results"], p["fps_out"]) == (2, 0, 0, 0.0)
    assert p["latency_ms"]["pre"] == {"p50": None, "p95": None, "p99": None}
    assert p["models"][0]["delegate"] is None
    assert doc["sources"]["s"]["state"] == "unknown"
    assert doc["outbox"] is None and doc["mqtt"] is None and doc["state"] == "ok"


def test_uptime_counts_from_start(live: Live, tmp_path: Path) -> None:
    now = [100.0]
    reporter = live.reporter(tmp_path, clock=lambda: now[0], started=40.0)
    now[0] = 160.5
    assert reporter.report()["uptime_s"] == 120.5


def test_source_down_and_mqtt_disconnected_degrade(live: Live, tmp_path: Path) -> None:
    reporter = live.reporter(tmp_path)
    live.sources["imu"]["state"] = "down"
    live.sources["imu"]["last_error"] = "/dev/ttyUSB0: no such device"
    live.mqtt = {"connected": False, "reconnects": 3, "last_error": "connection refused"}
    doc = reporter.report()
    assert doc["state"] == "degraded"
    assert doc["problems"] == [
        "source imu is down: /dev/ttyUSB0: no such device",
        "mqtt disconnected: connection refused",
    ]
    live.sources["imu"]["state"] = "up"
    live.mqtt = {"connected": True, "reconnects": 3}
    assert reporter.report()["state"] == "ok"
    live.mqtt = None  # MQTT disabled is not a problem
    assert reporter.report()["state"] == "ok"


def test_pipeline_errors_count_per_interval(live: Live, tmp_path: Path) -> None:
    reporter = live.reporter(tmp_path)
    assert reporter.report()["state"] == "ok"
    live.pipelines["fused"] = _pipeline(errors=2, last_error="invoke failed")
    # scrapes and status lines do not consume the interval
    assert reporter.report(mark=False)["state"] == "degraded"
    doc = reporter.report()
    assert doc["problems"] == ["pipeline fused: 2 errors since the last report (last: invoke failed)"]
    assert reporter.report()["state"] == "ok"  # no new errors in this interval
    live.pipelines["fused"] = _pipeline(errors=3, last_error="invoke failed")
    assert reporter.report()["problems"] == [
        "pipeline fused: 1 error since the last report (last: invoke failed)"
    ]


def test_outbox_dropping_degrades(live: Live, tmp_path: Path) -> None:
    reporter = live.reporter(tmp_path)
    assert reporter.report()["state"] == "ok"
    live.outbox = {"depth": 5000, "bytes": 1 << 20, "oldest_age_s": 600.0, "dropped": 40}
    doc = reporter.report()
    assert doc["problems"] == ["outbox dropped 40 messages since the last report"]
    assert doc["outbox"]["depth"] == 5000
    assert reporter.report()["state"] == "ok"


def test_extra_keys(live: Live, tmp_path: Path) -> None:
    reporter = live.reporter(tmp_path, extra=lambda: {"config_sha256": "00" * 32})
    assert reporter.report()["config_sha256"] == "00" * 32
    clash = live.reporter(tmp_path, extra=lambda: {"state": "fine"})
    with pytest.raises(ValueError, match="state"):
        clash.report()


def test_summary(live: Live, tmp_path: Path) -> None:
    reporter = live.reporter(tmp_path)
    assert reporter.summary() == "2 pipelines, 29.8 fps, mqtt connected, outbox 0"
    live.mqtt = {"connected": False, "last_error": "timed out"}
    live.sources["front"]["state"] = "down"
    line = reporter.summary(reporter.report())
    assert line == (
        "2 pipelines, 29.8 fps, mqtt disconnected, outbox 0;"
        " degraded: source front is down: no data (+1 more)"
    )
    live.mqtt = live.outbox = None
    live.pipelines = {"digits": _pipeline()}
    live.sources["front"]["state"] = "up"
    assert reporter.summary() == "1 pipeline, 14.9 fps, mqtt off"


# -- Prometheus ------------------------------------------------------------------------------------


@pytest.fixture
def metrics(live: Live, tmp_path: Path) -> Iterator[MetricsServer]:
    _zone(tmp_path / "sys", 0, "cpu-thermal", "61500")
    reporter = live.reporter(tmp_path, sys_root=str(tmp_path / "sys"))
    server = MetricsServer(reporter, port=free_port())
    server.start()
    yield server
    server.stop()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


def test_metrics_endpoint(metrics: MetricsServer, live: Live) -> None:
    live.sources["imu"]["state"] = "down"
    metrics.refresh()
    text = _scrape(f"http://127.0.0.1:{metrics.port}/metrics")
    expected = [
        'edge_runtime_build_info{device="cam-01",version="1.2.3"} 1.0',
        'edge_runtime_pipeline_results_total{pipeline="digits"} 120.0',
        'edge_runtime_pipeline_dropped_frames_total{pipeline="fused"} 6.0',
        'edge_runtime_pipeline_errors_total{pipeline="digits"} 0.0',
        'edge_runtime_pipeline_fps_in{pipeline="digits"} 15.2',
        'edge_runtime_pipeline_fps_out{pipeline="digits"} 14.9',
        'edge_runtime_pipeline_latency_seconds{pipeline="digits",quantile="0.95",stage="invoke"} 0.0095',
        'edge_runtime_pipeline_latency_seconds{pipeline="fused",quantile="0.5",stage="pre"} 0.0012',
        'edge_runtime_source_up{source="front",type="camera"} 1.0',
        'edge_runtime_source_up{source="imu",type="serial"} 0.0',
        'edge_runtime_source_reconnects_total{source="front"} 1.0',
        'edge_runtime_source_parse_errors_total{source="imu"} 2.0',
        'edge_runtime_source_rate_hz{source="front"} 15.0',
        "edge_runtime_outbox_depth 0.0",
        "edge_runtime_outbox_dropped_total 0.0",
        "edge_runtime_mqtt_connected 1.0",
        "edge_runtime_health_ok 0.0",
        'edge_runtime_temperature_celsius{zone="cpu-thermal"} 61.5',
    ]
    for line in expected:
        assert line in text.splitlines(), line
    for name in (
        "edge_runtime_uptime_seconds",
        "edge_runtime_process_cpu_percent",
        "edge_runtime_process_cpu_seconds_total",
        "edge_runtime_process_resident_memory_bytes",
        "edge_runtime_process_open_fds",
        "edge_runtime_process_threads",
        "edge_runtime_load1",
        "edge_runtime_load15",
        "edge_runtime_disk_free_bytes{path=",
    ):
        assert f"\n{name}" in text, name
    assert 'stage="total"' not in text  # no samples yet: no made-up zeros
    assert "edge_runtime_outbox_oldest_age_seconds" not in text  # None while empty


def test_metrics_serve_the_snapshot_until_the_next_refresh(metrics: MetricsServer, live: Live) -> None:
    before = _scrape(metrics.url)
    assert 'edge_runtime_pipeline_results_total{pipeline="digits"} 120.0' in before
    live.pipelines["digits"]["results"] = 121
    cached = _scrape(metrics.url)  # a scrape builds no report: the snapshot is served
    assert 'edge_runtime_pipeline_results_total{pipeline="digits"} 120.0' in cached
    metrics.refresh()  # what the health timer does every metrics.refresh_s
    after = _scrape(metrics.url)
    assert 'edge_runtime_pipeline_results_total{pipeline="digits"} 121.0' in after
    assert "edge_runtime_metrics_snapshot_age_seconds " in after


def test_stop_frees_the_port(live: Live, tmp_path: Path) -> None:
    reporter = live.reporter(tmp_path)
    first = MetricsServer(reporter, port=0)  # any free port
    first.start()
    port = first.port
    assert port != 0
    _scrape(first.url)
    first.stop()
    first.stop()  # idempotent
    # refused, not a timeout: nothing listens on the port any more
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert isinstance(refused.value.reason, ConnectionRefusedError), refused.value
    with MetricsServer(reporter, port=port) as second:
        assert "edge_runtime_build_info" in _scrape(second.url)


def test_port_in_use_raises(live: Live, tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = MetricsServer(live.reporter(tmp_path), port=port)
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            server.start()


def test_package_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from pathlib import Path\n"
        "from edge_runtime.health import HealthReporter\n"
        "from edge_runtime.reporting.metrics import MetricsServer, MetricsUnavailableError\n"
        "server = MetricsServer(HealthReporter('1', 'd', Path('.'), dict, dict), port=0)\n"
        "try:\n"
        "    server.start()\n"
        "except MetricsUnavailableError as exc:\n"
        "    assert 'pip install prometheus-client' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('started without prometheus_client')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
