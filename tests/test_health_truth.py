"""Health that tells the truth, on a real daemon: garbage on a real serial line, a camera that never
answers (READY=1 waits for the start grace), a broken model store, every kind of failed reload,
and Prometheus ``*_ok`` gauges at 0 while results are not stored."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_systemd import NotifyListener, notified_daemon

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import MODELS
from devkit.processes import free_port, socat_pair, wait_until
from edge_runtime.health import HealthReporter
from edge_runtime.reporting.metrics import MetricsServer

pytestmark = pytest.mark.fault


@pytest.fixture
def device() -> str:
    return f"truth-{uuid.uuid4().hex[:10]}"


def healths(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return sub.json(f"edge/{device}/health")


def events(sub: Subscriber, device: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in sub.json(f"edge/{device}/events") if e["kind"] == kind]


def test_garbage_on_a_real_serial_line_turns_health_degraded(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    with socat_pair(tmp_path) as pair:
        extra = f'\n[sources.imu]\ntype = "serial"\nport = "{pair.b}"\nformat = "kv"\n'
        config = digits_config(tmp_path, port=broker.port, device=device, extra=extra)
        topics = [f"edge/{device}/health", f"edge/{device}/events"]
        with Subscriber(broker.host, broker.port, topics) as sub, Daemon(config) as daemon:
            assert sub.wait_for(
                lambda ms: any(
                    h["sources"]["imu"]["state"] == "up" and h["state"] == "ok" for h in healths(sub, device)
                ),
                30,
            ), [h["problems"] for h in healths(sub, device)]
            stop = threading.Event()

            def write(line: bytes) -> None:
                fd = os.open(pair.a, os.O_WRONLY | os.O_NOCTTY)
                try:
                    while not stop.is_set():
                        os.write(fd, line * 10)
                        time.sleep(0.1)
                finally:
                    os.close(fd)

            writer = threading.Thread(target=write, args=(b"\x07#@!garbage without pairs\n",), daemon=True)
            writer.start()
            try:
                assert sub.wait_for(
                    lambda ms: any(h["state"] == "degraded" for h in healths(sub, device)), 20
                )
            finally:
                stop.set()
                writer.join(5)
            degraded = next(h for h in healths(sub, device) if h["state"] == "degraded")
            assert degraded["components"]["source/imu"]["state"] == "degraded"
            assert any("lines unparsable" in p for p in degraded["problems"]), degraded["problems"]
            n = len(healths(sub, device))
            assert sub.wait_for(lambda ms: any(h["state"] == "ok" for h in healths(sub, device)[n:]), 20)

            def changes() -> list[tuple[str, str]]:
                return [(e["component"], e["state"]) for e in events(sub, device, "health.state")]

            # events travel through the outbox, health directly: wait for the event itself
            assert sub.wait_for(lambda ms: ("source/imu", "ok") in changes(), 10), changes()
            assert changes().index(("source/imu", "degraded")) < changes().index(("source/imu", "ok"))
            assert daemon.stop() == 0


def test_a_camera_that_never_answers_delays_ready_and_degrades(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never sends a byte
    silent.listen(64)
    port = silent.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cam.mjpg"
    stream = f'\n[sources.stream]\ntype = "camera"\nuri = "{url}"\nstall_timeout_s = 1.0\n'
    config = digits_config(tmp_path, port=broker.port, device=device, extra=stream)
    text = config.read_text().replace('trigger = "camera"', 'trigger = "stream"')
    text = text.replace('source = "camera"', 'source = "stream"')
    config.write_text(text.replace("interval_s = 1.0\n", "interval_s = 1.0\nstart_grace_s = 4.0\n"))
    listener = NotifyListener(tmp_path / "notify")
    try:
        with Subscriber(broker.host, broker.port, [f"edge/{device}/health"]) as sub:
            started = time.monotonic()
            with notified_daemon(config, listener, watchdog_s=30.0) as proc:
                assert wait_until(lambda: "READY=1" in listener.lines(), 30)
                ready_after = listener.times("READY=1")[0] - started
                assert sub.wait_for(lambda ms: any(h["uptime_s"] >= 4.0 for h in healths(sub, device)), 30)
                late = next(h for h in healths(sub, device) if h["uptime_s"] >= 4.0)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
        log = config.with_suffix(".log").read_text()
    finally:
        listener.close()
        silent.close()
    ready = next(m for _, m in listener.messages if "READY=1" in m)
    print(
        f"\nnever-answering camera: READY=1 after {ready_after:.1f} s: {ready!r}; problems {late['problems']}"
    )
    assert ready_after >= 4.0  # not before the start grace
    assert "degraded" in ready  # the STATUS line sent with READY says so
    assert late["state"] == "degraded"
    assert "pipeline digits: no result in the 4 s start grace" in late["problems"]
    assert any(p.startswith("source stream") for p in late["problems"]), late["problems"]
    assert "start grace of 4 s passed; no result yet from digits" in log


def _store(state: Path) -> Path:
    directory = state / "models" / "digits"
    directory.mkdir(parents=True)
    return directory


@pytest.mark.parametrize("damage", ["unreadable-pointer", "corrupt-model"])
def test_a_broken_model_store_gives_an_event_and_degraded_health(
    tmp_path: Path, broker: Mosquitto, device: str, damage: str
) -> None:
    config = digits_config(tmp_path, port=broker.port, device=device)
    store = _store(tmp_path / f"state-{device}")
    if damage == "unreadable-pointer":
        (store / "current.json").write_bytes(b'{"v": 1, "current": {"sha256": ')  # cut short
        expected = "current.json is unreadable"
    else:
        model = (MODELS / "digits_int8.tflite").read_bytes()
        sha = hashlib.sha256(model).hexdigest()
        (store / f"{sha}.tflite").write_bytes(model[:-100] + b"\0" * 100)  # bit rot
        (store / f"{sha}.json").write_text(json.dumps({"version": "9", "size": len(model)}))
        entry = {"sha256": sha, "version": "9", "committed_at": time.time()}
        (store / "current.json").write_text(json.dumps({"v": 1, "current": entry, "previous": []}))
        expected = "model file corrupt (sha256 mismatch)"
    topics = [f"edge/{device}/health", f"edge/{device}/events"]
    with Subscriber(broker.host, broker.port, topics) as sub, Daemon(config) as daemon:
        assert sub.wait_for(
            lambda ms: bool(events(sub, device, "model.store_broken")) and bool(healths(sub, device)), 30
        )
        assert daemon.count() > 0 or wait_until(lambda: daemon.count() > 0, 20)  # the config's model serves
        health = healths(sub, device)[-1]
        assert daemon.stop() == 0
    event = events(sub, device, "model.store_broken")[0]
    assert expected in event["message"] and event["pipeline"] == "digits"
    assert health["state"] == "degraded" and health["components"]["models"]["state"] == "degraded"
    assert any(expected in p for p in health["problems"]), health["problems"]


BAD_RELOADS: dict[str, Callable[[str], str]] = {
    "bad-toml": lambda text: text + "\n[[[ not toml\n",
    "schema-error": lambda text: text.replace("interval_s = 1.0", "interval_s = -5"),
    "missing-model": lambda text: text.replace("digits_int8.tflite", "no_such_model.tflite"),
}


def _failed_reloads(sub: Subscriber, device: str, n: int) -> Callable[[list[Any]], bool]:
    return lambda ms: len(events(sub, device, "config.reload_failed")) >= n


def _more_results(daemon: Daemon, n: int) -> Callable[[], bool]:
    return lambda: daemon.count() > n


def test_every_failed_reload_gives_an_event_and_degraded_health(
    tmp_path: Path, broker: Mosquitto, device: str
) -> None:
    config = digits_config(tmp_path, port=broker.port, device=device)
    good = config.read_text()
    topics = [f"edge/{device}/health", f"edge/{device}/events"]
    with Subscriber(broker.host, broker.port, topics) as sub, Daemon(config) as daemon:
        assert wait_until(lambda: daemon.count() > 0, 30), daemon.log()[-3000:]
        for n, (name, damage) in enumerate(BAD_RELOADS.items(), start=1):
            config.write_text(damage(good))
            daemon.proc.send_signal(signal.SIGHUP)
            assert sub.wait_for(_failed_reloads(sub, device, n), 20), name
            assert wait_until(_more_results(daemon, daemon.count() + 5), 10), (
                f"{name}: the old config stopped"
            )
        assert sub.wait_for(
            lambda ms: any("last reload failed" in p for h in healths(sub, device) for p in h["problems"]), 10
        )
        config.write_text(good)
        daemon.proc.send_signal(signal.SIGHUP)
        assert sub.wait_for(
            lambda ms: any(e["kind"] == "config.reloaded" for e in sub.json(f"edge/{device}/events")), 20
        )
        n = len(healths(sub, device))
        assert sub.wait_for(lambda ms: any(h["state"] == "ok" for h in healths(sub, device)[n:]), 20)
        assert daemon.stop() == 0
    failed = events(sub, device, "config.reload_failed")
    assert len(failed) == 3, [e["message"] for e in failed]
    assert "line" in failed[0]["error"].lower() or "toml" in failed[0]["error"].lower(), failed[0]
    assert "interval_s" in failed[1]["message"], failed[1]
    assert "no_such_model.tflite" in failed[2]["message"], failed[2]


def _scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text.splitlines()


def test_ok_gauges_are_0_while_results_are_not_stored(tmp_path: Path) -> None:
    outbox: dict[str, Any] = {"depth": 0, "bytes": 0, "dropped": 0, "store_errors": 0, "last_store_error": ""}
    reporter = HealthReporter(
        "1", "cam-01", tmp_path, pipelines=lambda: {"digits": {"results": 10, "triggers": 10}},
        sources=dict, outbox=lambda: outbox, mqtt=lambda: {"connected": True},
    )  # fmt: skip
    reporter.report()  # the periodic report: the window starts
    server = MetricsServer(reporter, port=free_port())
    server.start()
    try:
        lines = _scrape(server.port)
        assert "edge_runtime_health_ok 1.0" in lines and "edge_runtime_outbox_ok 1.0" in lines
        outbox.update(store_errors=120, last_store_error="disk full")
        server.refresh()  # what the health timer does every metrics.refresh_s
        lines = _scrape(server.port)
        for line in (
            "edge_runtime_health_ok 0.0",
            "edge_runtime_health_state 2.0",
            "edge_runtime_outbox_ok 0.0",
            'edge_runtime_component_ok{component="outbox"} 0.0',
            "edge_runtime_outbox_store_errors_total 120.0",
            'edge_runtime_pipeline_ok{pipeline="digits"} 1.0',
        ):
            assert line in lines, line
        reporter.report()  # a window with no new store error
        server.refresh()
        assert "edge_runtime_health_ok 1.0" in _scrape(server.port)
    finally:
        server.stop()
