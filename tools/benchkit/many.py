"""The second round: (d) the daemon against a two-thread limit, (e) N cameras into one model.

(d) ``limit``: :func:`benchkit.limit.child_two_thread` (one thread decodes and preprocesses, the
other invokes) on the 640x480 video in lock-step; the daemon (run (c) of :mod:`benchkit.runs`) at
1 and 2 threads on the same video, as a ratio of it.

(e) ``N cameras``: N file cameras playing the 640x480 video in real time at 15 fps (``loop``),
served three ways: ``per-camera`` (one pipeline and one loaded model per camera: the behaviour of
existing configs), ``shared`` (one pipeline per camera, ``runtime.share_models = true``: one
loaded model) and ``fan-in`` (one pipeline, ``trigger = [cam0, ...]``, round-robin). Measured at a
real MQTT subscriber: total results/s, per-source rate spread (max/min), capture-to-subscriber
p50/p99, the daemon's CPU % and RSS (VmRSS and anonymous); RSS per added camera is the slope
between the smallest and the largest N. ``--batches 1,4,8`` runs fan-in once per batch size
(``trigger = { sources = [...], batch = B }``); ``--repeat R`` makes every row R times, interleaved
(all rows once, then again), and the table shows the median of each figure.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit.common import DAEMON, ENGINE, REPO, SLOW_PYTHON, engine, log, percentiles
from benchkit.measure import BusyMeter, proc_cpu_s, proc_status_mb
from devkit.mqtt_client import Subscriber

MODES = ("per-camera", "shared", "fan-in")
CAMERA_FPS = 15.0


@dataclass
class ManyRun:
    mode: str
    cameras: int
    batch: int = 1
    fps: float = float("nan")
    offered_fps: float = float("nan")
    spread: float = float("nan")
    per_source: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_pct: float = float("nan")
    rss_mb: float = float("nan")
    rss_anon_mb: float = float("nan")
    machine_busy_pct: float = float("nan")
    error: str = ""


def _image(channels: int, source: str) -> str:
    if channels == 3:
        return (
            f'{{ kind = "image", source = "{source}", resize = "stretch", color = "rgb", '
            "mean = 127.5, std = 127.5 }"
        )
    return (
        f'{{ kind = "image", source = "{source}", resize = "crop", color = "gray", mean = 0.0, std = 255.0 }}'
    )


def many_config(
    directory: Path,
    tag: str,
    mode: str,
    n: int,
    model: Path,
    channels: int,
    video: Path,
    port: int,
    batch: int = 1,
) -> Path:
    cams = [f"cam{i}" for i in range(n)]
    text = [
        f"""# written by tools/bench.py (e)
[device]
id = "{tag}"
state_dir = "{directory / ("state-" + tag)}"
log_level = "info"

