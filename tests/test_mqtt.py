"""MQTT reporting end to end: a real mosquitto, the real daemon process, real subscribers."""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jsonschema

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.delivery import assert_drained_in_order
from devkit.mqtt_client import Subscriber
from devkit.pki import TestPki
from devkit.processes import free_port, wait_until
from edge_runtime.config import PACKAGE_DIR

SCHEMA = json.loads((PACKAGE_DIR / "reporting" / "result.schema.json").read_text())
HEALTH_FIELDS = {
    "v",
    "device",
    "ts",
    "version",
    "uptime_s",
    "state",
    "problems",
    "pipelines",
    "sources",
    "outbox",
    "mqtt",
    "system",
}
SYSTEM_FIELDS = {"cpu_percent", "rss_bytes", "load_avg", "temperature_c", "disk_free_bytes"}


def seqs(sub: Subscriber, device: str = "dev1") -> list[int]:
    return sorted({m["seq"] for m in sub.json(f"edge/{device}/pipelines/+/results")})


def test_status_results_and_health_reach_a_subscriber(tmp_path: Path, broker: Mosquitto) -> None:
    config = digits_config(tmp_path, port=broker.port)
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        assert sub.wait_for(lambda ms: len([m for m in ms if "/results" in m.topic]) >= 10, 30)
        status = sub.json("edge/dev1/status")
        assert status and status[0]["state"] == "online" and status[0]["pipelines"] == ["digits"]
        for result in sub.json("edge/dev1/pipelines/digits/results"):
            jsonschema.validate(result, SCHEMA)
        health = sub.json("edge/dev1/health")[-1]
        assert set(health) >= HEALTH_FIELDS
        assert set(health["system"]) >= SYSTEM_FIELDS
        pipeline = health["pipelines"]["digits"]
        for key in ("fps_in", "fps_out", "results", "dropped_frames", "latency_ms", "models"):
            assert key in pipeline
        assert set(pipeline["latency_ms"]) == {"pre", "invoke", "post", "total"}
        assert {"p50", "p95", "p99"} <= set(pipeline["latency_ms"]["invoke"])
        model = pipeline["models"][0]
        assert model["delegate"] == "cpu" and len(model["sha256"]) == 64 and model["version"] == "1"
        source = health["sources"]["camera"]
        assert source["state"] == "up" and "reconnects" in source and "last_sample_age_s" in source
        assert {"depth", "oldest_age_s", "dropped"} <= set(health["outbox"])
        assert health["mqtt"]["connected"] is True
        # the retained status and health are there for a late subscriber
        with Subscriber(broker.host, broker.port, ["edge/dev1/status", "edge/dev1/health"]) as late:
            assert late.wait_for(
                lambda ms: {m.topic for m in ms if m.retain} >= {"edge/dev1/status", "edge/dev1/health"}, 10
            )
        assert daemon.stop() == 0


def test_kill_9_gives_the_last_will_and_sigterm_a_clean_offline(tmp_path: Path, broker: Mosquitto) -> None:
    config = digits_config(tmp_path, port=broker.port, mqtt="keepalive_s = 5\n")
    with Subscriber(broker.host, broker.port, ["edge/dev1/status"]) as sub:
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: any(m.json()["state"] == "online" for m in ms), 30), daemon.log()
            daemon.kill9()
        # the broker notices the dead socket at once (or after 1.5 keepalives)
        assert sub.wait_for(lambda ms: ms[-1].json()["state"] == "offline", 20)
        assert sub.json("edge/dev1/status")[-1]["reason"] == "lost"
        sub.clear()
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: any(m.json()["state"] == "online" for m in ms), 30)
            started = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - started < 10
        states = [m["state"] for m in sub.json("edge/dev1/status")]
        assert states[-2:] == ["stopping", "offline"], states
        assert "reason" not in sub.json("edge/dev1/status")[-1]


