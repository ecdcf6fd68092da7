"""Fault injection with real components: a real mosquitto that restarts, a daemon killed with
SIGKILL at random moments, a camera file turned into garbage, a stalled HTTP camera, a model file
deleted under the daemon, a full disk under the outbox (a real tmpfs) and a wall-clock jump
(libfaketime). Serial ports that vanish and camera files that disappear are covered by
``test_run.py`` and ``test_source_*.py``; fuzzing by ``test_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_run import VibrationWriter, fused_config, heldout

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.media import mjpeg_server
from devkit.mqtt_client import Subscriber
from devkit.mqtt_types import Received
from devkit.paths import MODELS
from devkit.processes import free_port, require_tool, socat_pair, wait_until
from edge_runtime.demo import write_digits_video

pytestmark = pytest.mark.fault

RESULTS = "edge/+/pipelines/+/results"  # matched against what a subscriber of one device received
UNLIMITED_QUEUE = "max_queued_messages 0\n"  # a persistent subscriber's backlog is never cut by the broker


# ----------------------------------------------------------------------------------------- helpers


def received(sub: Subscriber) -> dict[int, list[dict[str, Any]]]:
    """seq -> every copy of that result the subscriber got (delivery is at least once)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for result in sub.json(RESULTS):
        out.setdefault(int(result["seq"]), []).append(result)
    return out


def seq_set(sub: Subscriber) -> set[int]:
    return {int(r["seq"]) for r in sub.json(RESULTS)}


def outbox_results(state: Path) -> tuple[dict[int, dict[str, Any]], int]:
    """The results waiting in the outbox database (seq -> result) and the stored last seq."""
    with contextlib.closing(sqlite3.connect(state / "outbox.sqlite")) as conn:
        rows = conn.execute("SELECT topic, payload FROM messages").fetchall()
        row = conn.execute("SELECT seq FROM seqs WHERE pipeline = 'digits'").fetchone()
    stored = {}
    for topic, payload in rows:
        if topic.endswith("/results"):
            result = json.loads(payload)
            stored[int(result["seq"])] = result
    return stored, int(row[0]) if row else 0


def beyond(sub: Subscriber, seq: int) -> Callable[[list[Received]], bool]:
    """A ``wait_for`` predicate: the subscriber got a result with a seq above ``seq``."""
    return lambda messages: max(seq_set(sub), default=0) > seq


def healths(sub: Subscriber) -> list[dict[str, Any]]:
    return sub.json("edge/+/health")


def kinds(sub: Subscriber) -> list[str]:
    """The kinds of the events received so far, in order."""
    return [str(e["kind"]) for e in sub.json("edge/+/events")]


def source_states(sub: Subscriber, source: str) -> list[str]:
    """The states of ``source`` in the health reports so far, in order."""
    return [h["sources"][source]["state"] for h in healths(sub)]


def later(items: list[str], first: str, then: str) -> bool:
    """Whether ``then`` occurs in ``items`` at or after the first ``first``."""
    return first in items and then in items[items.index(first) :]


def down_then_up(sub: Subscriber, source: str) -> bool:
    return later(source_states(sub, source), "down", "up")


def full_rate(config: Path) -> Path:
    """The looping video read as fast as the pipeline takes frames (every frame, no pacing)."""
    config.write_text(config.read_text().replace("realtime = true", "realtime = false"))
    return config


def fast_camera_reconnect(config: Path) -> Path:
    text = config.read_text().replace(
        "loop = true\n", "loop = true\nreconnect = { initial_s = 0.2, max_s = 0.5 }\n"
    )
    config.write_text(text)
    return config


@pytest.fixture
def device() -> str:
    """A device id of this test alone: the suite may run next to others on the same host, where a
    daemon of another test (all default to dev1) that lost its broker could reconnect to this
    test's broker once it reuses the port, and would then share topics and client id with it."""
    return f"fault-{uuid.uuid4().hex[:10]}"


def topic(device: str, rest: str) -> str:
    return f"edge/{device}/{rest}"


def count_after(daemon: Daemon, n: int, timeout: float = 30.0) -> bool:
    return wait_until(lambda: daemon.count() >= n, timeout, 0.05)


# ------------------------------------------------------------------------------- broker restarts


