"""End-to-end benchmark: the bare invoke loop, the naive loop a user would write, and edge-runtime.

    .venv/bin/python tools/bench.py [--models mobilenet,digits] [--threads 1,2] [--seconds S]
                                    [--short] [--json] [--soak MINUTES] [--workdir DIR]
                                    [--runs a,b,c,c'] [--repeat N] [--wait-idle S] [--daemon SCRIPT]

For each model and thread count, side by side, each run in a fresh process:

(a)  bare: ``Model(threads=N)`` invoked in a loop on a preloaded input: the limit.
(b)  naive: ``cv2.VideoCapture`` -> ``cv2.resize`` -> numpy quantize -> LiteRT invoke -> argmax ->
     ``json.dumps`` -> paho publish (QoS 1), one after the other, as a user would write it.
(c)  edge-runtime: ``python -m edge_runtime run`` on a 640x480 MJPG video (lock-step, as fast as
     the pipeline goes), publishing at QoS 1 through its SQLite outbox to a real mosquitto; fps and
     capture-to-subscriber latency are measured at a real subscriber in this process.
(c') edge-runtime with the camera capped at half the fps of (c) (a real-time video at that rate):
     the latency of a pipeline that is not saturated.

Columns: fps and the ratio to (a); latency p50/p95/p99 (a: invoke; b: one frame, read to publish;
c: capture to subscriber); per-stage medians; CPU % (100 = one core) and peak RSS of the measured
process; seconds from process start to the first result (a: first invoke; b, c: first message
at the subscriber). ``--json`` prints everything as JSON on stdout (the tables go to stderr).
``--short`` is the CI variant (about a minute). ``--soak MINUTES`` runs (c) that long instead of
the tables, sampling the daemon's RSS every 10 s, and reports its growth. On a shared machine,
``--wait-idle S --repeat N`` waits for quiet seconds and keeps the least disturbed of N runs (a
warning under a table names each row during which other processes used over 15 % of the CPU).
``--daemon SCRIPT`` runs (c) through a script that calls ``edge_runtime.cli.main()`` (to profile
it or to measure a change without editing the package). docs/performance.md has the figures.

Models: ``mobilenet`` (models/mobilenet_v2_int8.tflite), ``digits`` (the bundled digits CNN), or
any .tflite path; a 3-channel input gets MobileNet preprocessing (stretch, RGB, (x - 127.5) / 127.5),
a 1-channel input the digits one (centre crop, grey, x / 255). A missing model is skipped with a note.

Needs ``mosquitto`` on the PATH (``apt-get install mosquitto``). Runs only on loopback.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's devkit (dev-only, not in the wheel)

from devkit.broker import Mosquitto  # noqa: E402
from devkit.mqtt_client import Subscriber  # noqa: E402

MODEL_PATHS = {
    "mobilenet": REPO / "models" / "mobilenet_v2_int8.tflite",
    "digits": REPO / "edge_runtime" / "models" / "digits_int8.tflite",
}
VIDEO_VERSION = 1
VIDEO_SIZE = (640, 480)
VIDEO_FRAMES = 300
VIDEO_FPS = 30.0
CACHE = Path(tempfile.gettempdir()) / "edge-runtime-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHILD = "_child"
RESULT_PREFIX = "BENCH-RESULT "
DAEMON = ["-m", "edge_runtime"]  # how (c) starts the daemon: python DAEMON run --config ...; see --daemon
RING = 1 << 18  # invoke times kept by the bare loop (the last 262,144)

# targets of the issue (mobilenet_v2_int8 on a 2-core machine)
TARGET_FPS_RATIO = 0.9
TARGET_LATENCY_MARGIN_MS = 5.0
TARGET_RSS_MB = 120.0
TARGET_RSS_GROWTH_MB = 2.0
TARGET_FIRST_RESULT_S = 2.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- small measurements -----------------------------------------------------------------------------


def percentiles(values: Sequence[float] | npt.NDArray[np.float64]) -> dict[str, float]:
    """p50/p95/p99/mean/max of ``values`` (NaN when empty)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"p50": nan, "p95": nan, "p99": nan, "mean": nan, "max": nan, "n": 0}
    p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "mean": float(a.mean()),
        "max": float(a.max()),
        "n": int(a.size),
    }


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


