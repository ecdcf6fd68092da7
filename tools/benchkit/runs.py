"""The runs: (a) bare, (b) naive and (c) edge-runtime, each in a fresh process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit.common import BENCH, CHILD, DAEMON, ENGINE, REPO, RESULT_PREFIX, percentiles
from benchkit.measure import BusyMeter, proc_cpu_s, proc_status_mb
from devkit.mqtt_client import Subscriber

# -- results ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run: what the table shows, and the details for --json."""

    kind: str
    fps: float = float("nan")
    latency_kind: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_pct: float = float("nan")
    peak_rss_mb: float = float("nan")
    rss_mb: float = float("nan")
    first_result_s: float = float("nan")
    frames: int = 0
    window_s: float = float("nan")
    machine_busy_pct: float = float("nan")  # the whole machine (100 = every core), for context
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _child_cmd(kind: str, params: dict[str, Any]) -> list[str]:
    return [ENGINE["python"], str(BENCH), CHILD, kind, json.dumps({**params, "backend": ENGINE["backend"]})]


def _run_child(kind: str, params: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, float, str]:
    """Run a measuring child; returns (its result, wall time at Popen, error)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    proc = subprocess.Popen(
        _child_cmd(kind, params), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, started, f"timed out after {timeout:.0f} s"
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result, started, ""
    lines = [x for x in err.strip().splitlines() if x.strip()]
    return None, started, lines[-1] if lines else f"exit {proc.returncode}"


def run_bare(model: Path, threads: int, seconds: float, warmup_s: float) -> Run:
    params = {"model": str(model), "threads": threads, "seconds": seconds, "warmup_s": warmup_s}
    meter = BusyMeter()
    data, started, error = _run_child("bare", params, timeout=seconds + warmup_s + 120)
    run = Run("bare", latency_kind="invoke", machine_busy_pct=meter.pct())
    if data is None:
        run.error = error
        return run
    run.fps = data["fps"]
    run.latency_ms = data["invoke_ms"]
    run.stages_ms = {"invoke": data["invoke_ms"]}
    run.cpu_pct = data["cpu_pct"]
    run.peak_rss_mb = data["peak_rss_mb"]
    run.rss_mb = data["rss_mb"]
    run.first_result_s = data["first_wall"] - started
    run.frames = data["invokes"]
    run.window_s = data["window_s"]
    run.extra = {"input": data["input"], "load_ms": data["load_ms"], "delegate": data["delegate"]}
    return run


def run_naive(
    model: Path,
    threads: int,
    seconds: float,
    warmup_s: float,
    video: Path,
    port: int,
    sub: Subscriber,
    tag: str,
) -> Run:
    topic = f"naive/{tag}/results"
    params = {
        "model": str(model),
        "threads": threads,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "video": str(video),
        "port": port,
        "topic": topic,
    }
    meter = BusyMeter()
    data, started, error = _run_child("naive", params, timeout=seconds + warmup_s + 120)
    run = Run("naive", latency_kind="frame: read to publish", machine_busy_pct=meter.pct())
    if data is None:
        run.error = error
        sub.take(f"naive/{tag}/#")
        return run
    sub.wait_for(lambda ms: sum(m.topic.startswith(f"naive/{tag}/") for m in ms) >= data["published"], 5)
    messages = sub.take(f"naive/{tag}/#")
    lo, hi = data["timed_seqs"]
    e2e = []
    for m in messages:
        body = json.loads(m.payload)
        if lo <= body["seq"] <= hi:
            e2e.append((m.time - body["frame_ts"]) * 1000)
    run.fps = data["fps"]
    run.latency_ms = data["frame_ms"]
    run.stages_ms = data["stages_ms"]
    run.cpu_pct = data["cpu_pct"]
    run.peak_rss_mb = data["peak_rss_mb"]
    run.rss_mb = data["rss_mb"]
    run.first_result_s = (messages[0].time - started) if messages else float("nan")
    run.frames = data["frames"]
    run.window_s = data["window_s"]
    run.extra = {
        "capture_to_subscriber_ms": percentiles(e2e),
        "received": len(messages),
        "published": data["published"],
        "first_publish_s": data["first_wall"] - started,
    }
    return run


def pipeline_config(
    directory: Path,
    tag: str,
    model: Path,
    threads: int,
    channels: int,
    video: Path,
    port: int,
    realtime: bool,
    extra_toml: str = "",
) -> Path:
    if channels == 3:
        image = (
            '{ kind = "image", source = "camera", resize = "stretch", color = "rgb", '
            "mean = 127.5, std = 127.5 }"
        )
    else:
        image = (
            '{ kind = "image", source = "camera", resize = "crop", color = "gray", mean = 0.0, std = 255.0 }'
        )
    path = directory / f"{tag}.toml"
    runtime = "" if ENGINE["backend"] == "litert" else f'\n[runtime]\nbackend = "{ENGINE["backend"]}"\n'
    path.write_text(
        f"""# written by tools/bench.py
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
{runtime}
[sources.camera]
type = "camera"
uri = "{video}"
realtime = {"true" if realtime else "false"}
loop = true

