"""tools/fleet.py: the operator's tool against a real mosquitto.

Most tests drive the tool against fake devices: small paho clients in this file that publish a
retained status and health and answer ``model.update`` step by step as the daemon's protocol
says (downloading the served URL or reassembling MQTT chunks and checking the sha256, checking
the signature with :mod:`edge_runtime.updates.signing`). They test the orchestration: canary order,
halting after a failed canary, concurrency, timeouts, transfers. The last three tests run real
daemons (the acceptance of the fleet-update issue).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import DATA, MODELS, ROOT
from devkit.processes import wait_until
from edge_runtime.fleet import (
    STEPS,
    BrokerOptions,
    FleetError,
    HttpDelivery,
    ModelServer,
    MqttBus,
    Requester,
    Rollout,
    canary_count,
    collect_devices,
    describe_model,
)
from edge_runtime.fleet.cli import main
from edge_runtime.updates import signing
from edge_runtime.updates.protocol import SignatureError

FLEET = Path(sys.executable).with_name("edge-fleet")  # the console script of the fleet extra
OLD_SHA = "0" * 64


# --- fake devices ------------------------------------------------------------------------------------


class Tracker:
    """What all fake devices did, in order: (monotonic time, device, what); and peak concurrency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[float, str, str]] = []
        self.active = 0
        self.peak = 0

    def record(self, device: str, what: str) -> None:
        with self.lock:
            self.log.append((time.monotonic(), device, what))
            if what == "start":
                self.active += 1
                self.peak = max(self.peak, self.active)
            elif what == "end":
                self.active -= 1

    def time_of(self, device: str, what: str) -> float:
        with self.lock:
            return next(t for t, d, w in self.log if d == device and w == what)

    def devices(self, what: str) -> list[str]:
        with self.lock:
            return [d for _, d, w in self.log if w == what]