def test_five_broker_restarts_lose_no_result(
    tmp_path: Path, make_broker: Callable[..., Mosquitto], device: str
) -> None:
    broker = make_broker(persistence=True, extra_config=UNLIMITED_QUEUE)
    config = digits_config(tmp_path, port=broker.port, device=device)
    rng = random.Random(5)
    results = topic(device, "pipelines/+/results")
    with Subscriber(broker.host, broker.port, [results], client_id="restarts-sub", persistent=True) as sub:
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: len(ms) >= 10, 30), daemon.log()
            for restart in range(5):
                connections = sub.connections
                printed = daemon.count()
                broker.stop()  # a clean stop: mosquitto saves the subscriber's session
                time.sleep(rng.uniform(0.3, 1.5))  # results pile up in the outbox meanwhile
                broker.start()
                assert sub.wait_ready(30, after=connections), f"subscriber not back after restart {restart}"
                # the daemon reconnected and forwards what it printed during the outage, and more
                assert sub.wait_for(beyond(sub, printed + 5), 30), (
                    f"no results after restart {restart}",
                    daemon.log()[-3000:],
                )
            assert daemon.stop() == 0
        log = daemon.log()
        last = stats_line(log, "pipeline", "digits")["results"]
        assert last == daemon.count() > 50
        assert sub.wait_for(lambda ms: seq_set(sub) >= set(range(1, last + 1)), 30)
        got = seq_set(sub)
        missing = sorted(set(range(1, last + 1)) - got)
        assert not missing, f"{len(missing)} results never arrived: {missing[:20]}"
        assert got == set(range(1, last + 1))
    for seq, copies in received(sub).items():
        assert all(c == copies[0] for c in copies), f"seq {seq} delivered with different contents"
    mqtt = stats_line(log, "reporting", "mqtt")
    # exactly one connect per broker (re)start, as the README promises: no connection flapping
    assert mqtt["connects"] == 6, mqtt  # the first connection and one after each of 5 restarts
    assert stats_line(log, "reporting", "outbox")["dropped"] == 0


# -------------------------------------------------------------------------------------- kill -9


def test_kill_9_at_random_moments_with_and_without_a_broker_loses_nothing(
    tmp_path: Path, make_broker: Callable[..., Mosquitto], device: str
) -> None:
    """Every result the daemon printed was in the outbox first: none is lost by a SIGKILL, with
    the broker up or down; seq goes on counting from the stored one, never reused."""
    rng = random.Random(1729)
    broker = make_broker(persistence=True, extra_config=UNLIMITED_QUEUE)
    config = digits_config(tmp_path, port=broker.port, device=device)
    state = tmp_path / f"state-{device}"
    printed: dict[int, dict[str, Any]] = {}
    kills: list[str] = []
    results = topic(device, "pipelines/+/results")
    with Subscriber(broker.host, broker.port, [results], client_id="kill9-sub", persistent=True) as sub:
        connections = sub.connections
        for run in range(5):
            broker_up = run % 2 == 0
            if broker_up and not broker.running:
                connections = sub.connections
                broker.start()
            elif not broker_up and broker.running:
                broker.stop()
            stored_before = outbox_results(state)[1] if (state / "outbox.sqlite").exists() else 0
            with Daemon(config) as daemon:
                assert count_after(daemon, 1), daemon.log()
                delay = rng.uniform(0.0, 2.5)
                time.sleep(delay)
                daemon.kill9()
            seqs = [int(r["seq"]) for r in daemon.results]
            kills.append(
                f"run {run}: broker {'up' if broker_up else 'down'}, kill after {delay:.2f} s, {seqs}"
            )
            assert seqs == list(range(stored_before + 1, stored_before + 1 + len(seqs))), (
                "seq must go on from the stored one",
                stored_before,
                seqs[:5],
            )
            for result in daemon.results:
                seq = int(result["seq"])
                assert seq not in printed, f"seq {seq} printed twice"
                printed[seq] = result
            stored, last_stored = outbox_results(state)
            assert last_stored >= max(seqs), "a printed seq was not stored (the outbox comes first)"
            if not broker_up:  # nothing can have been acknowledged: every printed result is in the outbox
                missing = sorted(set(seqs) - set(stored))
                assert not missing, f"printed but not in the outbox after kill -9: {missing}"
            for seq, result in stored.items():
                if seq in printed:
                    assert result == printed[seq], f"seq {seq}: outbox content differs from the printed one"
        # the broker is back: one clean run drains everything the killed runs left behind
        if not broker.running:
            connections = sub.connections
            broker.start()
        assert sub.wait_ready(30, after=connections), "the subscriber did not reconnect"
        with Daemon(config) as daemon:
            assert count_after(daemon, 5), daemon.log()
            assert sub.wait_for(lambda ms: set(printed) <= seq_set(sub), 60), (
                sorted(set(printed) - seq_set(sub))[:20],
                kills,
            )
            assert daemon.stop() == 0
        final = [int(r["seq"]) for r in daemon.results]
        assert final and final[0] > max(printed)
        for result in daemon.results:
            printed[int(result["seq"])] = result
        last = max(final)
        assert sub.wait_for(lambda ms: seq_set(sub) >= set(range(1, last + 1)), 30)
    got = received(sub)
    assert set(got) == set(range(1, last + 1)), (sorted(set(range(1, last + 1)) - set(got))[:20], kills)
    for seq, copies in got.items():
        assert all(c == copies[0] for c in copies), f"seq {seq} was used for different contents"
        if seq in printed:
            assert copies[0] == printed[seq], f"seq {seq}: delivered content differs from the printed one"
    assert stats_line(daemon.log(), "reporting", "outbox")["depth"] == 0


