"""``tools/bench.py --monitoring``: what the device's monitoring (``edge_runtime/monitor/``) costs.

Three parts, one table (1 and 3 in :mod:`benchkit.monitor_calls`):

1. per call, in this process: one tamper check of a 640x480 frame (measurement and states), the
   quality ``observe`` of one result, the output-drift observe, one input-drift sample of a digits
   input and of a 224x224x3 input, a capture offer that no rule matches, and the whole
   ``Monitor.observe`` of one result (latency histograms, quality, drift); the cases take turns
   (interleaved repeats) and each row is the median of the repeats, in microseconds per call;
2. the daemon side by side: run (c) of the bench (lock-step on the 640x480 MJPG video, QoS 1 to
   mosquitto) with monitoring fully on (tamper at the default ``check_hz``, quality, drift against
   the bundled reference, input drift of every input, a capture table with ``random = 0.01`` and a
   quota) and fully off, on and off interleaved in pairs; medians of results/s, the ratio on/off,
   p50 capture-to-subscriber latency, CPU % and RSS;
3. the memory monitoring holds: tracemalloc of a :class:`Monitor` with one camera and one 10-class
   pipeline whose drift and input-drift windows are full (and the RSS difference of part 2).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from benchkit.common import log
from benchkit.monitor_calls import memory, micro
from benchkit.runs import Run, run_pipeline
from devkit.mqtt_client import Subscriber

HTTP = """
[http]
port = 0
"""
"""Both sides: the HTTP API on a free port (the default 8478 may be taken on a shared machine)."""

MONITOR_ON = (
    HTTP
    + """
[monitor.tamper]
enabled = true

[monitor.quality]
enabled = true

[monitor.drift]
enabled = true
input_every = 1

[monitor.capture.bench]
random = 0.01
quota_bytes = 4194304
"""
)
"""Monitoring fully on: defaults, input drift of every inference (the worst case), capture."""

MONITOR_OFF = (
    HTTP
    + """
[monitor.tamper]
enabled = false

[monitor.quality]
enabled = false

