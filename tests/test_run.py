"""`edge-runtime run` end to end: real video files, real ptys, the real bundled models."""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.accuracy import floor
from devkit.paths import MODELS
from devkit.processes import socat_pair, stop_process, wait_until
from edge_runtime.demo import write_digits_video
from edge_runtime.synthetic import SAMPLE_RATE_HZ, vibration_samples

pytestmark = pytest.mark.backend

DIGITS = f"""
[[pipelines.models]]
path = "{MODELS}/digits_int8.tflite"
inputs = [{{ kind = "image", source = "camera", resize = "crop", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", labels = "{MODELS}/digits_labels.txt", top_k = 1 }}
"""

FUSED = f"""
[[pipelines.models]]
path = "{MODELS}/fused_int8.tflite"
[[pipelines.models.inputs]]
kind = "image"
source = "camera"
input = "image"
resize = "crop"
color = "gray"
std = 255.0
[[pipelines.models.inputs]]
kind = "window"
source = "vib"
input = "vibration"
channels = ["ax", "ay", "az"]
window_s = 0.64
samples = 64
[pipelines.models.postprocess.state]
type = "classification"
output = 0
labels = "{MODELS}/fused_state_labels.txt"
top_k = 1
[pipelines.models.postprocess.digit]
type = "classification"
output = 1
labels = "{MODELS}/digits_labels.txt"
top_k = 1
"""


def heldout(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        images, labels = data["images"], data["labels"]
    return (images, labels) if n is None else (images[:n], labels[:n])


def run_cli(config: Path, *args: str, timeout: float = 120) -> tuple[list[dict[str, Any]], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    backend = os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "auto")
    cmd = [
        sys.executable,
        "-m",
        "edge_runtime",
        "run",
        "--config",
        str(config),
        "--set",
        f"runtime.backend={backend}",
    ]
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def stats_from_log(log: str, kind: str, name: str) -> dict[str, Any]:
    marker = f"{kind} {name} stats: "
    for line in log.splitlines():
        if marker in line:
            data: dict[str, Any] = json.loads(line.split(marker, 1)[1])
            return data
    raise AssertionError(f"no '{marker}' line in the log:\n{log[-2000:]}")


def test_digits_video_every_frame_accounted_for_and_classified(tmp_path: Path) -> None:
    images, labels = heldout()
    assert len(images) >= 300
    video = tmp_path / "digits.avi"
    write_digits_video(video, list(images), fps=30.0)
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[device]
state_dir = "{tmp_path / "state"}"
[sources.camera]
type = "camera"
uri = "digits.avi"
realtime = false
[[pipelines]]
name = "digits"
trigger = "camera"
{DIGITS}"""
    )
    results, log = run_cli(config)
    frames = [r["trigger"]["seq"] for r in results]
    assert frames == list(range(1, len(images) + 1)), "every frame once, in order"
    assert [r["seq"] for r in results] == list(range(1, len(images) + 1))
    predicted = np.array([int(r["result"]["top"][0]["label"]) for r in results])
    accuracy = float(np.mean(predicted == labels))
    # the video is the manifest's MJPG round trip of the same held-out digits
    assert accuracy >= floor("digits", "int8_mjpg_roundtrip"), accuracy
    stats = stats_from_log(log, "pipeline", "digits")
    assert stats["results"] == len(images) and stats["dropped_frames"] == 0
    camera = stats_from_log(log, "source", "camera")
    assert camera["frames"] == len(images) and camera["dropped"] == 0


def test_realtime_camera_drops_are_counted_not_lost(tmp_path: Path) -> None:
    images, _ = heldout(120)
    video = tmp_path / "digits.avi"
    write_digits_video(video, list(images), fps=60.0)
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[device]
state_dir = "{tmp_path / "state"}"
[sources.camera]
type = "camera"
uri = "{video}"
realtime = true
[[pipelines]]
name = "digits"
trigger = {{ source = "camera", min_interval_s = 0.05 }}
{DIGITS}"""
    )
    results, log = run_cli(config)
    stats = stats_from_log(log, "pipeline", "digits")
    seen = [r["trigger"]["seq"] for r in results]
    assert len(set(seen)) == len(seen), "no frame twice"
    assert 0 < len(results) < len(images)
    assert stats["results"] == len(results)
    assert stats["rate_limited"] > 0
    # every frame is a result, rate limited, stale, failed, or counted as dropped
    assert stats["triggers"] == stats["results"] + stats["skipped_stale"] + stats["errors"]
    assert stats["triggers"] + stats["rate_limited"] + stats["dropped_frames"] == len(images)


