"""Measurements of processes and of the machine: RSS, CPU time, how busy the machine is."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import resource
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from benchkit.common import CLK_TCK

# -- small measurements -----------------------------------------------------------------------------


def proc_status_mb(pid: int | str, key: str) -> float:
    """A memory line of /proc/PID/status in MB (NaN when gone): ``VmRSS``, ``VmHWM`` (peak RSS),
    ``RssAnon`` (the process's own memory) or ``RssFile`` (mapped files, such as the runtime's and
    OpenCV's shared libraries: it varies with the page cache, 85 to 130 MB for the same run)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


class BusyMeter:
    """Share of the whole machine's CPU in use (100 = every core) while it runs."""

    def __init__(self) -> None:
        self.busy0, self.total0 = machine_cpu()

    def pct(self) -> float:
        busy, total = machine_cpu()
        return (busy - self.busy0) / max(total - self.total0, 1e-9) * 100


def wait_idle(limit_s: float, threshold_pct: float = 10.0) -> tuple[float, float]:
    """Wait (at most ``limit_s``) for a second in which the machine is under ``threshold_pct`` busy.

    Returns (seconds waited, busy % of the last second). On a shared machine this keeps other
    people's jobs out of the figures; with ``limit_s`` 0 it only measures for a quarter second."""
    started = time.monotonic()
    while True:
        meter = BusyMeter()
        time.sleep(1.0 if limit_s > 0 else 0.25)
        busy = meter.pct()
        waited = time.monotonic() - started
        if busy < threshold_pct or waited >= limit_s:
            return waited, busy


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    versions: dict[str, str] = {}
    for dist in ("ai-edge-litert", "numpy", "opencv-python-headless", "paho-mqtt"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    mosquitto = shutil.which("mosquitto") or ""
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "mosquitto": mosquitto,
    }