# -- the test video ---------------------------------------------------------------------------------


def _scene(n: int, size: tuple[int, int]) -> Iterator[npt.NDArray[np.uint8]]:
    """A synthetic 'camera' scene: a textured background panning slowly, moving shapes, a counter."""
    import cv2

    w, h = size
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([80 + 60 * xx / w, 90 + 50 * yy / h, 120 + 40 * np.sin(xx / 70.0)], axis=-1)
    blobs = cv2.resize(
        rng.uniform(-40, 40, (12, 16, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    grain = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    background = np.clip(base + blobs + grain, 0, 255).astype(np.uint8)
    for k in range(40):  # "furniture": fixed rectangles with edges
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(
            background,
            (x, y),
            (x + int(rng.integers(20, 120)), y + int(rng.integers(20, 90))),
            color,
            -1 if k % 3 else 2,
        )
    for i in range(n):
        frame = np.roll(background, shift=(i * 2) % w, axis=1)
        t = i / n * 2 * math.pi
        cx, cy = int(w / 2 + w / 3 * math.cos(t)), int(h / 2 + h / 3 * math.sin(2 * t))
        cv2.circle(frame, (cx, cy), 45, (30, 30, 220), -1)
        cv2.circle(frame, (cx - 12, cy - 12), 12, (240, 240, 240), -1)
        bx = int((i * 7) % (w + 160)) - 80
        cv2.rectangle(frame, (bx, h - 150), (bx + 110, h - 60), (40, 180, 40), -1)
        cv2.putText(frame, f"frame {i:04d}", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
        yield frame


def make_video(fps: float = VIDEO_FPS, directory: Path = CACHE) -> Path:
    """The 640x480 MJPG test video at ``fps`` (container frame rate), generated once in ``directory``.

    The base video is encoded once (and cached under the temp dir); another frame rate is the
    same file with the rate fields of its AVI headers rewritten, which takes no time."""
    import cv2

    fps = round(fps, 1)
    w, h = VIDEO_SIZE
    path = directory / f"scene-v{VIDEO_VERSION}-{w}x{h}-{VIDEO_FRAMES}f-{fps:g}fps.avi"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.avi")
    if fps != VIDEO_FPS:
        data = bytearray(make_video(VIDEO_FPS).read_bytes())
        if _set_avi_rate(data, fps):
            tmp.write_bytes(data)
            capture = cv2.VideoCapture(str(tmp))
            ok = abs(float(capture.get(cv2.CAP_PROP_FPS)) - fps) < 0.05
            capture.release()
            if ok:
                os.replace(tmp, path)
                return path
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an MJPG video to {tmp}")
    for frame in _scene(VIDEO_FRAMES, VIDEO_SIZE):
        writer.write(frame)
    writer.release()
    os.replace(tmp, path)
    return path


def _set_avi_rate(data: bytearray, fps: float) -> bool:
    """Rewrite an AVI's frame rate: ``avih.dwMicroSecPerFrame`` and ``strh.dwScale/dwRate``."""
    avih, strh = data.find(b"avih", 0, 4096), data.find(b"strh", 0, 4096)
    if avih < 0 or strh < 0 or data[strh + 8 : strh + 12] != b"vids":
        return False
    data[avih + 8 : avih + 12] = round(1e6 / fps).to_bytes(4, "little")
    data[strh + 28 : strh + 32] = (10).to_bytes(4, "little")  # dwScale
    data[strh + 32 : strh + 36] = round(fps * 10).to_bytes(4, "little")  # dwRate
    return True


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
    return [sys.executable, str(Path(__file__).resolve()), CHILD, kind, json.dumps(params)]


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
"""
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
) -> Run:
    """``python -m edge_runtime run`` for warm-up + ``seconds``; measured at the subscriber."""
    config = pipeline_config(directory, tag, model, threads, channels, video, port, realtime)
    prefix = f"bench/{tag}/"
    run = Run(kind, latency_kind="capture to subscriber")
    log_path = directory / f"{tag}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, *DAEMON, "run", "--config", str(config), "--quiet"]
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


# -- the children (fresh processes) -----------------------------------------------------------------


def _emit_result(data: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(data), flush=True)


def child_bare(params: dict[str, Any]) -> dict[str, Any]:
    """(a): ``Model(threads=N)``, a preloaded random input, invoke in a loop for ``seconds``."""
    from edge_runtime.runtime.model import Model

    t_load = time.perf_counter()
    model = Model(params["model"], threads=params["threads"])
    load_ms = (time.perf_counter() - t_load) * 1000
    rng = np.random.default_rng(0)
    for spec in model.inputs:
        info = np.iinfo(np.dtype(spec.dtype))
        model.set_input(
            spec.position, rng.integers(info.min, info.max, spec.shape, dtype=spec.dtype, endpoint=True)
        )
    model.run()
    first_wall = time.time()
    end = time.perf_counter() + params["warmup_s"]
    while time.perf_counter() < end:
        model.run()
    run = model.run
    perf = time.perf_counter
    # the last RING invoke times, in a flat buffer: a list of a million floats would add 30 MB
    # to the RSS this run reports (the digits model does 50,000 invokes a second)
    times = array.array("d", bytes(8 * RING))
    count = 0
    cpu0, t0 = self_cpu_s(), perf()
    end = t0 + params["seconds"]
    now = t0
    while now < end:
        run()
        after = perf()
        times[count & (RING - 1)] = after - now
        count += 1
        now = after
    window = perf() - t0
    cpu = self_cpu_s() - cpu0
    spec = model.inputs[0]
    q = spec.quant
    kept = np.frombuffer(times, dtype=np.float64)[: min(count, RING)]
    return {
        "fps": count / window,
        "invokes": count,
        "window_s": window,
        "invoke_ms": percentiles(kept * 1000),
        "cpu_pct": cpu / window * 100,
        "peak_rss_mb": proc_status_mb("self", "VmHWM"),
        "rss_mb": proc_status_mb("self", "VmRSS"),
        "first_wall": first_wall,
        "load_ms": load_ms,
        "delegate": model.placement,
        "input": {
            "shape": list(spec.shape),
            "dtype": spec.dtype,
            "scale": q.scale[0] if q else None,
            "zero_point": q.zero_point[0] if q else None,
        },
    }


def child_naive(params: dict[str, Any]) -> dict[str, Any]:
    """(b): the loop a user would write, one step after the other."""
    import cv2
    import paho.mqtt.client as mqtt
    from ai_edge_litert.interpreter import Interpreter
    from paho.mqtt.enums import CallbackAPIVersion

    interpreter = Interpreter(model_path=params["model"], num_threads=params["threads"])
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    _, h, w, c = inp["shape"]
    scale, zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    dtype = inp["dtype"]
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"naive-{os.getpid()}")
    client.connect("127.0.0.1", params["port"])
    client.loop_start()
    topic = params["topic"]

    cap = cv2.VideoCapture(params["video"])
    seq = 0
    first_wall = 0.0
    perf = time.perf_counter
    rows: list[tuple[float, float, float, float, float]] = []  # read, pre, invoke, post, publish
    warm_end = perf() + params["warmup_s"]
    timed_start = end = cpu0 = 0.0
    timed_lo = 0
    info: Any = None
    while True:
        t0 = perf()
        ok, frame = cap.read()
        if not ok:  # end of the file: start again
            cap.release()
            cap = cv2.VideoCapture(params["video"])
            continue
        frame_ts = time.time()
        t1 = perf()
        image = cv2.resize(frame, (w, h))
        if c == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            x = image.astype(np.float32) / 127.5 - 1.0
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            x = (image.astype(np.float32) / 255.0)[..., None]
        q = np.clip(np.round(x / scale + zero), lo, hi).astype(dtype)
        interpreter.set_tensor(inp["index"], q[None])
        t2 = perf()
        interpreter.invoke()
        t3 = perf()
        scores = interpreter.get_tensor(out["index"])[0]
        best = int(np.argmax(scores))
        score = float((int(scores[best]) - out_zero) * out_scale)
        seq += 1
        payload = json.dumps(
            {
                "seq": seq,
                "frame_ts": frame_ts,
                "class": best,
                "score": score,
                "latency_ms": {"pre": (t2 - t1) * 1000, "invoke": (t3 - t2) * 1000},
            }
        )
        t4 = perf()
        info = client.publish(topic, payload, qos=1)
        t5 = perf()
        if seq == 1:
            first_wall = time.time()
        if not timed_lo:
            if t5 >= warm_end:
                timed_start, end, cpu0, timed_lo = t5, t5 + params["seconds"], self_cpu_s(), seq + 1
            continue
        rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4))
        if t5 >= end:
            break
    window = perf() - timed_start
    cpu = self_cpu_s() - cpu0
    with contextlib.suppress(Exception):
        info.wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()
    a = np.asarray(rows, dtype=np.float64) * 1000
    return {
        "fps": len(rows) / window,
        "frames": len(rows),
        "window_s": window,
        "frame_ms": percentiles(a.sum(axis=1)),
        "stages_ms": {
            "read": percentiles(a[:, 0]),
            "pre": percentiles(a[:, 1]),
            "invoke": percentiles(a[:, 2]),
            "post": percentiles(a[:, 3] + a[:, 4]),
            "publish": percentiles(a[:, 4]),
        },
        "cpu_pct": cpu / window * 100,
        "peak_rss_mb": proc_status_mb("self", "VmHWM"),
        "rss_mb": proc_status_mb("self", "VmRSS"),
        "first_wall": first_wall,
        "published": seq,
        "timed_seqs": [timed_lo, seq],
    }


def child_main(argv: Sequence[str]) -> int:
    kind, params = argv[0], json.loads(argv[1])
    if kind == "bare":
        _emit_result(child_bare(params))
    elif kind == "naive":
        _emit_result(child_naive(params))
    else:
        raise SystemExit(f"bench: unknown child {kind!r}")
    return 0


# -- the bench --------------------------------------------------------------------------------------


@dataclass
class Combo:
    model: str
    path: str
    threads: int
    runs: dict[str, Run] = field(default_factory=dict)
    half_fps: float = float("nan")
    note: str = ""


def resolve_models(names: Sequence[str]) -> list[tuple[str, Path]]:
    found = []
    for name in names:
        path = MODEL_PATHS.get(name, Path(name))
        label = name if name in MODEL_PATHS else path.stem
        if name in MODEL_PATHS and not path.is_absolute():
            path = REPO / path
        found.append((label, path))
    return found


def input_channels(path: Path) -> int:
    """Channels of the model's first input (3: MobileNet preprocessing, 1: digits)."""
    from edge_runtime.runtime.modelfile import read_model_file

    info, _ = read_model_file(path)
    return int(info.input_tensors[0].shape[-1])


def other_load(run: Run) -> float:
    """CPU % of the machine (100 = every core) not used by the measured process during ``run``."""
    return run.machine_busy_pct - run.cpu_pct / (os.cpu_count() or 1)


def bench_combo(
    label: str,
    path: Path,
    threads: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    broker: Mosquitto,
    sub: Subscriber,
    video: Path,
    idle_s: float = 0.0,
    repeat: int = 1,
    rows: frozenset[str] = frozenset(("a", "b", "c", "c'")),
) -> Combo:
    """(a), (b), (c), (c') for one model and thread count. With ``repeat`` > 1 each run is made
    that many times and the one least disturbed by the rest of the machine is kept (all are in
    ``extra["repeats"]``)."""
    combo = Combo(label, str(path), threads)
    tag = f"{label}-t{threads}"

    def measure(name: str, make: Callable[[int], Run]) -> Run:
        runs: list[Run] = []
        for i in range(repeat):
            waited, busy = wait_idle(idle_s)
            if idle_s > 0 and busy >= 10:
                log(f"{tag}: the machine is still {busy:.0f} % busy after {waited:.0f} s: running anyway")
            log(f"{tag}: {name}" + (f" ({i + 1}/{repeat})" if repeat > 1 else "") + " ...")
            run = make(i)
            run.extra.update(waited_idle_s=round(waited, 1), busy_before_pct=round(busy, 1))
            runs.append(run)
            if run.error:
                break
        good = [r for r in runs if not r.error]
        chosen = min(good, key=other_load) if good else runs[-1]
        if repeat > 1:
            chosen.extra["repeats"] = [
                {
                    "fps": r.fps,
                    "p99_ms": r.latency_ms.get("p99"),
                    "other_load_pct": other_load(r),
                    "error": r.error,
                }
                for r in runs
            ]
        p99 = chosen.latency_ms.get("p99", float("nan"))
        log(f"{tag}: {name}: {chosen.fps:.1f} fps, p99 {p99:.3f} ms {chosen.error}")
        return chosen

    if "a" in rows:
        bare = combo.runs["a"] = measure(
            "(a) bare invoke loop", lambda i: run_bare(path, threads, seconds, warmup_s)
        )
        if bare.error:
            combo.note = f"bare run failed: {bare.error}"
            return combo
    channels = input_channels(path)
    if "b" in rows:
        combo.runs["b"] = measure(
            "(b) naive loop",
            lambda i: run_naive(path, threads, seconds, warmup_s, video, broker.port, sub, f"{tag}-{i}"),
        )
    if not rows & {"c", "c'"}:
        return combo
    pipe = combo.runs["c"] = measure(
        "(c) edge-runtime",
        lambda i: run_pipeline(
            "edge-runtime",
            workdir,
            f"{tag}-{i}",
            path,
            threads,
            channels,
            video,
            False,
            seconds,
            warmup_s,
            broker.port,
            sub,
        ),
    )
    if pipe.error or not pipe.fps > 0 or "c'" not in rows:
        return combo
    combo.half_fps = round(pipe.fps / 2, 1)
    half_video = make_video(combo.half_fps, workdir)
    combo.runs["c'"] = measure(
        f"(c') edge-runtime at {combo.half_fps:g} fps",
        lambda i: run_pipeline(
            f"edge-runtime at {combo.half_fps:g} fps",
            workdir,
            f"{tag}-half-{i}",
            path,
            threads,
            channels,
            half_video,
            True,
            seconds,
            warmup_s,
            broker.port,
            sub,
        ),
    )
    return combo


# -- output ----------------------------------------------------------------------------------------


def _f(value: float, width: int, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def _ms(value: float, width: int = 8) -> str:
    digits = 3 if value < 1 else 2 if value < 100 else 1
    return _f(value, width, digits)


ROW_NAMES = {
    "a": "(a) bare invoke",
    "b": "(b) naive loop",
    "c": "(c) edge-runtime",
    "c'": "(c') edge-runtime",
}


def format_combo(combo: Combo) -> str:
    bare = combo.runs.get("a")
    title = f"{combo.model}, {combo.threads} thread{'s' if combo.threads > 1 else ''}"
    if bare is not None and not bare.error:
        shape = "x".join(str(d) for d in bare.extra["input"]["shape"][1:])
        title += f" ({shape} {bare.extra['input']['dtype']}; {bare.extra['delegate']})"
    lines = [title]
    if combo.note:
        lines.append(f"  {combo.note}")
        return "\n".join(lines)
    header = (
        f"  {'run':<27}{'fps':>8}{'x(a)':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'pre ms':>8}{'inv ms':>8}{'post ms':>8}{'CPU %':>7}{'RSS MB':>8}{'first s':>8}"
    )
    lines.append(header)
    base = bare.fps if bare is not None and not bare.error else float("nan")
    for key in ("a", "b", "c", "c'"):
        run = combo.runs.get(key)
        if run is None:
            continue
        name = ROW_NAMES[key] + (f" @{combo.half_fps:g}" if key == "c'" else "")
        if run.error:
            lines.append(f"  {name:<27}failed: {run.error[:150]}")
            continue
        lat = run.latency_ms
        stage = {k: v.get("p50", float("nan")) for k, v in run.stages_ms.items()}
        lines.append(
            f"  {name:<27}{_f(run.fps, 8, 1)}{_f(run.fps / base, 6, 2)}"
            f"{_ms(lat['p50'], 9)}{_ms(lat['p95'], 9)}{_ms(lat['p99'], 9)}"
            f"{_ms(stage.get('pre', float('nan')))}{_ms(stage.get('invoke', float('nan')))}"
            f"{_ms(stage.get('post', float('nan')))}"
            f"{_f(run.cpu_pct, 7, 0)}{_f(run.peak_rss_mb, 8, 1)}{_f(run.first_result_s, 8, 2)}"
        )
    for key, run in combo.runs.items():
        other = other_load(run)
        if not run.error and other > 15:
            lines.append(
                f"  warning: during {ROW_NAMES[key].split()[0]} the rest of the machine used {other:.0f} % "
                "of its CPU (broker, subscriber, other processes): that row is pessimistic"
            )
    b, c = combo.runs.get("b"), combo.runs.get("c")
    a_cpu = f"{bare.cpu_pct * 10 / bare.fps:.1f} ms" if bare is not None and not bare.error else "-"
    if b is not None and c is not None and not b.error and not c.error:
        lines.append(
            f"  (c) vs (b): {c.fps / b.fps:.2f}x the naive loop's fps; latency: a = invoke, "
            "b = read..publish of one frame, c = capture..subscriber"
        )
    if c is not None and not c.error:
        overhead = c.extra.get("overhead_ms_per_result", float("nan"))
        lines.append(
            f"  (c) worker time per result outside invoke (1000/fps - invoke p50): {overhead:.2f} ms; "
            f"CPU per result: {c.cpu_pct * 10 / c.fps:.1f} ms (a: {a_cpu})"
        )
        anon, files = c.extra.get("rss_anon_mb", float("nan")), c.extra.get("rss_file_mb", float("nan"))
        lines.append(
            f"  (c) RSS at the end {c.rss_mb:.1f} MB = own (anonymous) {anon:.1f} MB"
            f" + mapped files {files:.1f} MB"
        )
    return "\n".join(lines)


def evaluate(combos: Sequence[Combo]) -> list[dict[str, Any]]:
    """The issue's targets for every model measured (they are stated for mobilenet_v2_int8)."""
    checks: list[dict[str, Any]] = []

    def add(combo: Combo, name: str, value: float, limit: float, ok: bool, unit: str) -> None:
        checks.append(
            {
                "model": combo.model,
                "threads": combo.threads,
                "target": name,
                "value": None if math.isnan(value) else round(value, 3),
                "limit": round(limit, 3),
                "unit": unit,
                "met": bool(ok) and not math.isnan(value),
            }
        )

    for combo in combos:
        if "mobilenet" not in combo.model.lower():
            continue
        a, b, c, h = (combo.runs.get(k) for k in ("a", "b", "c", "c'"))
        if a is None or c is None or a.error or c.error:
            continue
        ratio = c.fps / a.fps
        add(combo, "fps (c) / (a)", ratio, TARGET_FPS_RATIO, ratio >= TARGET_FPS_RATIO, "x")
        if b is not None and not b.error:
            margin = c.fps / b.fps
            add(combo, "fps (c) / (b)", margin, 1.0, margin > 1.0, "x")
        if h is not None and not h.error:
            limit = a.latency_ms["p99"] + TARGET_LATENCY_MARGIN_MS
            p99 = h.latency_ms["p99"]
            add(combo, "p99 capture->subscriber (c')", p99, limit, p99 <= limit, "ms")
        steady = max(c.rss_mb, h.rss_mb if h is not None and not h.error else 0.0)
        add(combo, "steady RSS (c, c')", steady, TARGET_RSS_MB, steady <= TARGET_RSS_MB, "MB")
        add(combo, "peak RSS (c)", c.peak_rss_mb, TARGET_RSS_MB, c.peak_rss_mb <= TARGET_RSS_MB, "MB")
        add(
            combo,
            "start -> first result (c)",
            c.first_result_s,
            TARGET_FIRST_RESULT_S,
            c.first_result_s <= TARGET_FIRST_RESULT_S,
            "s",
        )
    return checks


def format_checks(checks: Sequence[dict[str, Any]]) -> str:
    lines = ["targets (mobilenet_v2_int8 on a 2-core machine):"]
    if not checks:
        lines.append("  not evaluated: no mobilenet run")
    for ch in checks:
        op = ">" if ch["target"].endswith("/ (b)") else ">=" if ch["unit"] == "x" else "<="
        value = "-" if ch["value"] is None else f"{ch['value']:g}"
        lines.append(
            f"  {ch['model']:<12} t{ch['threads']}  {ch['target']:<31} {value:>8} {ch['unit']:<2} "
            f"(target {op} {ch['limit']:g})  {'met' if ch['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def soak(
    label: str,
    path: Path,
    threads: int,
    minutes: float,
    workdir: Path,
    broker: Mosquitto,
    sub: Subscriber,
    video: Path,
) -> dict[str, Any]:
    """(c) for ``minutes``, RSS sampled every 10 s; growth after a warm-up of 1 minute (or 10 %)."""
    channels = input_channels(path)
    seconds = minutes * 60
    log(f"soak: {label}, {threads} thread{'s' if threads > 1 else ''}, {minutes:g} min of (c) ...")
    run = run_pipeline(
        "edge-runtime soak", workdir, f"soak-{label}-t{threads}", path, threads, channels, video, False,
        seconds, 0.0, broker.port, sub, sample_every_s=10.0,
    )  # fmt: skip
    samples = run.extra.get("rss_samples_mb", [])
    warm = min(60.0, seconds * 0.1)
    after = [(t, r) for t, r in samples if t >= warm]
    growth = slope = float("nan")
    if len(after) >= 2:
        growth = after[-1][1] - after[0][1]
        ts = np.asarray([t for t, _ in after])
        rs = np.asarray([r for _, r in after])
        slope = float(np.polyfit(ts, rs, 1)[0]) * 600  # MB per 10 minutes
    return {
        "model": label,
        "threads": threads,
        "minutes": minutes,
        "fps": run.fps,
        "latency_ms": run.latency_ms,
        "cpu_pct": run.cpu_pct,
        "peak_rss_mb": run.peak_rss_mb,
        "rss_start_mb": after[0][1] if after else float("nan"),
        "rss_end_mb": after[-1][1] if after else float("nan"),
        "rss_growth_mb": growth,
        "rss_slope_mb_per_10min": slope,
        "warmup_s": warm,
        "samples": samples,
        "error": run.error,
        "pipeline_stats": run.extra.get("pipeline_stats"),
    }


def format_soak(s: dict[str, Any]) -> str:
    if s["error"]:
        return f"soak {s['model']} t{s['threads']}: failed: {s['error']}"
    ok = s["rss_growth_mb"] < TARGET_RSS_GROWTH_MB and s["rss_end_mb"] <= TARGET_RSS_MB
    return "\n".join(
        [
            f"soak: {s['model']}, {s['threads']} thread{'s' if s['threads'] > 1 else ''}, "
            f"{s['minutes']:g} min of (c), RSS every 10 s",
            f"  fps {s['fps']:.1f}, capture->subscriber p50 {s['latency_ms']['p50']:.2f} "
            f"p99 {s['latency_ms']['p99']:.2f} ms, CPU {s['cpu_pct']:.0f} %, "
            f"peak RSS {s['peak_rss_mb']:.1f} MB",
            f"  RSS after {s['warmup_s']:.0f} s warm-up {s['rss_start_mb']:.1f} MB, at the end "
            f"{s['rss_end_mb']:.1f} MB: growth {s['rss_growth_mb']:+.2f} MB "
            f"(trend {s['rss_slope_mb_per_10min']:+.2f} MB / 10 min)",
            f"  target: steady RSS <= {TARGET_RSS_MB:g} MB, growth < {TARGET_RSS_GROWTH_MB:g} MB / 10 min: "
            f"{'met' if ok else 'MISSED'}",
        ]
    )


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == CHILD:
        return child_main(args_list[1:])
    parser = argparse.ArgumentParser(
        prog="tools/bench.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", default="mobilenet,digits", help="mobilenet, digits or .tflite paths (comma-separated)"
    )
    parser.add_argument("--threads", default="1,2", help="thread counts (comma-separated)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per run (default 20; --short: 2)"
    )
    parser.add_argument(
        "--short", action="store_true", help="CI: digits and mobilenet, threads 1 and 2, about a minute"
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the tables go to stderr)")
    parser.add_argument(
        "--soak", type=float, default=None, metavar="MINUTES", help="run (c) this long, report RSS growth"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep configs and daemon logs here")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle (shared machines)",
    )
    parser.add_argument(
        "--daemon",
        default=None,
        metavar="SCRIPT",
        help="run (c) as 'python SCRIPT run --config ...' instead of 'python -m edge_runtime run ...': "
        "a script that calls edge_runtime.cli.main(), to profile the daemon or try a change",
    )
    parser.add_argument(
        "--runs",
        default="a,b,c,c'",
        help="which rows to run (comma-separated from a, b, c, c'; c' needs c, which it runs)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="make each run N times and keep the one least disturbed by other processes",
    )
    args = parser.parse_args(args_list)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # cleanup runs
    if args.daemon:
        DAEMON[:] = [str(Path(args.daemon).resolve())]
    seconds = args.seconds if args.seconds is not None else (2.0 if args.short else 20.0)
    warmup_s = 0.3 if args.short else 1.0
    models = resolve_models(_csv(args.models))
    try:
        threads = [int(t) for t in _csv(args.threads)]
    except ValueError:
        parser.error(f"--threads: not a list of integers: {args.threads!r}")
    if not models or not threads or min(threads) < 1:
        parser.error("give at least one model and thread counts >= 1")
    rows = frozenset(_csv(args.runs))
    if not rows or not rows <= {"a", "b", "c", "c'"}:
        parser.error(f"--runs: expected some of a, b, c, c', got {args.runs!r}")

    report: dict[str, Any] = {
        "machine": machine(),
        "seconds": seconds,
        "short": args.short,
        "repeat": args.repeat,
        "daemon": [Path(sys.executable).name, *DAEMON],
        "combos": [],
    }
    notes: list[str] = []
    available = []
    for label, path in models:
        if path.is_file():
            available.append((label, path))
        else:
            notes.append(f"{label}: {path} not found: skipped (tools/build_models.py builds it)")
    for note in notes:
        log(f"note: {note}")
    if not available:
        log("bench: no model to run")
        return 1
    log("bench: preparing the 640x480 test video ...")
    video = make_video()
    _, busy = wait_idle(args.wait_idle)
    report["busy_before_pct"] = busy
    if busy > 10:
        notes.append(
            f"the machine was {busy:.0f} % busy before the bench started (other processes): "
            "figures are lower than on an idle machine"
        )
        log(f"note: {notes[-1]}")
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-bench-")))
        broker = stack.enter_context(Mosquitto(workdir, extra_config="max_queued_messages 100000"))
        sub = stack.enter_context(
            Subscriber(
                broker.host,
                broker.port,
                ["bench/+/pipelines/+/results", "naive/+/results"],
                client_id="bench-subscriber",
                keepalive=60,
            )
        )
        report["video"] = {
            "path": str(video),
            "size": list(VIDEO_SIZE),
            "frames": VIDEO_FRAMES,
            "codec": "MJPG",
        }
        out = sys.stderr if args.json else sys.stdout
        if args.soak is not None:
            label, path = available[0]
            result = soak(label, path, threads[0], args.soak, workdir, broker, sub, video)
            report["soak"] = result
            print(format_soak(result), file=out, flush=True)
        else:
            started = time.monotonic()
            combos = []
            for label, path in available:
                for n in threads:
                    combo = bench_combo(
                        label, path, n, seconds, warmup_s, workdir, broker, sub, video, args.wait_idle,
                        max(1, args.repeat), rows,
                    )  # fmt: skip
                    combos.append(combo)
            report["combos"] = [
                {
                    "model": c.model,
                    "path": c.path,
                    "threads": c.threads,
                    "half_fps": c.half_fps,
                    "note": c.note,
                    "runs": {
                        k: {**asdict(r), "cpu_ms_per_result": r.cpu_pct * 10 / r.fps if r.fps > 0 else None}
                        for k, r in c.runs.items()
                    },
                }
                for c in combos
            ]
            checks = evaluate(combos)
            report["targets"] = checks
            report["elapsed_s"] = round(time.monotonic() - started, 1)
            m = report["machine"]
            print(
                f"edge-runtime bench, {m['date']}, {m['cpus']} x {m['cpu_model']}, {m['memory_gb']} GB, "
                f"{seconds:g} s per run, video {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} MJPG, mosquitto QoS 1",
                file=out,
            )
            for combo in combos:
                print("", file=out)
                print(format_combo(combo), file=out)
            print("", file=out)
            print(format_checks(checks), file=out)
            for note in notes:
                print(f"note: {note}", file=out)
            print(f"total {report['elapsed_s']:g} s", file=out, flush=True)
        report["notes"] = notes
    if args.json:
        print(json.dumps(_finite(report), indent=2, default=str, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