def fused_config(tmp_path: Path, serial_port: Path | str, runtime: str = "") -> Path:
    """run.toml: the fused model on a looping ``digits.avi`` (camera-triggered, real time) and a
    3-axis CSV serial source on ``serial_port``; ``runtime`` adds lines to ``[runtime]``."""
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[device]
state_dir = "{tmp_path / "state"}"
[runtime]
{runtime}
[sources.camera]
type = "camera"
uri = "digits.avi"
realtime = true
loop = true
[sources.vib]
type = "serial"
port = "{serial_port}"
format = "csv"
fields = ["ax", "ay", "az"]
[[pipelines]]
name = "machine"
trigger = "camera"
{FUSED}"""
    )
    return config


class VibrationWriter:
    """Writes 3-axis samples as CSV lines at 100 Hz into a pty, following a state schedule, with a
    share of garbled lines mixed in; records the wall time of every state change."""

    def __init__(self, port: Path, schedule: list[tuple[float, str]], garbage: float = 0.1) -> None:
        self.port = port
        self.schedule = schedule
        self.garbage = garbage
        self.changes: list[tuple[float, str]] = []
        self.garbled = 0
        self.written = 0
        self.times: list[float] = []
        """Wall time after each good line was written."""
        self.garbled_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        rng = np.random.default_rng(3)
        rand = random.Random(3)
        garbage = [b"ax,ay\n", b"1.0,abc,2.0\n", b"\xff\xfe\xfd,1,2\n", b"0.1,0.2,0.3,0.4\n", b",,\n"]
        fd = os.open(self.port, os.O_WRONLY | os.O_NOCTTY)
        try:
            start = time.time()
            state = ""
            block: np.ndarray = np.zeros((0, 3))
            i = 0
            t_next = start
            while not self._stop.is_set():
                now = time.time()
                elapsed = now - start
                want = state
                for t_change, s in self.schedule:
                    if elapsed >= t_change:
                        want = s
                if want != state:
                    state = want
                    self.changes.append((now, state))
                    block = vibration_samples(state, 6000, rng, SAMPLE_RATE_HZ)
                    i = 0
                row = block[i % len(block)]
                i += 1
                if rand.random() < self.garbage:
                    os.write(fd, rand.choice(garbage))
                    self.garbled += 1
                    self.garbled_times.append(time.time())
                os.write(fd, f"{row[0]:.4f},{row[1]:.4f},{row[2]:.4f}\n".encode())
                self.written += 1
                self.times.append(time.time())
                t_next += 1 / SAMPLE_RATE_HZ
                delay = t_next - time.time()
                if delay > 0:
                    time.sleep(delay)
        finally:
            os.close(fd)

    def state_at(self, wall: float) -> tuple[str, float]:
        """The state written at ``wall`` and the seconds since it began."""
        current, since = "", float("-inf")
        for t, s in self.changes:
            if t <= wall:
                current, since = s, t
        return current, wall - since


def collect(proc: subprocess.Popen[str], lines: list[dict[str, Any]]) -> threading.Thread:
    """Read the daemon's JSON lines into ``lines`` on a thread."""
    stream = proc.stdout
    assert stream is not None

    def read() -> None:
        lines.extend(json.loads(line) for line in stream)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@contextmanager
def daemon(config: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    backend = os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "auto")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "run",
            "--config",
            str(config),
            "--set",
            f"runtime.backend={backend}",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def log_time(log: str, text: str) -> float:
    """The wall time (epoch s) of the first log line containing ``text`` (``%(asctime)s``: local
    time, millisecond resolution)."""
    for line in log.splitlines():
        if text in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no {text!r} in the log:\n{log[-2000:]}")