def test_broker_outage_loses_no_result(tmp_path: Path, broker: Mosquitto) -> None:
    # a device id of its own: while the broker is down another suite on the host may start a
    # broker on the freed port, and the daemon must not share topics with anything there
    device = f"outage-{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    config = digits_config(
        tmp_path,
        port=broker.port,
        device=device,
        extra=f"[metrics]\nenabled = true\nport = {metrics_port}\n",
    )

    def outbox_depth() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("edge_runtime_outbox_depth"):
                    return float(line.split()[-1])
        return -1.0

    results = f"edge/{device}/pipelines/digits/results"
    with Subscriber(
        broker.host, broker.port, [f"edge/{device}/#"], client_id=f"sub-{device}", persistent=True
    ) as sub:
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == results]) >= 20, 30), daemon.log()
            connections = sub.connections
            broker.stop()
            # results pile up in the outbox (20/s): waited for, not slept for
            assert wait_until(lambda: outbox_depth() >= 60, 30), outbox_depth()
            broker.start()
            assert sub.wait_ready(30, after=connections), f"the subscriber did not reconnect: {sub.errors()}"
            reconnected = time.time()
            # the backlog drains while results keep coming (20/s): at most the newest one or two
            # are between the outbox and their acknowledgement at any moment
            assert wait_until(lambda: outbox_depth() <= 2, 30), f"the outbox did not drain: {outbox_depth()}"
            produced = daemon.count()
            assert sub.wait_for(lambda ms: max(seqs(sub, device), default=0) >= produced, 30)
            # health is published directly, only while connected: wait for one made after the
            # reconnect instead of reading whatever last arrived (there may be none yet)
            assert sub.wait_for(
                lambda ms: any(
                    m.topic == f"edge/{device}/health" and m.json()["ts"] >= reconnected for m in ms
                ),
                30,
            ), "no health report after the reconnect"
            assert daemon.stop() == 0
        got = seqs(sub, device)
        log = daemon.log()
        last = stats_line(log, "pipeline", "digits")["results"]
        assert got == list(range(1, last + 1)), f"missing: {sorted(set(range(1, last + 1)) - set(got))[:20]}"
        assert_drained_in_order(sub.messages(results), last)
        assert stats_line(log, "reporting", "outbox")["dropped"] == 0
        healths = sub.json(f"edge/{device}/health")
        assert healths and all(h["outbox"]["dropped"] == 0 for h in healths)
        assert healths[-1]["outbox"]["store_errors"] == 0


def test_results_from_before_a_kill_9_while_the_broker_is_down_arrive_after_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    device = f"kill9-{uuid.uuid4().hex[:8]}"  # the port is free while the broker is down
    config = digits_config(tmp_path, port=broker.port, device=device)
    broker.stop()
    with Daemon(config) as daemon:
        assert wait_until(lambda: daemon.count() >= 30, 30), daemon.log()
        daemon.kill9()
        before = [r["seq"] for r in daemon.results]
    assert before == list(range(1, len(before) + 1))
    broker.start()
    results = f"edge/{device}/pipelines/digits/results"
    with Subscriber(broker.host, broker.port, [results]) as sub:
        with Daemon(config, "--max-results", "5") as daemon2:
            assert daemon2.proc.wait(60) == 0, daemon2.log()[-3000:]
            after = [r["seq"] for r in daemon2.results]
            # seq goes on from the stored one (which may be past the last printed one: a result
            # is stored before it is printed)
            assert after[0] > before[-1] and after == list(range(after[0], after[0] + 5)), (before, after)
            assert sub.wait_for(lambda ms: max(seqs(sub, device), default=0) >= after[-1], 30), (
                before[-5:],
                seqs(sub, device)[-5:],
            )
        # what was printed before the kill arrives first, in order, then the new results
        assert_drained_in_order(sub.messages(results), after[-1])