[[pipelines]]
name = "bench"
trigger = "camera"

[[pipelines.models]]
path = "{model}"
threads = {threads}
inputs = [{image}]
postprocess = {{ type = "classification", top_k = 1 }}
{extra_toml}"""
    )
    return path


def _stats_line(text: str, marker: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if marker in line:
            with contextlib.suppress(ValueError):
                data: dict[str, Any] = json.loads(line.split(marker, 1)[1])
                return data
    return {}


def run_pipeline(
    kind: str,
    directory: Path,
    tag: str,
    model: Path,
    threads: int,
    channels: int,
    video: Path,
    realtime: bool,
    seconds: float,
    warmup_s: float,
    port: int,
    sub: Subscriber,
    sample_every_s: float = 1.0,
    extra_toml: str = "",
) -> Run:
    """``python -m edge_runtime run`` for warm-up + ``seconds``; measured at the subscriber."""
    config = pipeline_config(directory, tag, model, threads, channels, video, port, realtime, extra_toml)
    prefix = f"bench/{tag}/"
    run = Run(kind, latency_kind="capture to subscriber")
    log_path = directory / f"{tag}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [ENGINE["python"], *DAEMON, "run", "--config", str(config), "--quiet"]
    with log_path.open("wb") as err:
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        first: float | None = None
        while first is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
            arrived = sub.messages(prefix + "#")
            first = arrived[0].time if arrived else None
        if first is None:
            run.error = "no result within 60 s" if proc.poll() is None else f"daemon exited {proc.returncode}"
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            run.error += ": " + " | ".join(tail)
            return run
        run.first_result_s = first - started
        time.sleep(warmup_s)
        meter = BusyMeter()
        cpu0, t0 = proc_cpu_s(proc.pid), time.time()
        rss_samples: list[tuple[float, float]] = [(0.0, proc_status_mb(proc.pid, "VmRSS"))]
        end = t0 + seconds
        while True:
            now = time.time()
            if now >= end or proc.poll() is not None:
                break
            time.sleep(min(sample_every_s, end - now))
            rss_samples.append((time.time() - t0, proc_status_mb(proc.pid, "VmRSS")))
        cpu1, t1 = proc_cpu_s(proc.pid), time.time()
        run.peak_rss_mb = proc_status_mb(proc.pid, "VmHWM")
        run.rss_mb = proc_status_mb(proc.pid, "VmRSS")
        run.extra["rss_anon_mb"] = proc_status_mb(proc.pid, "RssAnon")
        run.extra["rss_file_mb"] = proc_status_mb(proc.pid, "RssFile")
        run.cpu_pct = (cpu1 - cpu0) / (t1 - t0) * 100
        run.machine_busy_pct = meter.pct()
    finally:
        stopping = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        stop_s = time.monotonic() - stopping
    time.sleep(0.1)  # the last in-flight messages
    messages = sub.take(prefix + "#")
    seen: set[int] = set()
    e2e: list[float] = []
    stages: dict[str, list[float]] = {"pre": [], "invoke": [], "post": [], "total": []}
    in_window = 0
    for m in messages:
        if not t0 <= m.time < t1:
            continue
        body = json.loads(m.payload)
        if body["seq"] in seen:  # at least once: a duplicate is not a new result
            continue
        seen.add(body["seq"])
        in_window += 1
        e2e.append((m.time - body["frame_ts"]) * 1000)
        for key, values in stages.items():
            values.append(float(body["latency_ms"][key]))
    text = log_path.read_text(errors="replace")
    run.fps = in_window / (t1 - t0)
    run.frames = in_window
    run.window_s = t1 - t0
    run.latency_ms = percentiles(e2e)
    run.stages_ms = {k: percentiles(v) for k, v in stages.items()}
    # the worker's time per result outside invoke (pre, post, emit, waits): what keeps (c) from (a)
    overhead = (
        1000 / run.fps - run.stages_ms["invoke"]["p50"] if run.fps > 0 and not realtime else float("nan")
    )
    pipeline_stats = _stats_line(text, "pipeline bench stats: ")
    source_stats = _stats_line(text, "source camera stats: ")
    run.extra |= {
        "overhead_ms_per_result": overhead,
        "received": len(messages),
        "exit_code": proc.returncode,
        "stop_s": round(stop_s, 3),
        "rss_samples_mb": [(round(t, 1), round(r, 2)) for t, r in rss_samples],
        "realtime": realtime,
        "video": str(video),
        "config": str(config),
        "pipeline_stats": {
            k: pipeline_stats.get(k) for k in ("results", "dropped_frames", "errors", "fps_in", "fps_out")
        },
        "camera_stats": {k: source_stats.get(k) for k in ("frames", "dropped", "loops", "fps")},
    }
    errors = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
    if errors:
        run.extra["log_errors"] = errors[:5]
    return run