# -------------------------------------------------------------------------------------- cameras


def test_camera_file_replaced_with_garbage_goes_down_and_comes_back(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    config = fast_camera_reconnect(digits_config(tmp_path, port=broker.port, device=device))
    video = tmp_path / "digits.avi"
    good = video.read_bytes()
    topics = [topic(device, "health"), topic(device, "events")]
    with Subscriber(broker.host, broker.port, topics) as sub, Daemon(config) as daemon:
        assert count_after(daemon, 10), daemon.log()
        spare = tmp_path / "garbage.part"
        spare.write_bytes(random.Random(7).randbytes(len(good)))
        os.replace(spare, video)  # the looping capture reopens it at the end of the pass
        assert sub.wait_for(lambda ms: "down" in source_states(sub, "camera"), 30), daemon.log()[-3000:]
        down = next(h for h in healths(sub) if h["sources"]["camera"]["state"] == "down")
        assert any("source camera is down" in p for p in down["problems"]), down["problems"]
        assert str(video) in down["sources"]["camera"]["last_error"]
        during = daemon.count()
        assert daemon.proc.poll() is None, "the daemon died on a garbage video file"
        spare.write_bytes(good)
        os.replace(spare, video)
        assert count_after(daemon, during + 10), daemon.log()[-3000:]
        assert sub.wait_for(lambda ms: down_then_up(sub, "camera"), 20)
        assert sub.wait_for(lambda ms: later(kinds(sub), "source.down", "source.up"), 20)
        assert daemon.stop() == 0
    log = daemon.log()
    assert stats_line(log, "source", "camera")["reconnects"] >= 1
    assert "Traceback" not in log
    seqs = [r["seq"] for r in daemon.results]
    assert seqs == list(range(1, len(seqs) + 1)), "seq continues through the outage"
    # no result from the garbage file: no frame was captured while the source was down. The
    # source reports "down" after its last good read and "up" before its next one (one thread, in
    # that order), so every result's frame time lies outside each (down, up) interval of events.
    events = [m.json() for m in sub.messages(topic(device, "events"))]
    changes = [(e["kind"], e["ts"]) for e in events if e["kind"] in ("source.down", "source.up")]
    outages = [
        (t0, t1)
        for (k0, t0), (k1, t1) in itertools.pairwise(changes)
        if (k0, k1) == ("source.down", "source.up")
    ]
    assert outages, changes
    inside = [r["seq"] for r in daemon.results for t0, t1 in outages if t0 < r["frame_ts"] < t1]
    assert not inside, f"results from frames captured while the camera was down: {inside[:10]}"


def test_a_stalled_camera_stream_is_reported_down_and_recovers(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    with mjpeg_server(tmp_path) as camera:
        stream = (
            f'\n[sources.stream]\ntype = "camera"\nuri = "{camera.url}"\nstall_timeout_s = 2.0\n'
            "reconnect = { initial_s = 0.2, max_s = 1.0 }\n"
        )
        config = digits_config(tmp_path, port=broker.port, device=device, extra=stream)
        text = config.read_text().replace('trigger = "camera"', 'trigger = "stream"')
        config.write_text(text.replace('source = "camera"', 'source = "stream"'))
        health = topic(device, "health")
        with Subscriber(broker.host, broker.port, [health]) as sub, Daemon(config) as daemon:
            assert count_after(daemon, 5, 40), (daemon.log()[-3000:], camera.log_text())
            camera.pause()  # the connection stays open, no frame comes
            paused = time.monotonic()
            assert sub.wait_for(lambda ms: "down" in source_states(sub, "stream"), 30), daemon.log()[-3000:]
            assert time.monotonic() - paused >= 1.5, "down before the stall timeout"
            report = next(h for h in healths(sub) if h["sources"]["stream"]["state"] == "down")
            assert report["state"] == "degraded"
            assert any("source stream is down" in p and "stalled" in p for p in report["problems"]), report
            assert daemon.proc.poll() is None
            stalled = daemon.count()
            camera.kill()  # ffmpeg serves one client: a new one for the reconnect
            camera.start()
            assert count_after(daemon, stalled + 5, 40), (daemon.log()[-3000:], camera.log_text())
            assert sub.wait_for(lambda ms: down_then_up(sub, "stream"), 20)
            assert daemon.stop() == 0
    log = daemon.log()
    assert stats_line(log, "source", "stream")["reconnects"] >= 1
    assert "Traceback" not in log


# ----------------------------------------------------------------------------------------- models


def model_copy_config(tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "served.tflite"
    shutil.copyfile(MODELS / "digits_int8.tflite", copy)
    config = digits_config(tmp_path, port=None)
    config.write_text(config.read_text().replace(f"{MODELS}/digits_int8.tflite", str(copy)))
    return config, copy


def test_model_file_deleted_under_a_running_daemon(tmp_path: Path) -> None:
    config, copy = model_copy_config(tmp_path)
    with Daemon(config) as daemon:
        assert count_after(daemon, 5), daemon.log()
        copy.unlink()  # the model is in memory: serving goes on
        deleted = daemon.count()
        assert count_after(daemon, deleted + 20), daemon.log()[-3000:]
        daemon.proc.send_signal(signal.SIGHUP)  # a reload cannot find the file
        assert wait_until(lambda: "SIGHUP reload failed" in daemon.log(), 30), daemon.log()[-3000:]
        reloaded = daemon.count()
        assert count_after(daemon, reloaded + 20), "the old pipeline stopped after the failed reload"
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    log = daemon.log()
    assert "still running the previous config" in log
    assert str(copy) in log and "no such file" in log, log[-3000:]
    seqs = [r["seq"] for r in daemon.results]
    assert seqs == list(range(1, len(seqs) + 1))


def test_model_file_corrupted_under_a_running_daemon_then_sighup(tmp_path: Path) -> None:
    config, copy = model_copy_config(tmp_path)
    with Daemon(config) as daemon:
        assert count_after(daemon, 5), daemon.log()
        copy.write_bytes(b"not a model " * 1000)  # the file exists (the config validates) but does not load
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP reload failed" in daemon.log(), 30), daemon.log()[-3000:]
        reloaded = daemon.count()
        assert count_after(daemon, reloaded + 20, 8), "no results after the failed reload"
        assert daemon.stop() == 0
    assert "not a valid TFLite flatbuffer" in daemon.log()


# -------------------------------------------------------------------------------------- full disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("1m")`` mounts a tmpfs of that size and returns it; all unmounted at the end.

    Needs root (or CAP_SYS_ADMIN): the test fails otherwise, saying so (CI runs as root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here ({proc.stderr.strip()}): full-disk tests need root")
        mounted.append(point)
        return point

    if shutil.which("mount") is None:
        pytest.fail("no mount command: full-disk tests need util-linux mount")
    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)


def test_full_disk_under_the_outbox_is_counted_and_the_daemon_keeps_running(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    state = tmpfs("1m")
    config = full_rate(digits_config(tmp_path, port=free_port(), state=state))  # no broker: the outbox grows
    with Daemon(config) as daemon:
        assert wait_until(lambda: "disk full" in daemon.log(), 60, 0.2), daemon.log()[-3000:]
        full = daemon.count()
        assert count_after(daemon, full + 500), "results stopped when the disk filled"
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    log = daemon.log()
    outbox = stats_line(log, "reporting", "outbox")
    assert outbox["store_errors"] > 0 and outbox["depth"] > 0, outbox
    assert outbox["depth"] + outbox["store_errors"] >= daemon.count(), outbox
    assert stats_line(log, "pipeline", "digits")["results"] == daemon.count()
    assert "Traceback" not in log


def test_after_a_full_disk_is_freed_results_flow_to_the_broker_again(
    tmp_path: Path, tmpfs: Callable[[str], Path], make_broker: Callable[..., Mosquitto], device: str
) -> None:
    state = tmpfs("1m")
    broker = make_broker(persistence=True, extra_config=UNLIMITED_QUEUE)
    broker.stop()
    config = full_rate(digits_config(tmp_path, port=broker.port, state=state, device=device))
    with Daemon(config) as daemon:
        assert wait_until(lambda: "disk full" in daemon.log(), 60, 0.2), daemon.log()[-3000:]
        broker.start()
        topics = [topic(device, "pipelines/+/results"), topic(device, "health")]
        with Subscriber(broker.host, broker.port, topics) as sub:
            assert sub.wait_for(lambda ms: any(h["outbox"]["store_errors"] > 0 for h in healths(sub)), 30)
            subprocess.run(["mount", "-o", "remount,size=16m", str(state)], check=True)  # space freed
            freed = daemon.count()
            assert sub.wait_for(beyond(sub, freed), 15), "nothing reached the broker after the disk was freed"
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def dropped_on_disk(state: Path) -> int:
    """The outbox's persisted drop counter, read beside the running daemon (WAL: readers do not
    block the writer)."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'outbox.sqlite'}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
    return int(row[0]) if row else 0


def test_outbox_max_bytes_bounds_it_by_dropping_the_oldest(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    state = tmpfs("16m")  # room for the cap, the WAL and SQLite's overhead
    cap = 256 * 1024
    config = full_rate(
        digits_config(tmp_path, port=free_port(), state=state, extra=f"[outbox]\nmax_bytes = {cap}\n")
    )
    peak = 0
    sampling = threading.Event()

    def sample() -> None:  # the disk the state folder takes, while the daemon writes
        nonlocal peak
        while not sampling.wait(0.02):
            usage = shutil.disk_usage(state)
            peak = max(peak, usage.used)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Daemon(config, "--quiet") as daemon:
        assert wait_until(lambda: "is full: dropping" in daemon.log(), 60, 0.2), daemon.log()[-3000:]
        dropping = dropped_on_disk(state)
        # keep producing well past the cap: another cap's worth of results dropped
        assert wait_until(lambda: dropped_on_disk(state) >= dropping + cap // 200, 60, 0.2)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    sampling.set()
    sampler.join(5)
    log = daemon.log()
    outbox = stats_line(log, "reporting", "outbox")
    results = stats_line(log, "pipeline", "digits")["results"]
    assert outbox["store_errors"] == 0, outbox
    assert outbox["dropped"] > 0 and outbox["bytes"] <= cap, outbox
    assert outbox["put"] == outbox["depth"] + outbox["dropped"] >= results, (outbox, results)
    # Disk use derived from the cap, not from the 16 MiB mount: measured (2 cores, 2026-12) at a
    # peak of 1.8 x cap while writing (the database, its WAL between checkpoints, the -shm index)
    # and 1.3 x cap after the stop (WAL checkpointed away). The bounds leave 60 % over that; an
    # outbox that did not evict, or a WAL that was never truncated, grows by about the payload
    # rate (~150 KB/s here) and passes 3 x cap within the run.
    files = {p.name: p.stat().st_size for p in state.iterdir() if p.is_file()}
    assert sum(files.values()) <= 2 * cap, files
    assert peak <= 3 * cap, (peak, cap)


def test_outbox_max_bytes_keeps_a_small_disk_from_filling(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    state = tmpfs("1m")
    cap = 128 * 1024
    config = full_rate(
        digits_config(tmp_path, port=free_port(), state=state, extra=f"[outbox]\nmax_bytes = {cap}\n")
    )
    with Daemon(config, "--quiet") as daemon:
        assert wait_until(
            lambda: "is full: dropping" in daemon.log() or "disk full" in daemon.log(), 60, 0.2
        ), daemon.log()[-3000:]
        # go on writing until another cap's worth of results (~200 bytes each) was dropped
        dropping = dropped_on_disk(state)
        assert wait_until(lambda: dropped_on_disk(state) >= dropping + cap // 200, 60, 0.2), daemon.log()[
            -3000:
        ]
        assert daemon.stop() == 0
    outbox = stats_line(daemon.log(), "reporting", "outbox")
    assert outbox["store_errors"] == 0, outbox
    assert outbox["dropped"] > 0, outbox


# ------------------------------------------------------------------------------ wall-clock jump

LIBFAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"

# libfaketime 0.9.10 (Debian 12) with FAKETIME_DONT_FAKE_MONOTONIC=1 breaks
# clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which time.sleep() uses from Python 3.11 on
# (EINVAL: wolfcw/libfaketime#426). The launcher puts a monotonic sleep in its place (a timed
# wait on a never-set Event: sem_clockwait on CLOCK_MONOTONIC, which libfaketime leaves alone),
# then runs the real command line. Everything else in the process sees the faked wall clock.
FAKETIME_LAUNCHER = """
import sys, threading, time
_never = threading.Event()
def _sleep(seconds):
    _never.wait(max(0.0, seconds))
time.sleep = _sleep
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def libfaketime() -> str:
    require_tool("faketime", "faketime")
    found = sorted(glob.glob(LIBFAKETIME_GLOB))
    if not found:
        pytest.fail(f"libfaketime.so.1 not found ({LIBFAKETIME_GLOB}): apt-get install -y faketime")
    return found[0]


def test_a_wall_clock_jump_does_not_disturb_alignment(tmp_path: Path) -> None:
    """The fused model's state follows the serial stream while the daemon's wall clock jumps +1 h
    and then -30 min: alignment uses the monotonic clock, which libfaketime leaves alone."""
    library = libfaketime()
    images, _ = heldout(150)
    write_digits_video(tmp_path / "digits.avi", list(images), fps=10.0)
    offset_file = tmp_path / "faketime"
    offset_file.write_text("+0\n")
    schedule = [(0.0, "idle"), (4.0, "running"), (8.0, "fault"), (12.0, "idle")]
    jumps = [(1.5, "+1h", 3600.0), (5.0, "-30m", -1800.0), (8.5, "+2h", 7200.0)]  # after the first result
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with socat_pair(tmp_path) as pair:
        backend = os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "auto")
        config = fused_config(tmp_path, pair.b, runtime=f'backend = "{backend}"')
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "LD_PRELOAD": library,
            "FAKETIME_TIMESTAMP_FILE": str(offset_file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        writer = VibrationWriter(pair.a, schedule)
        with (tmp_path / "daemon.log").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", FAKETIME_LAUNCHER, "run", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                arrivals.append((time.time(), json.loads(line)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        writer.start()
        started = time.monotonic()
        try:
            assert wait_until(lambda: bool(arrivals), 60), (tmp_path / "daemon.log").read_text()[-3000:]
            first = time.monotonic()
            for at, offset, _ in jumps:
                time.sleep(max(0.0, first + at - time.monotonic()))
                offset_file.write_text(offset + "\n")
            # the whole schedule (the writer's clock) and at least 11 s of results
            time.sleep(max(0.0, started + 16.0 - time.monotonic(), first + 11.0 - time.monotonic()))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
            reader.join(10)
        finally:
            writer.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    log = (tmp_path / "daemon.log").read_text()
    # the daemon's wall clock did jump: its frame timestamps sit an hour ahead, then half an hour behind
    skews = [r["frame_ts"] - arrived for arrived, r in arrivals]
    for _, offset, seconds in jumps:
        assert any(abs(skew - seconds) < 60 for skew in skews), (offset, sorted({round(s) for s in skews}))
    assert any(abs(skew) < 60 for skew in skews)
    assert len(arrivals) > 60
    seqs = [r["seq"] for _, r in arrivals]
    assert seqs == list(range(1, len(seqs) + 1))
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrivals)]
    assert max(gaps) < 2.0, "results stalled around a jump"
    judged = correct = 0
    for arrived, r in arrivals:  # judged by the test's clock, which does not jump
        expected, since = writer.state_at(arrived)
        if since < 0.64 + 0.5:  # within one window (plus serial and pipe latency) of a change
            continue
        judged += 1
        correct += r["result"]["state"]["top"][0]["label"] == expected
    assert judged >= 50, judged
    assert correct / judged >= 0.9, (correct, judged)
    assert {r["result"]["state"]["top"][0]["label"] for _, r in arrivals} == {"idle", "running", "fault"}
    pipeline = stats_line(log, "pipeline", "machine")
    assert pipeline["skipped_stale"] <= 10, pipeline  # the first frames, before a full window arrived
    assert "Traceback" not in log
