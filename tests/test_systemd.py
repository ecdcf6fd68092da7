"""systemd integration: a real NOTIFY_SOCKET, a watchdog, SIGHUP reload, SIGTERM, journald logs."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import digits_config
from devkit.media import mjpeg_server
from devkit.mqtt_client import Subscriber
from devkit.processes import wait_until
from edge_runtime.systemd import JournalFormatter, Notifier, watchdog_timeout


class NotifyListener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:  # abstract
            name = f"edge-runtime-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.sock.bind(str(path))
            self.env = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[str]:
        return [line for _, message in list(self.messages) for line in message.splitlines()]

    def times(self, line: str) -> list[float]:
        return [t for t, message in list(self.messages) if line in message.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_notifier_reaches_path_and_abstract_sockets(tmp_path: Path) -> None:
    for path in (tmp_path / "notify", None):
        listener = NotifyListener(path)
        received = listener.messages
        try:
            notifier = Notifier({"NOTIFY_SOCKET": listener.env})
            assert notifier.enabled
            assert notifier.ready("2 pipelines")
            assert notifier.reloading()
            assert wait_until(lambda received=received: len(received) >= 2, 5)  # type: ignore[misc]
            assert listener.messages[0][1] == "READY=1\nSTATUS=2 pipelines"
            reloading = listener.messages[1][1].splitlines()
            assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
            assert int(reloading[1].split("=")[1]) > 0
        finally:
            listener.close()
    assert not Notifier({}).enabled and not Notifier({}).ready()


def test_watchdog_timeout_reads_usec_and_respects_the_pid() -> None:
    assert watchdog_timeout({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert watchdog_timeout({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 4.0
    assert watchdog_timeout({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_timeout({}) is None and watchdog_timeout({"WATCHDOG_USEC": "x"}) is None


def test_journal_lines_carry_the_syslog_priority_and_no_timestamp() -> None:
    formatter = JournalFormatter()

    def line(level: int, message: str) -> str:
        return formatter.format(logging.LogRecord("edge_runtime.x", level, __file__, 1, message, None, None))

    assert line(logging.ERROR, "boom") == "<3>edge_runtime.x: boom"
    assert line(logging.WARNING, "hm") == "<4>edge_runtime.x: hm"
    assert line(logging.INFO, "a\nb") == "<6>edge_runtime.x: a\n<6>b"
    assert line(logging.DEBUG, "d") == "<7>edge_runtime.x: d"


def test_journal_stream_switches_the_daemon_log_format(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=None)
    env = {**os.environ, "JOURNAL_STREAM": "8:12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", "-c", str(config), "--max-results", "3", "--quiet"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "edge_runtime" in line]
    # every line carries its syslog level (an error, such as another process holding the HTTP
    # port on a shared machine, is <3>)
    assert ours and all(re.match(r"<[0-7]>edge_runtime", line) for line in ours), ours[:5]
    assert any(line.startswith("<6>") for line in ours)
    plain = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", "-c", str(config), "--max-results", "3", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert any(line[:4].isdigit() and " INFO edge_runtime" in line for line in plain.stderr.splitlines())


@contextmanager
def notified_daemon(
    config: Path, listener: NotifyListener, watchdog_s: float
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    log = config.with_suffix(".log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "run", "--config", str(config), "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_ready_status_watchdog_and_a_wedged_source(tmp_path: Path, broker: Mosquitto) -> None:
    with mjpeg_server(tmp_path) as camera:
        stream = f'\n[sources.stream]\ntype = "camera"\nuri = "{camera.url}"\nstall_timeout_s = 30\n'
        config = digits_config(tmp_path, port=broker.port, extra=stream)
        text = config.read_text().replace('trigger = "camera"', 'trigger = "stream"')
        config.write_text(text.replace('source = "camera"', 'source = "stream"'))
        listener = NotifyListener(tmp_path / "notify")
        try:
            with notified_daemon(config, listener, watchdog_s=2.0) as proc:
                assert wait_until(lambda: "READY=1" in listener.lines(), 30), config.with_suffix(
                    ".log"
                ).read_text()
                assert any(
                    line.startswith("STATUS=1 pipeline, ") and " fps" in line for line in listener.lines()
                )
                assert wait_until(lambda: len(listener.times("WATCHDOG=1")) >= 6, 30)
                pings = listener.times("WATCHDOG=1")
                gaps = [b - a for a, b in itertools.pairwise(pings)]
                # at half the watchdog interval: the median gap (one stalled gap on a loaded
                # machine does not move it) is below the interval, which a daemon pinging only
                # once per interval could not reach
                assert statistics.median(gaps) < 2.0, gaps
                camera.pause()  # the stream hangs: the capture thread blocks in its read
                log_path = config.with_suffix(".log")
                # the daemon decides to stop pinging, and says why (with the age it measured) ...
                assert wait_until(lambda: "watchdog: not pinging systemd" in log_path.read_text(), 30), (
                    log_path.read_text()[-3000:]
                )
                # ... and then the pings stay away: a silence of 1.5 watchdog intervals, while the
                # stream is still hung
                assert wait_until(lambda: time.monotonic() - max(listener.times("WATCHDOG=1")) > 3.0, 15)
                silent = len(listener.times("WATCHDOG=1"))
                blocked = re.search(r"a read has been blocked for ([0-9.]+) s", log_path.read_text())
                # past half the watchdog (1 s); the log prints the age to 0.1 s, so 1.04 s reads 1.0
                assert blocked and float(blocked.group(1)) >= 1.0, "stops only past half the watchdog"
                camera.resume()
                assert wait_until(lambda: len(listener.times("WATCHDOG=1")) > silent, 40), (
                    "pings did not resume"
                )
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
            assert "STOPPING=1" in listener.lines()
            log = config.with_suffix(".log").read_text()
            assert "watchdog: not pinging systemd: source stream: a read has been blocked" in log
        finally:
            listener.close()


def test_sighup_reloads_and_sigterm_stops_cleanly(tmp_path: Path, broker: Mosquitto) -> None:
    config = digits_config(tmp_path, port=broker.port)
    listener = NotifyListener(None)
    try:
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub:
            with notified_daemon(config, listener, watchdog_s=4.0) as proc:
                assert wait_until(lambda: "READY=1" in listener.lines(), 30)
                assert sub.wait_for(lambda ms: any("/pipelines/digits/results" in m.topic for m in ms), 30)
                config.write_text(config.read_text().replace('name = "digits"', 'name = "renamed"'))
                proc.send_signal(signal.SIGHUP)
                assert wait_until(lambda: len(listener.times("READY=1")) >= 2, 30)
                reloading = listener.times("RELOADING=1")
                assert reloading and reloading[0] < listener.times("READY=1")[1]
                reload_message = next(m for _, m in listener.messages if m.startswith("RELOADING=1"))
                assert "MONOTONIC_USEC=" in reload_message
                assert sub.wait_for(lambda ms: any("/pipelines/renamed/results" in m.topic for m in ms), 30)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
                assert time.monotonic() - started < 10.0
            assert "STOPPING=1" in listener.lines()
            states = [m["state"] for m in sub.json("edge/dev1/status")]
            assert states[-2:] == ["stopping", "offline"]
    finally:
        listener.close()


@pytest.mark.parametrize("bad", ["not toml [", '[device]\nid = "a/b"\n'])
def test_a_bad_config_on_sighup_keeps_the_old_one_running(tmp_path: Path, bad: str) -> None:
    config = digits_config(tmp_path, port=None)
    listener = NotifyListener(None)
    try:
        with notified_daemon(config, listener, watchdog_s=4.0) as proc:
            assert wait_until(lambda: "READY=1" in listener.lines(), 30)
            good = config.read_text()
            config.write_text(bad)
            proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: len(listener.times("READY=1")) >= 2, 30)
            assert any(line.startswith("STATUS=reload failed") for line in listener.lines())
            count = len(listener.times("WATCHDOG=1"))
            assert wait_until(lambda: len(listener.times("WATCHDOG=1")) > count + 1, 10), (
                "the old config stopped"
            )
            config.write_text(good)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    finally:
        listener.close()
