"""Scrape cost of the Prometheus endpoint (``edge_runtime.reporting.metrics.MetricsServer``).

    .venv/bin/python tools/bench_metrics.py [--scrapes 300] [--idle 200] [--json]

The server runs in this process on a real :class:`~edge_runtime.health.HealthReporter` (two
pipelines, two sources, outbox and MQTT figures, the real /proc and /sys probes); a child process
scrapes it ``--scrapes`` times in a row. Reported: the server's CPU time per scrape (this process's
CPU while the child scrapes, minus the same idle time measured first), the scrape latency
(p50/p95 as the child sees it), whether a scrape is still answered, and how fast, while another
child holds ``--idle`` connections open without sending anything, and the threads and file
descriptors the server still spends on those connections 8 s later.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.health import HealthReporter
from edge_runtime.reporting.metrics import MetricsServer

HOLD_S = 8.0
"""How long the idle connections are held before the server's threads and descriptors are counted."""

CLIENT = """
import sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(n):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
    times.append(time.perf_counter() - t)
print(" ".join(f"{x:.6f}" for x in times))
"""

IDLE = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        break
    held.append(s)
print(len(held), flush=True)
time.sleep(60)
"""


def _pipeline(n: int) -> dict[str, Any]:
    latency = {s: {"p50": 1.2 + n, "p95": 2.5, "p99": 3.1} for s in ("pre", "invoke", "post", "total")}
    model = {"name": f"model{n}", "sha256": "ab" * 32, "version": "3", "delegate": "cpu"}
    return {"results": 1000 + n, "triggers": 1010, "dropped_frames": 4, "skipped_stale": 0, "errors": 0,
            "last_error": "", "fps_in": 15.2, "fps_out": 14.9, "paused": False, "latency_ms": latency,
            "models": [model]}  # fmt: skip


def reporter(state: Path) -> HealthReporter:
    pipelines = {"digits": _pipeline(0), "fused": _pipeline(1)}
    sources = {
        "front": {"type": "camera", "state": "up", "samples": 500, "reconnects": 1, "fps": 15.0,
                  "last_sample_age_s": 0.03, "last_error": ""},
        "imu": {"type": "serial", "state": "up", "samples": 900, "reconnects": 0, "rate_hz": 50.0,
                "last_sample_age_s": 0.01, "last_error": "", "parse_errors_total": 2},
    }  # fmt: skip
    outbox = {"depth": 3, "bytes": 1200, "oldest_age_s": 0.2, "dropped": 0}
    mqtt = {"connected": True, "reconnects": 0, "last_error": ""}
    return HealthReporter(
        "bench", "bench-01", state, lambda: pipelines, lambda: sources, lambda: outbox, lambda: mqtt
    )


def scrape_series(url: str, n: int) -> tuple[list[float], float]:
    """Latencies of ``n`` scrapes by a child and this process's CPU seconds meanwhile."""
    cpu = time.process_time()
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, url, str(n)], capture_output=True, text=True, check=True
    )
    return [float(x) for x in out.stdout.split()], time.process_time() - cpu


def idle_cpu(seconds: float) -> float:
    cpu = time.process_time()
    time.sleep(seconds)
    return time.process_time() - cpu


def run(scrapes: int, idle: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = MetricsServer(reporter(Path(tmp)), port=0)
        server.start()
        try:
            refresh = getattr(server, "refresh", None)
            if refresh is not None:
                refresh()
            scrape_series(server.url, 20)  # warm-up
            latencies, cpu = scrape_series(server.url, scrapes)
            wall = sum(latencies)
            background = idle_cpu(min(wall, 5.0)) * wall / min(wall, 5.0)
            threads_before, fds_before = threading.active_count(), _fds()
            holder = subprocess.Popen(
                [sys.executable, "-c", IDLE, str(server.port), str(idle)], stdout=subprocess.PIPE, text=True
            )
            try:
                assert holder.stdout is not None
                held = int(holder.stdout.readline() or 0)
                started = time.perf_counter()
                try:
                    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                        answered = s.recv(12).startswith(b"HTTP/1.")
                except OSError:
                    answered = False
                answer_s = time.perf_counter() - started
                time.sleep(HOLD_S)  # the idle connections stay open on the client side meanwhile
                threads_held, fds_held = threading.active_count() - threads_before, _fds() - fds_before
            finally:
                holder.kill()
                holder.wait()
        finally:
            server.stop()
    return {
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "scrapes": scrapes,
        "server_cpu_ms_per_scrape": round(max(cpu - background, 0.0) / scrapes * 1000, 3),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 3),
        "latency_ms_p95": round(sorted(latencies)[int(0.95 * len(latencies)) - 1] * 1000, 3),
        "idle_connections_held": held,
        "scrape_answered_with_idle_connections": answered,
        "scrape_with_idle_connections_s": round(answer_s, 3),
        f"server_threads_added_after_{HOLD_S:g}s": threads_held,
        f"server_fds_added_after_{HOLD_S:g}s": fds_held,
    }


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.scrapes, args.idle)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