def test_fused_state_follows_the_serial_stream_with_garbage_mixed_in(tmp_path: Path) -> None:
    images, _ = heldout(150)
    write_digits_video(tmp_path / "digits.avi", list(images), fps=10.0)
    schedule = [(0.0, "idle"), (4.0, "running"), (8.0, "fault"), (12.0, "idle")]
    with socat_pair(tmp_path) as pair:
        writer = VibrationWriter(pair.a, schedule)
        config = fused_config(tmp_path, pair.b)
        writer.start()
        try:
            results, log = run_cli(config, "--duration", "15")
        finally:
            writer.stop()
    assert len(results) > 60
    judged = 0
    correct = 0
    for r in results:
        expected, since = writer.state_at(r["frame_ts"])
        if since < 0.64 + 0.25:  # within one window (plus serial latency) of a change: ambiguous
            continue
        judged += 1
        correct += r["result"]["state"]["top"][0]["label"] == expected
    assert judged >= 50
    assert correct / judged >= 0.9, (correct, judged)
    states_seen = {r["result"]["state"]["top"][0]["label"] for r in results}
    assert states_seen == {"idle", "running", "fault"}
    # The writer runs before the daemon opened the port and after it closed it (start-up and
    # shutdown take seconds on a loaded machine: 1491 of 1710 lines were once read, all of them
    # written while the port was open). Compared with what was written while the source was up,
    # minus 0.1 s at either end for the pty's latency, no line is lost and each garbled one counted.
    up, stopped = log_time(log, "source vib is up"), log_time(log, "source vib is stopped")
    assert stopped - up >= 10.0, (up, stopped)
    while_open = sum(up + 0.1 < t < stopped - 0.1 for t in writer.times)
    garbled_while_open = sum(up + 0.1 < t < stopped - 0.1 for t in writer.garbled_times)
    source = stats_from_log(log, "source", "vib")
    assert source["lines"] >= while_open, (source["lines"], while_open, writer.written)
    assert source["parse_errors_total"] >= garbled_while_open, (source, garbled_while_open)


def test_serial_unplugged_and_back_results_resume(tmp_path: Path) -> None:
    images, _ = heldout(40)
    write_digits_video(tmp_path / "digits.avi", list(images), fps=10.0)
    with socat_pair(tmp_path) as pair:
        config = tmp_path / "run.toml"
        config.write_text(
            f"""
[device]
state_dir = "{tmp_path / "state"}"
[sources.camera]
type = "camera"
uri = "digits.avi"
loop = true
[sources.vib]
type = "serial"
port = "{pair.b}"
format = "csv"
fields = ["ax", "ay", "az"]
reconnect = {{ initial_s = 0.2, max_s = 1.0 }}
[[pipelines]]
name = "machine"
trigger = {{ source = "vib", min_interval_s = 0.1 }}
{FUSED}"""
        )
        writer = VibrationWriter(pair.a, [(0.0, "running")], garbage=0.0)
        writer.start()
        lines: list[dict[str, Any]] = []
        with daemon(config) as proc:
            assert proc.stdout is not None
            reader = collect(proc, lines)
            assert wait_until(lambda: len(lines) >= 5, 30), "no results before the unplug"
            writer.stop()
            pair.kill()
            unplugged = time.time()
            time.sleep(2.0)
            pair.start()
            writer = VibrationWriter(pair.a, [(0.0, "running")], garbage=0.0)
            writer.start()
            assert wait_until(lambda: any(r["frame_ts"] > unplugged + 2.0 for r in lines), 30), (
                "no results after replug"
            )
            writer.stop()
            stop_process(proc)  # type: ignore[arg-type]
            reader.join(5)
            log = proc.stderr.read() if proc.stderr else ""
    stats = stats_from_log(log, "source", "vib")
    assert stats["reconnects"] >= 1
    seqs = [r["seq"] for r in lines]
    assert seqs == list(range(1, len(seqs) + 1))


def test_camera_file_disappears_and_comes_back(tmp_path: Path) -> None:
    images, _ = heldout(10)
    video = tmp_path / "digits.avi"
    write_digits_video(video, list(images), fps=20.0)
    spare = tmp_path / "spare.avi"
    spare.write_bytes(video.read_bytes())
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[device]
state_dir = "{tmp_path / "state"}"
[sources.camera]
type = "camera"
uri = "digits.avi"
realtime = true
loop = true
reconnect = {{ initial_s = 0.2, max_s = 0.5 }}
[[pipelines]]
name = "digits"
trigger = "camera"
{DIGITS}"""
    )
    lines: list[dict[str, Any]] = []
    with daemon(config) as proc:
        reader = collect(proc, lines)
        assert wait_until(lambda: len(lines) >= 5, 30)
        video.unlink()
        gone = time.time()
        time.sleep(2.0)
        during = [r for r in lines if r["frame_ts"] > gone + 1.0]
        spare.rename(video)
        back = time.time()
        assert wait_until(lambda: any(r["frame_ts"] > back for r in lines), 30), (
            "no frames after the file came back"
        )
        stop_process(proc)  # type: ignore[arg-type]
        reader.join(5)
        log = proc.stderr.read() if proc.stderr else ""
    assert not during, "results while the file was gone"
    stats = stats_from_log(log, "source", "camera")
    assert stats["reconnects"] >= 1
