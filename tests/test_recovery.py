"""Recovery as fast as the fault, and honest timings: real cameras (ffmpeg MJPEG), real ptys
(socat), a real mosquitto stopped for 60 s or frozen (SIGSTOP), a daemon stopped with SIGSTOP."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_systemd import NotifyListener, notified_daemon

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.media import mjpeg_server
from devkit.mqtt_client import Subscriber
from devkit.processes import free_port, socat_pair, wait_until
from edge_runtime.errors import SourceError
from edge_runtime.nativelogs import configure_native_logging
from edge_runtime.recovery import path_probe, tcp_probe, wait_for_peer, why_unopenable
from edge_runtime.sources.camera import CameraConfig, CameraSource
from edge_runtime.sources.serial import SerialConfig, SerialSource

pytestmark = pytest.mark.fault


@pytest.fixture
def device() -> str:
    return f"rec-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------------ the waits


def test_a_wait_is_cut_short_when_the_device_node_reappears(tmp_path: Path) -> None:
    node = tmp_path / "ttyUSB0"
    stop = threading.Event()
    threading.Timer(0.5, node.touch).start()
    started = time.monotonic()
    assert wait_for_peer(stop, 10.0, path_probe(str(node)), every=0.05) is True
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_peer_that_never_left_does_not_cut_the_wait() -> None:
    """A broker that accepts TCP but refuses us (bad credentials) is not hammered."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        started = time.monotonic()
        assert wait_for_peer(threading.Event(), 0.6, tcp_probe("127.0.0.1", port), every=0.05) is False
        assert time.monotonic() - started >= 0.6
    assert tcp_probe("127.0.0.1", port)() is False  # closed: refused


def test_a_stop_ends_the_wait() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert wait_for_peer(stop, 30.0, None) is False
    assert time.monotonic() - started < 2.0


def test_camera_errors_say_why(tmp_path: Path) -> None:
    port = free_port()
    source = CameraSource("cam", CameraConfig(uri=f"http://127.0.0.1:{port}/cam.mjpg", stall_timeout_s=2.0))
    with pytest.raises(SourceError, match=rf"cannot open camera .*: 127\.0\.0\.1:{port}: Connection refused"):
        source._open()
    assert why_unopenable("/dev/video99") == "/dev/video99 does not exist"
    assert why_unopenable(99) == "/dev/video99 does not exist"
    assert re.fullmatch(
        r"cannot resolve no-such-host\.invalid: .+", why_unopenable("rtsp://no-such-host.invalid/s")
    )


# ------------------------------------------------------------------------------- real devices


def test_serial_replug_recovers_within_a_second(tmp_path: Path) -> None:
    with socat_pair(tmp_path) as pair:
        source = SerialSource("imu", SerialConfig(port=str(pair.b), format="kv", reconnect={"max_s": 30.0}))
        source.start()
        try:
            assert wait_until(lambda: source.state == "up", 10)
            pair.kill()  # unplugged
            assert wait_until(lambda: source.state == "down", 10)
            time.sleep(8.0)  # the backoff grows to 0.5, 1, 2, 4, 8 s ...
            pair.start()  # plugged in again
            back = time.monotonic()
            fd = os.open(pair.a, os.O_WRONLY | os.O_NOCTTY)
            try:
                while source.lines == 0 and time.monotonic() - back < 10:
                    os.write(fd, b"x=1\n")
                    time.sleep(0.02)
            finally:
                os.close(fd)
            recovered = time.monotonic() - back
        finally:
            source.stop()
    print(f"\nserial replug after 8 s: first line {recovered:.2f} s after the port returned (max_s = 30)")
    assert source.lines > 0 and recovered < 1.0


def _stream_config(tmp_path: Path, url: str, port: int | None, device: str) -> Path:
    stream = f'\n[sources.stream]\ntype = "camera"\nuri = "{url}"\nstall_timeout_s = 2.0\n'
    config = digits_config(tmp_path, port=port, device=device, extra=stream)
    text = config.read_text().replace('trigger = "camera"', 'trigger = "stream"')
    config.write_text(text.replace('source = "camera"', 'source = "stream"'))
    return config


def test_camera_results_within_2s_after_a_10s_outage(tmp_path: Path, device: str) -> None:
    with mjpeg_server(tmp_path) as camera:
        config = _stream_config(tmp_path, camera.url, None, device)  # default reconnect settings
        with Daemon(config) as daemon:
            assert wait_until(lambda: daemon.count() >= 5, 40), daemon.log()[-3000:]
            camera.kill()
            assert wait_until(lambda: "source stream is down" in daemon.log(), 10), daemon.log()[-3000:]
            time.sleep(10.0)
            before = daemon.count()
            camera.start()
            back = time.monotonic()
            assert wait_until(lambda: daemon.count() > before, 20, 0.01), daemon.log()[-3000:]
            recovered = time.monotonic() - back
            assert daemon.stop() == 0
        log = daemon.log()
    print(f"\ncamera 10 s outage: first result {recovered:.2f} s after ffmpeg was started again")
    assert recovered <= 2.0
    assert "cannot open camera" in log and "Connection refused" in log  # the cause is in the message
    assert "[tcp @" not in log  # FFmpeg's own stderr lines are kept out of the log format