def test_tls_and_password(tmp_path: Path, pki: TestPki, make_broker: Any) -> None:
    broker = make_broker(tls=pki, users={"dev1": "s3cret-pw"})
    (tmp_path / "pw").write_text("s3cret-pw\n")
    (tmp_path / "badpw").write_text("wrong\n")
    good = f'username = "dev1"\npassword_file = "{tmp_path / "pw"}"\ntls = {{ ca = "{pki.ca_cert}" }}\n'
    config = digits_config(tmp_path, port=broker.port, mqtt=good)
    with Subscriber(
        broker.host, broker.port, ["edge/dev1/#"], username="dev1", password="s3cret-pw", tls=pki.tls()
    ) as sub:
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: len([m for m in ms if "/results" in m.topic]) >= 3, 30), (
                daemon.log()
            )
            assert daemon.stop() == 0
        assert "s3cret-pw" not in daemon.log()
    for name, mqtt, expected in (
        (
            "wrongca",
            f'username = "dev1"\npassword_file = "{tmp_path / "pw"}"\n'
            f'tls = {{ ca = "{pki.other_ca_cert}" }}\n',
            "certificate verify failed",
        ),
        (
            "wrongpw",
            f'username = "dev1"\npassword_file = "{tmp_path / "badpw"}"\ntls = {{ ca = "{pki.ca_cert}" }}\n',
            "Not authorized",
        ),
    ):
        config = digits_config(tmp_path, port=broker.port, mqtt=mqtt, device=name)
        # at debug level every attempt is logged: wait for three attempts (the first at WARNING,
        # the repeats at DEBUG) instead of sleeping through "a few" of them
        with Daemon(config, "--set", "device.log_level=debug") as daemon:
            assert wait_until(functools.partial(_logged, daemon, expected, 3), 60), daemon.log()
            assert daemon.stop() == 0
        log = daemon.log()
        assert expected in log
        mqtt_stats = stats_line(log, "reporting", "mqtt")
        assert mqtt_stats["connected"] is False and mqtt_stats["connects"] == 0
        assert mqtt_stats["reconnect_attempts"] >= 2
        assert expected in mqtt_stats["last_error"]
        # the failure is an event, waiting in the outbox for the broker
        db = tmp_path / f"state-{name}" / "outbox.sqlite"
        with sqlite3.connect(db) as conn:
            events = [
                json.loads(row[0])
                for row in conn.execute("SELECT payload FROM messages WHERE topic LIKE '%/events'")
            ]
        assert any(
            e["kind"] in ("mqtt.tls", "mqtt.refused", "mqtt.disconnected") and expected in e["message"]
            for e in events
        ), events
        assert "wrong\n" not in log and "s3cret-pw" not in log


def _logged(daemon: Daemon, text: str, times: int = 1) -> bool:
    return daemon.log().count(text) >= times


def _command(
    sub: Subscriber, broker: Mosquitto, name: str, body: bytes | dict[str, Any], request_id: str
) -> dict[str, Any]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    sub.publish(f"edge/dev1/cmd/{name}", payload, qos=1)
    topic = f"edge/dev1/reply/{request_id}"
    assert sub.wait_for(lambda ms: any(m.topic == topic for m in ms), 20), f"no reply to {name} {request_id}"
    reply: dict[str, Any] = sub.json(topic)[-1]
    return reply