[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "bench"
qos = 1

[health]
interval_s = 3600

[runtime]
share_models = {"false" if mode == "per-camera" else "true"}
"""
    ]
    for cam in cams:
        text.append(f'[sources.{cam}]\ntype = "camera"\nuri = "{video}"\nrealtime = true\nloop = true\n')
    model_table = f'[[pipelines.models]]\npath = "{model}"\nthreads = 1\n'
    post = 'postprocess = { type = "classification", top_k = 1 }\n'
    if mode == "fan-in":
        trigger = f"{{ sources = {json.dumps(cams)}, batch = {batch} }}"
        text.append(f'[[pipelines]]\nname = "all"\ntrigger = {trigger}\n')
        text.append(model_table + f"inputs = [{_image(channels, cams[0])}]\n" + post)
    else:
        for cam in cams:
            text.append(f'[[pipelines]]\nname = "{cam}"\ntrigger = "{cam}"\n')
            text.append(model_table + f"inputs = [{_image(channels, cam)}]\n" + post)
    path = directory / f"{tag}.toml"
    path.write_text("\n".join(text))
    return path


def run_many(
    directory: Path,
    mode: str,
    n: int,
    model: Path,
    channels: int,
    video: Path,
    seconds: float,
    warmup_s: float,
    port: int,
    sub: Subscriber,
    camera_fps: float = CAMERA_FPS,
    batch: int = 1,
    rep: int = 0,
) -> ManyRun:
    tag = f"many-{mode}-{n}-{camera_fps:g}-b{batch}-r{rep}"
    run = ManyRun(mode, n, batch, offered_fps=n * camera_fps)
    config = many_config(directory, tag, mode, n, model, channels, video, port, batch)
    prefix = f"bench/{tag}/"
    log_path = directory / f"{tag}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [ENGINE["python"], *DAEMON, "run", "--config", str(config), "--quiet"]
    with log_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
    t0 = t1 = 0.0
    try:
        deadline = time.monotonic() + 90
        while not sub.messages(prefix + "#") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        if not sub.messages(prefix + "#"):
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            run.error = f"no result ({'running' if proc.poll() is None else proc.returncode}): {tail}"
            return run
        time.sleep(warmup_s)
        meter = BusyMeter()
        cpu0, t0 = proc_cpu_s(proc.pid), time.time()
        time.sleep(seconds)
        cpu1, t1 = proc_cpu_s(proc.pid), time.time()
        run.rss_mb = proc_status_mb(proc.pid, "VmRSS")
        run.rss_anon_mb = proc_status_mb(proc.pid, "RssAnon")
        run.cpu_pct = (cpu1 - cpu0) / (t1 - t0) * 100
        run.machine_busy_pct = meter.pct()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    time.sleep(0.1)
    messages = sub.take(prefix + "#")
    seen: set[tuple[str, int]] = set()
    e2e: list[float] = []
    counts = {f"cam{i}": 0 for i in range(n)}
    for m in messages:
        if not t0 <= m.time < t1 or not m.topic.endswith("/results"):
            continue
        body = json.loads(m.payload)
        key = (body["pipeline"], body["seq"])
        if key in seen:  # at least once: a duplicate is not a new result
            continue
        seen.add(key)
        counts[body["trigger"]["source"]] = counts.get(body["trigger"]["source"], 0) + 1
        e2e.append((m.time - body["frame_ts"]) * 1000)
    window = t1 - t0
    run.fps = len(seen) / window
    run.per_source = counts
    low = min(counts.values())
    run.spread = max(counts.values()) / low if low else float("inf")
    run.latency_ms = percentiles(e2e)
    return run


def _label(r: ManyRun) -> str:
    return f"{r.mode} b{r.batch}" if r.mode == "fan-in" else r.mode


def median_runs(runs: list[ManyRun]) -> list[ManyRun]:
    """One row per (mode, batch, N): the median of each figure over its repeats (errors kept)."""
    groups: dict[tuple[str, int, int], list[ManyRun]] = {}
    for r in runs:
        groups.setdefault((r.mode, r.batch, r.cameras), []).append(r)
    out = []
    for (mode, batch, n), group in groups.items():
        good = [r for r in group if not r.error]
        if not good:
            out.append(group[0])
            continue
        med = ManyRun(mode, n, batch, offered_fps=good[0].offered_fps)
        for name in ("fps", "spread", "cpu_pct", "rss_mb", "rss_anon_mb", "machine_busy_pct"):
            setattr(med, name, statistics.median(getattr(r, name) for r in good))
        med.latency_ms = {q: statistics.median(r.latency_ms[q] for r in good) for q in ("p50", "p99")}
        med.per_source = {"repeats": len(good)}
        out.append(med)
    return out


def format_many(runs: list[ManyRun]) -> str:
    lines = [
        f"{'(e) mode':<11} {'N':>3} {'offered':>8} {'res/s':>7} {'spread':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU %':>6} {'RSS MB':>7} {'anon MB':>7}"
    ]
    for r in runs:
        if r.error:
            lines.append(f"{_label(r):<11} {r.cameras:>3} error: {r.error}")
            continue
        lines.append(
            f"{_label(r):<11} {r.cameras:>3} {r.offered_fps:>8.0f} {r.fps:>7.1f} {r.spread:>6.2f} "
            f"{r.latency_ms['p50']:>7.1f} {r.latency_ms['p99']:>7.1f} {r.cpu_pct:>6.0f} "
            f"{r.rss_mb:>7.1f} {r.rss_anon_mb:>7.1f}"
        )
    for label in dict.fromkeys(_label(r) for r in runs):
        mine = sorted((r for r in runs if _label(r) == label and not r.error), key=lambda r: r.cameras)
        if len(mine) >= 2 and mine[-1].cameras > mine[0].cameras:
            added = mine[-1].cameras - mine[0].cameras
            per = (mine[-1].rss_mb - mine[0].rss_mb) / added
            per_anon = (mine[-1].rss_anon_mb - mine[0].rss_anon_mb) / added
            lines.append(
                f"{label}: RSS per added camera {per:.2f} MB (anonymous {per_anon:.2f} MB), "
                f"N {mine[0].cameras} -> {mine[-1].cameras}"
            )
    return "\n".join(lines)


def log_many(runs: list[ManyRun]) -> None:
    log(format_many(runs))


def _limit_row(
    label: str,
    path: Path,
    channels: int,
    n: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
    idle_s: float,
) -> dict[str, Any]:
    """(d) for one model, thread count and engine: the limit, the daemon and the naive loop."""
    from benchkit.limit import run_two_thread
    from benchkit.measure import wait_idle
    from benchkit.runs import run_naive, run_pipeline

    wait_idle(idle_s)
    limit = run_two_thread(str(path), n, seconds, warmup_s, str(video))
    wait_idle(idle_s)
    tag = f"{label}-t{n}-{ENGINE['backend']}-d"
    daemon = run_pipeline("c", workdir, tag, path, n, channels, video, False, seconds, warmup_s, port, sub)
    wait_idle(idle_s)
    naive = run_naive(path, n, seconds, warmup_s, video, port, sub, tag)
    lim = float(limit.get("fps", float("nan")))
    return {
        "model": label,
        "engine": ENGINE["backend"],
        "threads": n,
        "limit": limit,
        "daemon": daemon,
        "naive": naive,
        "daemon_error": daemon.error,
        "daemon_ratio": daemon.fps / lim,
        "naive_ratio": naive.fps / lim,
    }


def round_two(
    models: list[tuple[str, Path]],
    threads: list[int],
    cameras: list[int],
    modes: list[str],
    seconds: float,
    warmup_s: float,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
    many_video: Path,
    idle_s: float,
    camera_fps: float = CAMERA_FPS,
    limit_rows: bool = True,
    batches: tuple[int, ...] = (1,),
    repeat: int = 1,
) -> dict[str, Any]:
    """(d) for every model and thread count, then (e) for the first model; tables to the log."""
    from benchkit.combos import input_channels
    from benchkit.measure import wait_idle

    limits: list[dict[str, Any]] = []
    lines = [
        f"{'(d) model':<12} {'engine':<15} {'thr':>3} {'inv ms':>6} {'limit fps':>9} {'daemon fps':>10} "
        f"{'ratio':>6} {'naive fps':>9} {'ratio':>6}"
    ]
    engines = [("litert", sys.executable)]
    if SLOW_PYTHON.exists():  # the slow row: the same pipeline through tflite-runtime (no XNNPACK int8)
        engines.append(("tflite-runtime", str(SLOW_PYTHON)))
    for label, path in models if limit_rows else []:
        channels = input_channels(path)
        for n in threads:
            for backend, python in engines:
                with engine(python, backend):
                    row = _limit_row(
                        label, path, channels, n, seconds, warmup_s, workdir, port, sub, video, idle_s
                    )
                limits.append(row)
                lim, daemon, naive = row["limit"], row["daemon"], row["naive"]
                invoke = lim.get("invoke_ms", {}).get("p50", float("nan"))
                lines.append(
                    f"{label:<12} {backend:<15} {n:>3} {invoke:>6.2f} "
                    f"{lim.get('fps', float('nan')):>9.1f} {daemon.fps:>10.1f} {row['daemon_ratio']:>6.2f} "
                    f"{naive.fps:>9.1f} {row['naive_ratio']:>6.2f}"
                    + f"  {lim.get('error', '')} {daemon.error}".rstrip()
                )
                row["daemon_fps"], row["naive_fps"] = row.pop("daemon").fps, row.pop("naive").fps
                log(lines[-1])
    log("\n".join(lines))
    label, path = models[0]
    channels = input_channels(path)
    many: list[ManyRun] = []
    variants = [(m, b) for m in modes for b in (batches if m == "fan-in" else (1,))]
    for rep in range(repeat):  # interleaved: every row once, then again
        for n in cameras:
            for mode, batch in variants:
                if batch > n:  # the config refuses a batch larger than its sources
                    continue
                wait_idle(idle_s)
                args = (workdir, mode, n, path, channels, many_video, seconds, warmup_s, port, sub)
                many.append(run_many(*args, camera_fps, batch, rep))
                log(format_many(many[-1:]).splitlines()[-1])
    table = format_many(median_runs(many) if repeat > 1 else many)
    if repeat > 1:
        table = f"medians of {repeat} interleaved repeats\n{table}"
    return {
        "limit_table": "\n".join(lines),
        "limits": limits,
        "many_model": label,
        "many_table": table,
        "many": [r.__dict__ for r in many],
    }