[monitor.drift]
enabled = false
"""
)
"""Monitoring off (and no capture table)."""


@dataclass
class MonitoringResult:
    """What ``--monitoring`` measured (``asdict`` for ``--json``)."""

    micro_us: dict[str, float] = field(default_factory=dict)
    micro_repeats_us: dict[str, list[float]] = field(default_factory=dict)
    memory_kb: dict[str, float] = field(default_factory=dict)
    daemon: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- 2. the daemon side by side -----------------------------------------------------------------


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def _summary(runs: list[Run]) -> dict[str, Any]:
    return {
        "fps": _median([r.fps for r in runs]),
        "p50_ms": _median([r.latency_ms.get("p50", float("nan")) for r in runs]),
        "cpu_pct": _median([r.cpu_pct for r in runs]),
        "rss_mb": _median([r.rss_mb for r in runs]),
        "rss_anon_mb": _median([float(r.extra.get("rss_anon_mb", float("nan"))) for r in runs]),
        "each_fps": [round(r.fps, 1) for r in runs],
        "errors": [r.error for r in runs if r.error],
        "log_errors": [e for r in runs for e in r.extra.get("log_errors", [])][:3],
    }


def daemon_pairs(
    label: str,
    model: Path,
    threads: int,
    pairs: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
) -> dict[str, Any]:
    """Run (c) with monitoring on and off, ``pairs`` times in turn (on first in odd pairs, off first
    in even ones); the medians of each side and their ratios."""
    from edge_runtime.runtime.model import Model

    channels = int(Model(model).inputs[0].shape[-1])
    sides: dict[str, list[Run]] = {"on": [], "off": []}
    for i in range(pairs):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        for side in order:
            tag = f"mon-{label}-{side}-{i}"
            extra = MONITOR_ON if side == "on" else MONITOR_OFF
            run = run_pipeline(
                f"monitoring {side}", workdir, tag, model, threads, channels, video, False, seconds, warmup_s,
                port, sub, extra_toml=extra,
            )  # fmt: skip
            log(f"bench: {label} monitoring {side} pair {i + 1}: {run.fps:.1f} results/s {run.error}")
            sides[side].append(run)
    on, off = _summary(sides["on"]), _summary(sides["off"])
    return {
        "model": label,
        "path": str(model),
        "threads": threads,
        "on": on,
        "off": off,
        "fps_ratio": on["fps"] / off["fps"] if off["fps"] else float("nan"),
        # per pair, then the median: a pair ran close in time, under similar load
        "pair_ratios": [
            a.fps / b.fps if b.fps else float("nan") for a, b in zip(sides["on"], sides["off"], strict=True)
        ],
        "rss_diff_mb": on["rss_mb"] - off["rss_mb"],
        "rss_anon_diff_mb": on["rss_anon_mb"] - off["rss_anon_mb"],
    }


def bench_monitoring(
    models: list[tuple[str, Path]],
    threads: int,
    seconds: float,
    warmup_s: float,
    short: bool,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
) -> MonitoringResult:
    """The three parts (``short``: fewer repeats, one pair, digits only)."""
    result = MonitoringResult(seconds=seconds, pairs=1 if short else 3)
    log("bench --monitoring: per-call costs ...")
    result.micro_us, result.micro_repeats_us, notes = micro(
        repeats=3 if short else 9, calls=100 if short else 400
    )
    result.notes += notes
    log("bench --monitoring: memory ...")
    result.memory_kb = memory(results=2000 if short else 20000)
    chosen = [(label, path) for label, path in models if not short or label == "digits"] or models[:1]
    for label, path in chosen:
        log(f"bench --monitoring: {label}, monitoring on and off, {result.pairs} pairs ...")
        result.daemon[label] = daemon_pairs(
            label, path, threads, result.pairs, seconds, warmup_s, workdir, port, sub, video
        )
    return result


def rows(result: MonitoringResult) -> list[tuple[str, float, str]]:
    """The table's rows: (what, figure, unit)."""
    out: list[tuple[str, float, str]] = [(k, v, "µs/call") for k, v in result.micro_us.items()]
    for label, d in result.daemon.items():
        for side in ("on", "off"):
            s = d[side]
            out += [
                (f"{label} monitoring {side}: results/s", s["fps"], "1/s"),
                (f"{label} monitoring {side}: p50 latency", s["p50_ms"], "ms"),
                (f"{label} monitoring {side}: CPU", s["cpu_pct"], "%"),
                (f"{label} monitoring {side}: RSS", s["rss_mb"], "MB"),
            ]
        out += [
            (f"{label} results/s on/off (median of runs)", d["fps_ratio"], "ratio"),
            (f"{label} results/s on/off (median of pairs)", _median(d["pair_ratios"]), "ratio"),
            (f"{label} RSS on - off", d["rss_diff_mb"], "MB"),
        ]
    out += [("Monitor memory (tracemalloc)", result.memory_kb.get("monitor_kb", float("nan")), "KB")]
    return out


def format_monitoring(result: MonitoringResult, header: str) -> str:
    lines = [header, f"{'what':<52} {'figure':>10}  unit"]
    for name, value, unit in rows(result):
        digits = 3 if abs(value) < 10 else 1
        figure = f"{value:>10.{digits}f}" if not math.isnan(value) else f"{'-':>10}"
        lines.append(f"{name:<52} {figure}  {unit}")
    for label, d in result.daemon.items():
        lines.append(
            f"{label}: results/s on {d['on']['each_fps']}, off {d['off']['each_fps']}; "
            f"{d['threads']} thread(s), {result.pairs} pairs of {result.seconds:g} s, medians"
        )
        for side in ("on", "off"):
            for error in d[side]["errors"] + d[side]["log_errors"]:
                lines.append(f"  {side}: {error}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def run_and_print(
    report: dict[str, Any],
    short: bool,
    models: list[tuple[str, Path]],
    threads: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
    out: TextIO,
) -> None:
    """``--monitoring`` (and the short version that ``--short`` adds): measure, print the table,
    put the figures under ``report["monitoring"]``."""
    started = time.monotonic()
    result = bench_monitoring(models, threads, seconds, warmup_s, short, workdir, port, sub, video)
    report["monitoring"] = asdict(result)
    m = report["machine"]
    header = (
        f"edge-runtime bench --monitoring{' (short)' if short else ''}, {m['date']}, "
        f"{m['cpus']} x {m['cpu_model']}"
    )
    print(format_monitoring(result, header), file=out)
    print(f"monitoring: {time.monotonic() - started:.0f} s", file=out, flush=True)