def test_every_command_and_every_malformed_command(tmp_path: Path, broker: Mosquitto) -> None:
    config = digits_config(tmp_path, port=broker.port, mqtt='max_command_bytes = 2000\npassword_file = ""\n')
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any("/results" in m.topic for m in ms), 30), daemon.log()
        reply = _command(sub, broker, "ping", {"id": "p1"}, "p1")
        assert reply["ok"] is True and reply["pong"] is True and reply["command"] == "ping"
        reply = _command(sub, broker, "get_config", {"id": "c1"}, "c1")
        assert reply["ok"] and reply["config"]["device"]["id"] == "dev1"
        reply = _command(sub, broker, "pipeline.pause", {"id": "pa", "pipeline": "digits"}, "pa")
        assert reply["ok"] and reply["paused"] is True
        # Paused: the daemon's own result count stops. Two health reports generated after the
        # reply (ts later than it) show the pipeline paused with the same count; every result up
        # to that count reaches the subscriber and none beyond it, whatever the machine's load.
        replied = sub.messages("edge/dev1/reply/pa")[-1].time

        def paused_healths(ms: list[Any]) -> list[dict[str, Any]]:
            return [
                h["pipelines"]["digits"]
                for h in (m.json() for m in ms if m.topic == "edge/dev1/health")
                if h["ts"] > replied and h["pipelines"]["digits"]["paused"]
            ]

        def settled(ms: list[Any]) -> bool:  # an inference in flight at the pause may still finish
            counts = [h["results"] for h in paused_healths(ms)]
            return any(a == b for a, b in itertools.pairwise(counts))

        assert sub.wait_for(settled, 20), paused_healths(sub.messages())
        counts = [h["results"] for h in paused_healths(sub.messages())]
        paused_at = next(a for a, b in itertools.pairwise(counts) if a == b)
        assert counts[-1] == paused_at, counts
        assert sub.wait_for(lambda ms: max(seqs(sub)) >= paused_at, 20)
        assert max(seqs(sub)) == paused_at, "a result was produced while paused"
        reply = _command(sub, broker, "pipeline.resume", {"id": "re", "pipeline": "digits"}, "re")
        assert reply["ok"] and reply["paused"] is False
        assert sub.wait_for(lambda ms: max(seqs(sub)) > paused_at + 3, 20)
        reply = _command(sub, broker, "snapshot", {"id": "s1", "source": "camera"}, "s1")
        assert reply["ok"] and reply["content_type"] == "image/jpeg"
        import base64

        import cv2
        import numpy as np

        image = cv2.imdecode(np.frombuffer(base64.b64decode(reply["data"]), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (128, 160)
        reply = _command(sub, broker, "health", {"id": "h1"}, "h1")
        assert reply["ok"] and reply["health"]["device"] == "dev1"
        reply = _command(sub, broker, "reload", {"id": "r1"}, "r1")
        assert reply["ok"], reply
        assert sub.wait_for(
            lambda ms: any(m.topic.endswith("/events") and m.json()["kind"] == "config.reloaded" for m in ms),
            20,
        )
        before = max(seqs(sub))
        assert sub.wait_for(lambda ms: max(seqs(sub)) > before + 3, 20), "results did not resume after reload"
        # malformed: each gets an error reply (where an id can be read) and an event
        bad: list[tuple[str, bytes | dict[str, Any], str | None, str]] = [
            ("ping", b"{not json", None, "not JSON"),
            ("ping", b'["a list"]', None, "JSON object"),
            ("ping", b'{"no": "id"}', None, "'id'"),
            ("nope", {"id": "u1"}, "u1", "unknown command"),
            ("pipeline.pause", {"id": "t1", "pipeline": 42}, "t1", "wrong type"),
            ("pipeline.pause", {"id": "t2"}, "t2", "missing argument"),
            ("pipeline.pause", {"id": "t3", "pipeline": "nosuch"}, "t3", "no pipeline"),
            ("snapshot", {"id": "t4", "source": "nosuch"}, "t4", "no camera source"),
            ("ping", {"id": "big", "pad": "x" * 3000}, None, "over the limit"),
        ]
        for name, body, request_id, error in bad:
            if request_id is None:
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                sub.publish(f"edge/dev1/cmd/{name}", payload, qos=1)
            else:
                reply = _command(sub, broker, name, body, request_id)
                assert reply["ok"] is False and error in reply["error"], reply

        def refusals(ms: list[Any]) -> list[str]:
            return [
                m.json()["message"]
                for m in ms
                if m.topic.endswith("/events") and m.json()["kind"] == "command.error"
            ]

        def all_reported(ms: list[Any]) -> bool:
            return all(any(error in message for message in refusals(ms)) for *_, error in bad)

        assert sub.wait_for(all_reported, 20), refusals(sub.messages("edge/dev1/events"))
        # MQTT 5 request/response: the reply also goes to the response topic, with the correlation data
        with Subscriber(broker.host, broker.port, ["edge/dev1/reply/app"]) as app:
            code = app.publish(
                "edge/dev1/cmd/ping",
                b'{"id": "rr"}',
                qos=1,
                response_topic="edge/dev1/reply/app",
                correlation_data=b"abc",
            )
            assert not code.is_failure
            assert app.wait_for(lambda ms: len(ms) >= 1, 20)
            answer = app.messages("edge/dev1/reply/app")[-1]
            assert answer.correlation_data == b"abc" and answer.json()["id"] == "rr"
        assert daemon.stop() == 0


def test_the_embedded_default_keeps_working_without_a_broker(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    missing = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", "--config", str(tmp_path / "none.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "no such config file" in missing.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", "--max-results", "20", "--set", f"mqtt.port={port}",
         "--set", f"device.state_dir={state}", "--set", "mqtt.reconnect.max_s=0.5"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 20
    assert "cannot connect to localhost" in proc.stderr
    outbox = stats_line(proc.stderr, "reporting", "outbox")
    assert outbox["depth"] >= 20 and outbox["dropped"] == 0