class FakeDevice:
    """A device that speaks the update protocol. ``behaviour``:

    ``ok`` commits; ``probation`` fails probation and rolls back; ``refuse:STEP`` refuses at STEP;
    ``silent`` says "accepted" and then nothing; ``no-rollback`` refuses ``model.rollback``.
    """

    def __init__(
        self,
        broker: Mosquitto,
        name: str,
        tracker: Tracker,
        *,
        behaviour: str = "ok",
        public_key: str | None = None,
        step_delay: float = 0.01,
        pipelines: tuple[str, ...] = ("digits",),
        prefix: str = "edge",
    ) -> None:
        self.name = name
        self.tracker = tracker
        self.behaviour = behaviour
        self.public_key = public_key
        self.step_delay = step_delay
        self.pipelines = pipelines
        self.base = f"{prefix}/{name}"
        self.sha256 = OLD_SHA
        self.version = "1"
        self.previous = ("f" * 64, "0")
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self._updating = False
        self.downloads = 0
        self.chunks: dict[str, dict[int, bytes]] = {}
        self.received: bytes | None = None
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fake-{name}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.will_set(f"{self.base}/status", json.dumps(self._status("offline")), 1, retain=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{self.base}/cmd/+", qos=1)
        assert self._subscribed.wait(10), f"{name}: no SUBACK"
        self.publish("status", self._status("online"), retain=True)
        self.publish_health()
        self._worker = threading.Thread(target=self._run, name=f"fake-{name}", daemon=True)
        self._worker.start()

    # -- MQTT

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Properties | None
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        command = message.topic.rsplit("/", 1)[1]
        self._queue.put((command, json.loads(message.payload)))

    def publish(self, sub: str, body: dict[str, Any], *, retain: bool = False) -> None:
        self.client.publish(f"{self.base}/{sub}", json.dumps(body), qos=1, retain=retain).wait_for_publish(10)

    def _status(self, state: str) -> dict[str, Any]:
        return {"state": state, "ts": time.time(), "version": "0.1.0", "pipelines": list(self.pipelines)}

    def publish_health(self) -> None:
        model = {"name": "digits_int8", "sha256": self.sha256, "version": self.version, "delegate": "cpu"}
        pipelines = {p: {"fps_out": 19.5, "results": 100, "models": [model]} for p in self.pipelines}
        health = {
            "ts": time.time(),
            "version": "0.1.0",
            "uptime_s": 5.0,
            "state": "ok",
            "pipelines": pipelines,
        }
        self.publish("health", health, retain=True)

    def reply(self, request_id: str, body: dict[str, Any]) -> None:
        if self._updating and (body.get("final") or body.get("ok") is False):
            self._end()  # before the tool can see the final reply and start the next device
        self.publish(f"reply/{request_id}", {"id": request_id, **body})

    def _end(self) -> None:
        if self._updating:
            self._updating = False
            self.tracker.record(self.name, "end")

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    # -- commands, one at a time like the daemon's dispatcher

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            command, body = item
            self.commands.append((command, body))
            if command == "model.chunk":
                self._chunk(body)
            elif command == "model.update":
                self.tracker.record(self.name, "start")
                self._updating = True
                try:
                    self._update(body)
                finally:
                    self._end()
            elif command == "model.rollback":
                self._rollback(body)

    def _chunk(self, body: dict[str, Any]) -> None:
        parts = self.chunks.setdefault(body["transfer"], {})
        parts[body["index"]] = base64.b64decode(body["data"])
        self.reply(
            body["id"], {"command": "model.chunk", "ok": True, "received": len(parts), "total": body["total"]}
        )

    def _rollback(self, body: dict[str, Any]) -> None:
        if self.behaviour == "no-rollback":
            self.reply(body["id"], {"command": "model.rollback", "ok": False, "error": "no previous version"})
            return
        self.sha256, self.version = self.previous
        self.publish_health()
        self.reply(
            body["id"],
            {"command": "model.rollback", "ok": True, "sha256": self.sha256, "version": self.version},
        )

    def _step(self, request_id: str, step: str, ok: bool = True, **extra: Any) -> None:
        time.sleep(self.step_delay)
        final = not ok or step == "commit"
        body = {"command": "model.update", "ok": ok, "step": step, **extra}
        if final:
            body["final"] = True
        self.reply(request_id, body)

    def _fetch(self, body: dict[str, Any]) -> bytes:
        if "url" in body:
            with urllib.request.urlopen(body["url"], timeout=10) as response:
                data: bytes = response.read()
            self.downloads += 1
            return data
        parts = self.chunks.pop(body["transfer"])
        return b"".join(parts[i] for i in range(len(parts)))

    def _update(self, body: dict[str, Any]) -> None:
        rid = body["id"]
        self.tracker.record(self.name, "accepted")
        self._step(rid, "accepted")
        if self.behaviour == "silent":
            return
        try:  # like the daemon: the signature first, before anything is fetched
            keys = [self.public_key] if self.public_key else []
            fields = signing.SignedFields.update(
                body["pipeline"], body["version"], body["sha256"], body["size"], body.get("rollback_from")
            )
            signing.verify(keys, fields, body.get("signature"))
        except SignatureError as exc:
            self._step(rid, "signature", ok=False, error=str(exc))
            return
        self._step(rid, "signature")
        try:
            data = self._fetch(body)
        except (OSError, KeyError) as exc:
            self._step(rid, "download", ok=False, error=f"download failed: {exc}")
            return
        self.received = data
        self._step(rid, "download", bytes=len(data))
        sha = hashlib.sha256(data).hexdigest()
        if sha != body["sha256"] or len(data) != body["size"]:
            self._step(rid, "sha256", ok=False, error=f"sha256 {sha} differs from {body['sha256']}")
            return
        self._step(rid, "sha256")
        for step in ("load", "check", "smoke", "swap"):
            if self.behaviour == f"refuse:{step}":
                self._step(rid, step, ok=False, error=f"{step} refused by the fake device")
                return
            self._step(rid, step)
        if self.behaviour == "probation":
            reason = "outputs constant for 40 frames (argmax always 3)"
            self.publish(
                "events", {"kind": "model.rolled_back", "message": reason, "pipeline": body["pipeline"]}
            )
            self._step(rid, "probation", ok=False, error=reason, rolled_back=True)
            return
        self._step(rid, "probation")
        self.previous = (self.sha256, self.version)
        self.sha256, self.version = sha, body["version"]
        self.publish_health()
        self.tracker.record(self.name, "commit")
        self._step(rid, "commit", sha256=sha, version=body["version"])


@pytest.fixture
def tracker() -> Tracker:
    return Tracker()


@pytest.fixture
def fleet(broker: Mosquitto, tracker: Tracker) -> Iterator[Any]:
    """``fleet(n, behaviours={name: behaviour}, **options)`` -> fake devices dev0..dev{n-1}."""
    made: list[FakeDevice] = []

    def make(count: int, behaviours: dict[str, str] | None = None, **options: Any) -> list[FakeDevice]:
        devices = [
            FakeDevice(
                broker, f"dev{i}", tracker, behaviour=(behaviours or {}).get(f"dev{i}", "ok"), **options
            )
            for i in range(count)
        ]
        made.extend(devices)
        return devices

    yield make
    for device in made:
        device.close()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model_v2.tflite"
    path.write_bytes(os.urandom(50_000))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def update_args(broker: Mosquitto, model: Path, *extra: str) -> list[str]:
    return [
        "update",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--model",
        str(model),
        "--pipeline",
        "digits",
        "--version",
        "2",
        "--json",
        *extra,
    ]


# --- pure parts -------------------------------------------------------------------------------------


def test_canary_count_counts_and_percentages() -> None:
    assert [canary_count("1", n) for n in (0, 1, 5)] == [0, 1, 1]
    assert canary_count("0", 5) == 0
    assert canary_count("3", 2) == 2
    assert canary_count("20%", 5) == 1
    assert canary_count("20%", 6) == 2  # rounded up
    assert canary_count("100%", 7) == 7
    for bad in ("x", "-1", "150%", "1.5"):
        with pytest.raises(FleetError):
            canary_count(bad, 5)


def test_keygen_writes_a_private_key_only_its_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    code, out, _ = run(capsys, "keygen", "--out", str(keys))
    assert code == 0
    public = (keys / "fleet.pub").read_text().strip()
    assert (keys / "fleet.key").stat().st_mode & 0o777 == 0o600
    assert public in out and f'[updates]\npublic_keys = ["{public}"]' in out
    code, _, err = run(capsys, "keygen", "--out", str(keys))
    assert code == 1 and "refusing to overwrite" in err and "--force" in err
    assert (keys / "fleet.pub").read_text().strip() == public
    code, _, _ = run(capsys, "keygen", "--out", str(keys), "--force")
    assert code == 0 and (keys / "fleet.pub").read_text().strip() != public


def test_sign_prints_a_signature_the_device_side_accepts(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keygen", "--out", str(tmp_path / "k"))
    public = (tmp_path / "k" / "fleet.pub").read_text().strip()
    out_file = tmp_path / "signed.json"
    argv = [
        "sign",
        str(model),
        "--pipeline",
        "digits",
        "--version",
        "2",
        "--key",
        str(tmp_path / "k" / "fleet.key"),
    ]
    code, out, _ = run(capsys, *argv, "--out", str(out_file))
    assert code == 0
    signed = json.loads(out)
    assert signed == json.loads(out_file.read_text())
    assert signed["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert signed["size"] == model.stat().st_size
    fields = signing.SignedFields.update("digits", "2", signed["sha256"], signed["size"])
    assert signing.verify([public], fields, signed["signature"])
    with pytest.raises(SignatureError):
        other = signing.SignedFields.update("digits", "3", signed["sha256"], signed["size"])
        signing.verify([public], other, signed["signature"])
    (tmp_path / "k" / "fleet.key").chmod(0o644)
    code, _, err = run(capsys, *argv)
    assert code == 1 and "chmod 600" in err


def test_model_server_serves_the_file_only_at_its_token_path(model: Path) -> None:
    with ModelServer(model) as server:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.read() == model.read_bytes()
        wrong = server.url.replace(server.token, "guess")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=5)
        refused.value.close()
        assert refused.value.code == 404
        assert wait_until(lambda: len(server.downloads) == 2, 5)
        assert sorted((d.status, d.bytes) for d in server.downloads) == [
            (200, model.stat().st_size),
            (404, 0),
        ]


# --- status -----------------------------------------------------------------------------------------


def test_status_shows_devices_from_retained_status_and_health(
    broker: Mosquitto, fleet: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet(2)
    broker.publish(
        "edge/cam-9/status", {"state": "offline", "ts": time.time() - 600, "reason": "lost"}, retain=True
    )
    where = f"{broker.host}:{broker.port}"
    code, out, _ = run(capsys, "status", "--broker", where, "--json")
    assert code == 0
    rows = {row["device"]: row for row in json.loads(out)["devices"]}
    assert sorted(rows) == ["cam-9", "dev0", "dev1"]
    assert rows["dev0"]["state"] == "online" and rows["cam-9"]["state"] == "offline"
    digits = rows["dev1"]["pipelines"]["digits"]
    assert digits["fps"] == 19.5 and digits["models"][0]["sha256"] == OLD_SHA
    assert rows["dev0"]["age_s"] < 30 and rows["cam-9"]["age_s"] >= 599

    code, out, _ = run(capsys, "status", "--broker", where, "--json", "--devices", "dev*")
    assert [r["device"] for r in json.loads(out)["devices"]] == ["dev0", "dev1"]

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "status", "--broker", where)
    assert code == 0
    assert "dev0" in out and "online" in out and "offline" in out and "19.5" in out
    assert "digits_int8 v1 000000000000" in out and "10m ago" in out


def test_status_through_the_script_entry_point(broker: Mosquitto, fleet: Any) -> None:
    fleet(1)
    result = subprocess.run(
        [str(FLEET), "status", "--broker", f"{broker.host}:{broker.port}", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [r["device"] for r in json.loads(result.stdout)["devices"]] == ["dev0"]


# --- update -----------------------------------------------------------------------------------------


def test_canary_commits_first_then_the_rest_over_http(
    broker: Mosquitto, fleet: Any, tracker: Tracker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = fleet(5)
    code, out, err = run(capsys, *update_args(broker, model, "--canary", "1", "--concurrency", "4"))
    report = json.loads(out)
    assert code == 0, err
    assert report["ok"] and report["summary"] == "5 updated"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert [(d["device"], d["canary"], d["result"], d["sha256"]) for d in report["devices"]] == [
        (f"dev{i}", i == 0, "updated", sha) for i in range(5)
    ]
    assert report["devices"][0]["steps"] == list(STEPS)
    # the canary committed before any other device was asked
    canary_commit = tracker.time_of("dev0", "commit")
    assert all(tracker.time_of(f"dev{i}", "accepted") > canary_commit for i in range(1, 5))
    for device in devices:  # each downloaded the served file once and checked its sha256
        assert device.downloads == 1 and device.received == model.read_bytes() and device.sha256 == sha
    with broker.subscriber("edge/+/health") as sub:
        sub.expect("edge/+/health", 5)
        assert {h["pipelines"]["digits"]["models"][0]["sha256"] for h in sub.json()} == {sha}


def test_probation_failure_of_the_canary_halts_the_rollout(
    broker: Mosquitto,
    fleet: Any,
    model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    devices = fleet(4, {"dev0": "probation"})
    monkeypatch.setenv("COLUMNS", "200")
    argv = update_args(broker, model, "--canary", "1")
    argv.remove("--json")
    code, out, _ = run(capsys, *argv)
    assert code == 1
    assert "rolled back" in out and "outputs constant for 40 frames" in out
    assert "3 not attempted" in out and "halted: canary dev0 rolled back" in out
    for device in devices[1:]:
        assert device.commands == []  # not touched
    code, out, _ = run(capsys, *update_args(broker, model, "--canary", "1"))
    report = json.loads(out)
    assert code == 1 and report["halted"]
    canary = report["devices"][0]
    assert (canary["result"], canary["step"]) == ("rolled back", "probation")
    assert [d["result"] for d in report["devices"][1:]] == ["not attempted"] * 3


def test_a_failure_after_the_canaries_does_not_stop_the_others(
    broker: Mosquitto, fleet: Any, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet(4, {"dev2": "refuse:check"})
    code, out, _ = run(capsys, *update_args(broker, model, "--canary", "25%", "--concurrency", "3"))
    report = json.loads(out)
    assert code == 1 and not report["halted"]
    results = {d["device"]: (d["result"], d["step"], d["error"]) for d in report["devices"]}
    assert results["dev2"] == ("refused", "check", "check refused by the fake device")
    assert [results[d][0] for d in ("dev0", "dev1", "dev3")] == ["updated"] * 3
    assert report["summary"] == "3 updated, 1 refused"


def test_concurrency_limits_devices_updating_at_once(
    broker: Mosquitto, fleet: Any, tracker: Tracker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet(6, step_delay=0.04)
    code, out, _ = run(capsys, *update_args(broker, model, "--canary", "0", "--concurrency", "2"))
    assert code == 0 and json.loads(out)["summary"] == "6 updated"
    assert tracker.peak == 2


def test_a_silent_device_times_out(
    broker: Mosquitto, fleet: Any, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet(3, {"dev0": "silent"})
    started = time.monotonic()
    code, out, _ = run(capsys, *update_args(broker, model, "--timeout", "1.5"))
    assert time.monotonic() - started < 10
    report = json.loads(out)
    assert code == 1
    assert report["devices"][0]["result"] == "timeout" and report["devices"][0]["step"] == "accepted"
    assert "no final reply within 1.5 s" in report["devices"][0]["error"]
    assert [d["result"] for d in report["devices"][1:]] == ["not attempted"] * 2


def test_mqtt_chunked_transfer_is_reassembled_by_the_device(
    broker: Mosquitto, fleet: Any, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = fleet(2)
    argv = update_args(broker, model, "--transport", "mqtt", "--chunk-size", "4096", "--canary", "0")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert json.loads(out)["summary"] == "2 updated"
    for device in devices:
        chunks = [body for name, body in device.commands if name == "model.chunk"]
        assert len(chunks) == 13 and {c["total"] for c in chunks} == {13}  # 50000 bytes / 4096
        assert len({c["id"] for c in chunks}) == 13
        update = next(body for name, body in device.commands if name == "model.update")
        assert update["transfer"] == chunks[0]["transfer"] and "url" not in update
        assert device.received == model.read_bytes() and device.downloads == 0


def test_signed_updates_are_checked_by_the_devices(
    broker: Mosquitto, fleet: Any, tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keygen", "--out", str(tmp_path / "keys"))
    public = (tmp_path / "keys" / "fleet.pub").read_text().strip()
    devices = fleet(2, public_key=public)
    code, out, _ = run(capsys, *update_args(broker, model, "--canary", "0"))  # unsigned
    report = json.loads(out)
    assert code == 1 and {(d["result"], d["step"]) for d in report["devices"]} == {("refused", "signature")}
    assert "unsigned" in report["devices"][0]["error"]
    code, out, _ = run(capsys, *update_args(broker, model, "--key", str(tmp_path / "keys" / "fleet.key")))
    assert code == 0 and json.loads(out)["summary"] == "2 updated"
    assert all(d.sha256 == hashlib.sha256(model.read_bytes()).hexdigest() for d in devices)
    # signed elsewhere: the manifest written by `sign`
    signed = tmp_path / "signed.json"
    key = str(tmp_path / "keys" / "fleet.key")
    run(
        capsys,
        "sign",
        str(model),
        "--pipeline",
        "digits",
        "--version",
        "3",
        "--key",
        key,
        "--out",
        str(signed),
    )
    argv = update_args(broker, model, "--signed", str(signed))
    argv[argv.index("--version") + 1] = "3"
    code, out, _ = run(capsys, *argv)
    assert code == 0 and json.loads(out)["summary"] == "2 updated"
    code, _, err = run(capsys, *update_args(broker, model, "--signed", str(signed)))  # version 2 != 3
    assert code == 1 and "signed for version '3'" in err


def test_only_online_devices_running_the_pipeline_are_targeted(
    broker: Mosquitto, fleet: Any, tracker: Tracker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet(2)
    other = FakeDevice(broker, "other0", tracker, pipelines=("fused",))
    try:
        broker.publish("edge/gone/status", {"state": "offline", "pipelines": ["digits"]}, retain=True)
        code, out, err = run(capsys, *update_args(broker, model, "--dry-run"))
        assert code == 0 and out == ""
        assert (
            "skipping gone: state offline" in err and "skipping other0: does not run pipeline 'digits'" in err
        )
        assert "canaries: dev0; then: dev1" in err
        code, out, _ = run(capsys, *update_args(broker, model))
        assert code == 0 and json.loads(out)["skipped"] == {
            "gone": "state offline",
            "other0": "does not run pipeline 'digits'",
        }
        code, _, err = run(capsys, *update_args(broker, model, "--devices", "cam-*"))
        assert code == 1 and "no online device" in err
        assert tracker.devices("start") == ["dev0", "dev1"] and other.commands == []
    finally:
        other.close()


def test_a_device_whose_retained_status_lies_fails_fast(
    broker: Mosquitto, fleet: Any, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet(1)
    broker.publish("edge/ghost/status", {"state": "online", "pipelines": ["digits"]}, retain=True)
    started = time.monotonic()
    code, out, _ = run(capsys, *update_args(broker, model, "--canary", "0"))
    report = json.loads(out)
    assert code == 1 and time.monotonic() - started < 10
    results = {d["device"]: (d["result"], d["error"]) for d in report["devices"]}
    assert results["dev0"] == ("updated", None)
    assert results["ghost"][0] == "failed" and "ghost is not listening" in results["ghost"][1]


def test_rollout_api_reports_every_step_in_order(broker: Mosquitto, fleet: Any, model: Path) -> None:
    fleet(2)
    steps: list[tuple[str, str]] = []
    lock = threading.Lock()

    def progress(device: str, step: str, details: Any) -> None:
        with lock:
            steps.append((device, step))

    artifact = describe_model(model, "digits", "2")
    with ExitStack() as stack:
        bus = stack.enter_context(MqttBus(BrokerOptions(broker.host, broker.port)).connect())
        devices = collect_devices(bus, "edge", wait_s=5, sync_topic=f"edge/_fleet/{bus.client_id}/sync")
        assert sorted(devices) == ["dev0", "dev1"]
        server = stack.enter_context(ModelServer(model))
        requester = Requester(bus, "edge").start()
        report = Rollout(requester, artifact, HttpDelivery(server), concurrency=1, on_progress=progress).run(
            sorted(devices), canaries=1
        )
    assert report.ok and report.updated == 2
    for name in ("dev0", "dev1"):
        mine = [s for d, s in steps if d == name]
        assert mine == ["waiting", "sent", *STEPS, "result"]
    assert steps.index(("dev0", "result")) < steps.index(("dev1", "sent"))


def test_cancel_stops_waiting_for_devices(broker: Mosquitto, fleet: Any, model: Path) -> None:
    fleet(2, {"dev0": "silent", "dev1": "silent"})
    artifact = describe_model(model, "digits", "2")
    with ExitStack() as stack:
        bus = stack.enter_context(MqttBus(BrokerOptions(broker.host, broker.port)).connect())
        server = stack.enter_context(ModelServer(model))
        rollout = Rollout(Requester(bus, "edge").start(), artifact, HttpDelivery(server), timeout_s=60)
        threading.Timer(0.5, rollout.cancel.set).start()
        started = time.monotonic()
        report = rollout.run(["dev0", "dev1"], canaries=0)
    assert time.monotonic() - started < 5
    assert report.cancelled and not report.ok
    assert [o.result for o in report.outcomes] == ["cancelled", "cancelled"]


def test_rollback_reports_each_device(
    broker: Mosquitto, fleet: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet(3, {"dev1": "no-rollback"})
    where = f"{broker.host}:{broker.port}"
    code, out, _ = run(capsys, "rollback", "--broker", where, "--pipeline", "digits", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert [(d["device"], d["ok"], d["error"]) for d in report["devices"]] == [
        ("dev0", True, None),
        ("dev1", False, "no previous version"),
        ("dev2", True, None),
    ]
    assert report["devices"][0]["sha256"] == "f" * 64
    code, out, _ = run(
        capsys, "rollback", "--broker", where, "--pipeline", "digits", "--devices", "dev0,dev2"
    )
    assert code == 0 and "2 rolled back, 0 failed" in out


def test_an_unreachable_broker_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    from devkit.processes import free_port

    code, _, err = run(capsys, "status", "--broker", f"127.0.0.1:{free_port()}")
    assert code == 1
    assert err.startswith("fleet.py status: error: 127.0.0.1:") and "cannot connect" in err
    assert err.count("\n") == 1


# --- the real daemon (acceptance) ----------------------------------------------------------------------


def _real_fleet(
    stack: ExitStack, tmp_path: Path, broker: Mosquitto, names: list[str], public_key: str | None
) -> tuple[Subscriber, list[Daemon]]:
    """Real daemons ``names`` (the digits config; ``[updates]`` trusting ``public_key``, or
    accepting unsigned updates when it is None), a subscriber to their status, health and events,
    once every one is online and has reported its health."""
    keys = f'public_keys = ["{public_key}"]\n' if public_key is not None else ""
    extra = f"\n[updates]\n{keys}"
    sub = stack.enter_context(broker.subscriber(["edge/+/status", "edge/+/health", "edge/+/events"]))
    daemons = [
        stack.enter_context(Daemon(digits_config(tmp_path, port=broker.port, device=name, extra=extra)))
        for name in names
    ]
    assert _wait_online(sub, names, 60), "\n".join(d.log()[-2000:] for d in daemons)
    return sub, daemons


def _wait_online(sub: Subscriber, devices: list[str], timeout: float) -> bool:
    def ready(_: Any) -> bool:
        online = {
            m.topic.split("/")[1] for m in sub.messages("edge/+/status") if m.json().get("state") == "online"
        }
        healthy = {m.topic.split("/")[1] for m in sub.messages("edge/+/health")}
        return set(devices) <= online & healthy

    return sub.wait_for(ready, timeout)


def _health_sha(sub: Subscriber, device: str) -> str | None:
    healths = sub.json(f"edge/{device}/health")
    if not healths:
        return None
    models = healths[-1].get("pipelines", {}).get("digits", {}).get("models") or [{}]
    sha: str | None = models[0].get("sha256")
    return sha


@pytest.mark.slow
def test_real_daemons_signed_update_canary_then_four(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keygen", "--out", str(tmp_path / "keys"))
    public = (tmp_path / "keys" / "fleet.pub").read_text().strip()
    names = [f"dev{i}" for i in range(5)]
    new_model = tmp_path / "digits_v2.tflite"  # the same network, different bytes: trailing padding
    new_model.write_bytes((MODELS / "digits_int8.tflite").read_bytes() + b"\0" * 16 + b"fleet-acceptance-v2")
    sha = hashlib.sha256(new_model.read_bytes()).hexdigest()
    with ExitStack() as stack:
        sub, daemons = _real_fleet(stack, tmp_path, broker, names, public)
        code, out, err = run(
            capsys,
            *update_args(broker, new_model, "--key", str(tmp_path / "keys" / "fleet.key")),
            "--canary",
            "1",
            "--concurrency",
            "4",
            "--timeout",
            "120",
        )
        report = json.loads(out)
        assert code == 0, (err, report, daemons[0].log()[-3000:])
        assert report["summary"] == "5 updated"
        canary, *others = report["devices"]
        assert canary["device"] == "dev0" and canary["canary"] and canary["steps"][-1] == "commit"
        assert all(o["started"] >= canary["finished"] for o in others)
        assert [o["result"] for o in others] == ["updated"] * 4
        assert wait_until(lambda: all(_health_sha(sub, n) == sha for n in names), 30), {
            n: _health_sha(sub, n) for n in names
        }
        committed = {
            m.topic.split("/")[1]
            for m in sub.messages("edge/+/events")
            if m.json().get("kind") == "model.committed"
        }
        assert committed == set(names)


@pytest.mark.slow
def test_real_daemon_probation_failure_rolls_back_and_halts(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keygen", "--out", str(tmp_path / "keys"))
    public = (tmp_path / "keys" / "fleet.pub").read_text().strip()
    constant = DATA / "constant_digits_int8.tflite"  # same inputs/outputs as digits, constant output
    names = ["dev0", "dev1"]
    with ExitStack() as stack:
        sub, _ = _real_fleet(stack, tmp_path, broker, names, public)
        original = {n: _health_sha(sub, n) for n in names}
        code, out, err = run(
            capsys,
            *update_args(broker, constant, "--key", str(tmp_path / "keys" / "fleet.key")),
            "--canary",
            "1",
            "--timeout",
            "120",
        )
        report = json.loads(out)
        assert code == 1, (err, report)
        canary, other = report["devices"]
        assert (canary["device"], canary["result"], canary["step"]) == ("dev0", "rolled back", "probation")
        assert canary["error"], "the rollback must say why"
        assert "sha256" in canary["steps"] and "swap" in canary["steps"]  # it passed staging
        assert (other["device"], other["result"]) == ("dev1", "not attempted") and report["halted"]
        events = [m.json() for m in sub.messages("edge/dev0/events")]
        rolled = [e for e in events if e.get("kind") == "model.rolled_back"]
        assert rolled and rolled[-1].get("message"), events
        assert not [
            m for m in sub.messages("edge/dev1/events") if str(m.json().get("kind", "")).startswith("model.")
        ]
        # read the serving model from health reports made after the rollback, not the last one
        # that happened to arrive (it may predate the rollback)
        after = rolled[-1]["ts"]
        for name in names:

            def fresh(ms: list[Any], name: str = name) -> bool:
                return any(m.topic == f"edge/{name}/health" and m.json()["ts"] > after for m in ms)

            assert sub.wait_for(fresh, 30), f"no health from {name} after the rollback"
            assert _health_sha(sub, name) == original[name]


@pytest.mark.slow
def test_real_daemon_update_over_mqtt_chunks(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    new_model = tmp_path / "digits_v3.tflite"
    new_model.write_bytes((MODELS / "digits_int8.tflite").read_bytes() + b"\0" * 16 + b"fleet-chunks-v3")
    sha = hashlib.sha256(new_model.read_bytes()).hexdigest()
    with ExitStack() as stack:
        sub, (daemon,) = _real_fleet(stack, tmp_path, broker, ["dev0"], None)  # unsigned updates pass
        argv = update_args(
            broker, new_model, "--transport", "mqtt", "--chunk-size", "8192", "--timeout", "60"
        )
        code, out, err = run(capsys, *argv)
        report = json.loads(out)
        assert code == 0, (err, report, daemon.log()[-3000:])
        assert report["summary"] == "1 updated" and report["devices"][0]["sha256"] == sha
        assert wait_until(lambda: _health_sha(sub, "dev0") == sha, 15)


@pytest.mark.slow
def test_the_wheel_ships_a_working_edge_fleet(tmp_path: Path) -> None:
    """``pip install '.[fleet]'`` gives an ``edge-fleet`` command: the project's wheel, installed in
    a new venv (the dependencies come from the test venv through a .pth file, so no download)."""
    import sysconfig
    import zipfile

    src = tmp_path / "src"  # a clean copy: setuptools leaves build/ behind in the tree it builds
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("edge_runtime-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "edge-fleet = edge_runtime.fleet.cli:main" in zf.read(entry_points).decode()
    assert "edge_runtime/fleet/cli.py" in names
    assert not any(n.startswith(("tests/", "tools/", "devkit/")) for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    proc = subprocess.run(
        [str(venv / "bin" / "edge-fleet"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "rollback" in proc.stdout and "status" in proc.stdout