def test_native_log_levels_follow_the_daemon_level() -> None:
    env: dict[str, str] = {}
    assert configure_native_logging(logging.INFO, env) == {
        "OPENCV_LOG_LEVEL": "ERROR",
        "OPENCV_FFMPEG_LOGLEVEL": "-8",
    }
    assert configure_native_logging(logging.DEBUG, {}) == {
        "OPENCV_LOG_LEVEL": "DEBUG",
        "OPENCV_FFMPEG_LOGLEVEL": "40",
    }
    mine = {"OPENCV_LOG_LEVEL": "INFO"}
    assert configure_native_logging(logging.INFO, mine) == {"OPENCV_FFMPEG_LOGLEVEL": "-8"}
    assert mine["OPENCV_LOG_LEVEL"] == "INFO"  # the user's choice stays


@pytest.mark.slow
def test_mqtt_results_within_3s_after_a_60s_broker_outage(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    config = digits_config(tmp_path, port=broker.port, device=device)
    config.write_text(config.read_text().replace("reconnect = { initial_s = 0.2, max_s = 1.0 }\n", ""))
    results = f"edge/{device}/pipelines/+/results"
    with Daemon(config, "--quiet") as daemon:
        with Subscriber(broker.host, broker.port, [results]) as sub:
            assert sub.wait_for(lambda ms: len(ms) >= 5, 30), daemon.log()[-3000:]
        broker.stop()
        time.sleep(60.0)
        broker.start()
        back = time.monotonic()
        with Subscriber(broker.host, broker.port, [results]) as sub:
            assert sub.wait_for(lambda ms: len(ms) >= 1, 30), daemon.log()[-3000:]
            recovered = time.monotonic() - back
        assert daemon.stop() == 0
    mqtt = stats_line(daemon.log(), "reporting", "mqtt")
    print(f"\nbroker 60 s outage: first result {recovered:.2f} s after mosquitto was back; {mqtt}")
    assert recovered <= 3.0
    assert mqtt["connects"] == 2  # one connect at start, one after the outage


def test_sigterm_with_a_frozen_broker_stops_within_stop_timeout(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    config = digits_config(tmp_path, port=broker.port, device=device)
    config.write_text(config.read_text().replace("[device]\n", "[device]\nstop_timeout_s = 4.0\n", 1))
    with Daemon(config) as daemon:
        with Subscriber(broker.host, broker.port, [f"edge/{device}/pipelines/+/results"]) as sub:
            assert sub.wait_for(lambda ms: len(ms) >= 5, 30), daemon.log()[-3000:]
        broker.pause()  # the TCP connection stays, nothing answers
        try:
            time.sleep(0.5)
            started = time.monotonic()
            code = daemon.signal(signal.SIGTERM)
            took = time.monotonic() - started
        finally:
            broker.resume()
    print(f"\nSIGTERM with a frozen broker: exited after {took:.2f} s (stop_timeout_s = 4)")
    assert code == 0 and took < 4.0


def test_sigstop_of_the_daemon_is_no_stuck_watchdog_and_no_fps_burst(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    config = digits_config(tmp_path, port=broker.port, device=device)
    listener = NotifyListener(tmp_path / "notify")
    health = f"edge/{device}/health"
    try:
        with (
            Subscriber(broker.host, broker.port, [health]) as sub,
            notified_daemon(config, listener, 2.0) as proc,
        ):
            assert wait_until(lambda: "READY=1" in listener.lines(), 30)
            assert sub.wait_for(lambda ms: len(ms) >= 2, 30)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(6.0)
            proc.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            assert wait_until(lambda: max(listener.times("WATCHDOG=1")) > resumed, 5), "no ping after SIGCONT"
            n = len(sub.json(health))
            assert sub.wait_for(lambda ms: len(ms) >= n + 3, 20)
            after = sub.json(health)[n:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        log = config.with_suffix(".log").read_text()
    finally:
        listener.close()
    fps = [h["pipelines"]["digits"]["fps_out"] for h in after]
    print(f"\nafter a 6 s SIGSTOP: fps_out {fps}")
    assert "not pinging systemd" not in log and "watchdog.stuck" not in log
    assert "did not run for" in log
    assert max(fps) <= 21.0  # a 20 fps video: never a burst figure
