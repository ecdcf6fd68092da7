"""Model updates on a real daemon: every refusal at its step, probation rollback, kill -9 safety."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import DATA, MODELS
from edge_runtime.updates.signing import SignedFields, generate_keypair, sign

DIGITS = MODELS / "digits_int8.tflite"
CONSTANT = DATA / "constant_digits_int8.tflite"
V2 = DATA / "digits_v2_int8.tflite"  # digits with another description: another sha256, same behaviour


@contextmanager
def http_files(files: dict[str, bytes], truncate: set[str] = frozenset()) -> Iterator[str]:  # type: ignore[assignment]
    """Serve ``files`` on 127.0.0.1; names in ``truncate`` announce their full length, send half."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            if name not in files:
                self.send_error(404)
                return
            data = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if name in truncate else data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def request(
    sub: Subscriber, request_id: str, body: dict[str, Any], timeout: float = 60
) -> list[dict[str, Any]]:
    """Send model.update; return every reply up to the final one."""
    sub.publish("edge/dev1/cmd/model.update", json.dumps({"id": request_id, **body}).encode(), qos=1)
    topic = f"edge/dev1/reply/{request_id}"
    assert sub.wait_for(
        lambda ms: any(m.topic == topic and (m.json().get("final") or not m.json()["ok"]) for m in ms),
        timeout,
    )
    return sub.json(topic)


def update_body(
    path: Path | None, data: bytes, version: str, key: bytes | None, url: str | None = None, **over: Any
) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    body: dict[str, Any] = {
        "pipeline": "digits",
        "url": url or f"file://{path}",
        "sha256": sha,
        "size": len(data),
        "version": version,
    }
    if key is not None:
        body["signature"] = sign(key, SignedFields.update("digits", version, sha, len(data)))
    body.update(over)
    return body


def serving(sub: Subscriber) -> tuple[str, str]:
    health = sub.json("edge/dev1/health")[-1]
    model = health["pipelines"]["digits"]["models"][0]
    return model["sha256"], model["version"]


def no_gap(sub: Subscriber) -> bool:
    seqs = sorted({m["seq"] for m in sub.json("edge/dev1/pipelines/+/results")})
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.fixture
def keys() -> tuple[bytes, str]:
    return generate_keypair()


def test_every_bad_update_is_refused_at_its_step(
    tmp_path: Path, broker: Mosquitto, keys: tuple[bytes, str]
) -> None:
    private, public = keys
    other_private, _ = generate_keypair()
    digits = DIGITS.read_bytes()
    text = b"this is not a model\n" * 100
    fused = (MODELS / "fused_int8.tflite").read_bytes()
    extra = f'[updates]\npublic_keys = ["{public}"]\nmax_bytes = 200000\nprobation_s = 5\n'
    extra += "allow_file_urls = true\n"
    config = digits_config(tmp_path, port=broker.port, extra=extra)
    (tmp_path / "text.tflite").write_bytes(text)
    big = digits * 5
    with http_files({"digits": digits, "big": big, "cut": digits}, truncate={"cut"}) as base:
        wrong = hashlib.sha256(b"another file").hexdigest()  # signed, but not this file's sha256
        signed_wrong = sign(private, SignedFields.update("digits", "2", wrong, len(digits)))
        cases = [
            ("sha", update_body(DIGITS, digits, "2", None, sha256=wrong, signature=signed_wrong), "sha256"),
            ("badsig", update_body(DIGITS, digits, "2", other_private), "signature"),
            ("unsigned", update_body(DIGITS, digits, "2", None), "signature"),
            ("tampered", {**update_body(DIGITS, digits, "2", private), "version": "3"}, "signature"),
            ("cut", update_body(None, digits, "2", private, url=f"{base}/cut"), "download"),
            ("big", update_body(None, big, "2", private, url=f"{base}/big"), "size"),
            ("shape", update_body(MODELS / "fused_int8.tflite", fused, "2", private), "check"),
            ("text", update_body(tmp_path / "text.tflite", text, "2", private), "load"),
            ("gone", update_body(None, digits, "2", private, url=f"{base}/nothing"), "download"),
        ]
        with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
            before = serving(sub)
            for name, body, step in cases:
                replies = request(sub, name, body)
                final = replies[-1]
                if step == "signature":  # refused at once, before anything is fetched: one reply
                    assert len(replies) == 1, (name, replies)
                else:
                    assert replies[0]["step"] == "accepted", (name, replies)  # first, even for a fast failure
                    assert replies[1]["step"] == "signature" and replies[1]["signed"] is True, replies
                assert final["ok"] is False and final["step"] == step, (name, replies)
                assert final["error"], final

            def refused(ms: list[Any]) -> int:
                return len(
                    [m for m in ms if m.topic.endswith("/events") and m.json()["kind"] == "model.refused"]
                )

            assert sub.wait_for(lambda ms: refused(ms) == len(cases), 20)
            count = len(sub.messages("edge/dev1/pipelines/+/results"))
            assert sub.wait_for(lambda ms: len([m for m in ms if "/results" in m.topic]) > count + 5, 20)
            assert serving(sub) == before
            assert no_gap(sub)
            assert daemon.stop() == 0
    store = tmp_path / "state-dev1" / "models" / "digits"
    leftovers = [p.name for p in store.rglob("*") if p.is_file() and p.suffix in (".part", ".tflite")]
    assert leftovers == [], leftovers


def test_a_good_update_commits_and_a_constant_model_rolls_back(
    tmp_path: Path, broker: Mosquitto, keys: tuple[bytes, str]
) -> None:
    private, public = keys
    extra = f'[updates]\npublic_keys = ["{public}"]\nprobation_s = 10\nprobation_results = 10\n'
    extra += "allow_file_urls = true\n"
    config = digits_config(tmp_path, port=broker.port, extra=extra)
    constant = CONSTANT.read_bytes()
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        replies = request(sub, "good", update_body(V2, V2.read_bytes(), "2", private))
        steps = ["accepted", "signature", "download", "sha256", "load", "check", "smoke", "swap", "probation"]
        assert [r["step"] for r in replies] == [*steps, "commit"]
        assert replies[-1]["ok"] and replies[-1]["version"] == "2"
        assert sub.wait_for(lambda ms: serving(sub)[1] == "2", 20)
        replies = request(sub, "const", update_body(CONSTANT, constant, "3", private))
        final = replies[-1]
        assert final["ok"] is False and final["step"] == "probation" and final["rolled_back"] is True
        assert "constant" in final["error"]

        def rolled(ms: list[Any]) -> list[dict[str, Any]]:
            return [
                m.json()
                for m in ms
                if m.topic.endswith("/events") and m.json()["kind"] == "model.rolled_back"
            ]

        assert sub.wait_for(lambda ms: bool(rolled(ms)), 20)
        assert "constant" in rolled(sub.messages("edge/dev1/events"))[-1]["message"]
        # version 2 serves again: read from a health report made after the rollback (the last one
        # that arrived may predate the swap to version 3, and says "2" too)
        after = rolled(sub.messages("edge/dev1/events"))[-1]["ts"]
        assert sub.wait_for(
            lambda ms: any(m.topic == "edge/dev1/health" and m.json()["ts"] > after for m in ms), 20
        )
        assert serving(sub)[1] == "2"
        assert no_gap(sub)
        sub.publish("edge/dev1/cmd/model.list", b'{"id": "l1", "pipeline": "digits"}', qos=1)
        assert sub.wait_for(lambda ms: any(m.topic.endswith("reply/l1") for m in ms), 20)
        listing = sub.json("edge/dev1/reply/l1")[-1]
        assert listing["ok"] and any(v["version"] == "2" for v in listing["versions"])
        assert any("constant" in (h.get("reason") or "") for h in listing["history"])
        assert daemon.stop() == 0


def test_kill_9_during_probation_comes_back_on_the_committed_model(tmp_path: Path, broker: Mosquitto) -> None:
    config = digits_config(
        tmp_path,
        port=broker.port,
        extra="[updates]\nprobation_s = 60\nprobation_results = 100000\nallow_file_urls = true\n",
    )
    constant = CONSTANT.read_bytes()
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub:
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
            original = serving(sub)
            body = update_body(CONSTANT, constant, "9", None)
            sub.publish("edge/dev1/cmd/model.update", json.dumps({"id": "k1", **body}).encode(), qos=1)
            assert sub.wait_for(
                lambda ms: any(m.topic.endswith("reply/k1") and m.json().get("step") == "swap" for m in ms),
                60,
            )
            daemon.kill9()
        sub.clear()
        with Daemon(config) as daemon:
            assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") and not m.retain for m in ms), 30)
            assert serving(sub) == original
            sub.publish("edge/dev1/cmd/model.list", b'{"id": "l2", "pipeline": "digits"}', qos=1)
            assert sub.wait_for(lambda ms: any(m.topic.endswith("reply/l2") for m in ms), 20)
            history = sub.json("edge/dev1/reply/l2")[-1]["history"]
            assert any("restart during probation" in json.dumps(h) for h in history), history
            assert daemon.stop() == 0
        store = tmp_path / "state-dev1" / "models" / "digits"
        assert not (store / "probation.json").exists()
