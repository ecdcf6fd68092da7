"""Data capture in the running daemon: a real `edge-runtime run` process on a real video with the
real digits model, a real mosquitto; budgets obeyed exactly (also across a restart), samples whole
after kill -9 at several moments, what a crash leaves swept at restart, the samples pulled with the
real `edge-fleet captures pull`, the commands' refusals of hostile payloads."""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video, write_vibration_csv
from edge_runtime.reporting.metrics import families

cv2 = pytest.importorskip("cv2")

FLEET = Path(sys.executable).with_name("edge-fleet")
_ids = itertools.count(1)


def capture_table(**settings: Any) -> str:
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f"\n[monitor.capture.digits]\n{lines}\n"


def folder_of(tmp_path: Path, device: str) -> Path:
    return tmp_path / f"state-{device}" / "captures" / "digits"


def sample_ids(folder: Path) -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in folder.glob("*.json")) if folder.is_dir() else []


def check_samples(folder: Path, quota: int) -> list[str]:
    """Every sample whole (JSON parses, each image there, of its size and sha256, and decodes);
    all the folder's bytes (orphans included) within the quota. Returns the sample ids."""
    ids = sample_ids(folder)
    for capture_id in ids:
        doc = json.loads((folder / f"{capture_id}.json").read_bytes())
        assert doc["id"] == capture_id and doc["pipeline"] == "digits"
        assert len(doc["model"]["sha256"]) == 64 and doc["result"]["result"]["type"] == "classification"
        assert doc["files"], doc
        for f in doc["files"]:
            data = (folder / f["name"]).read_bytes()
            assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and list(image.shape) == doc["frames"]["camera"]["shape"]
    assert sum(p.stat().st_size for p in folder.iterdir()) <= quota
    return ids


class Device:
    """A daemon's MQTT side: its health and its command replies."""

    def __init__(self, sub: Subscriber, device: str) -> None:
        self.sub = sub
        self.device = device

    def capture(self) -> dict[str, Any]:
        """The capture section of the latest live health (not a retained one of an earlier run)."""
        docs = [m.json() for m in self.sub.messages(f"edge/{self.device}/health") if not m.retain]
        return dict(docs[-1]["monitor"]["capture"]["digits"]) if docs else {}

    def wait_capture(self, test: Any, timeout: float = 60) -> dict[str, Any]:
        topic = f"edge/{self.device}/health"

        def ok(messages: list[Any]) -> bool:
            docs = [m.json() for m in messages if m.topic == topic and not m.retain]
            return bool(docs) and bool(test(docs[-1]["monitor"]["capture"].get("digits") or {}))

        assert self.sub.wait_for(ok, timeout), self.capture()
        return self.capture()

    def command(self, name: str, timeout: float = 30, **body: Any) -> dict[str, Any]:
        request_id = f"c{next(_ids)}"
        self.sub.publish(f"edge/{self.device}/cmd/{name}", {"id": request_id, **body})
        reply: dict[str, Any] = self.sub.expect(f"edge/{self.device}/reply/{request_id}", 1, timeout)[
            0
        ].json()
        return reply

    def wait_online(self) -> None:
        """Health published (the command subscription is made before it), and a ping answered."""
        self.wait_capture(lambda c: True)
        assert self.command("ping")["pong"] is True


def device_with(broker: Mosquitto, tmp_path: Path, device: str, **settings: Any) -> tuple[Path, Device]:
    config = digits_config(tmp_path, port=broker.port, device=device, extra=capture_table(**settings))
    sub = broker.subscriber([f"edge/{device}/health", f"edge/{device}/reply/#"])
    return config, Device(sub, device)


def test_a_daemon_stores_exactly_its_budget_and_a_restart_does_not_reset_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config, dev = device_with(broker, tmp_path, "cap-budget", random=1.0, per_minute=1000, per_hour=5)
    with dev.sub, Daemon(config) as daemon:
        seen = dev.wait_capture(lambda c: c.get("dropped_budget", 0) >= 20)
        assert seen["stored"] == 5 and seen["candidates"] == seen["stored"] + seen["dropped_budget"]
        assert seen["budget_used"]["hour"] == 5 and seen["dropped_behind"] == 0
        assert len(sample_ids(folder_of(tmp_path, "cap-budget"))) == 5
        health = [m.json() for m in dev.sub.messages("edge/cap-budget/health") if not m.retain][-1]
        metrics = {m.name: m.samples for m in families(health)}
        assert metrics["edge_runtime_capture_stored"][0].value == 5
        dropped = health["monitor"]["capture"]["digits"]["dropped_budget"]
        assert metrics["edge_runtime_capture_dropped_budget"][0].value == dropped
        assert metrics["edge_runtime_capture_samples"][0].labels == {"pipeline": "digits"}
        assert daemon.stop() == 0
    first = sample_ids(folder_of(tmp_path, "cap-budget"))
    dev = Device(broker.subscriber([f"edge/{dev.device}/health"]), dev.device)
    with dev.sub, Daemon(config) as daemon:  # the five on disk are in this hour's budget
        seen = dev.wait_capture(lambda c: c.get("dropped_budget", 0) >= 20)
        assert seen["stored"] == 0 and seen["budget_used"]["hour"] == 5 and seen["samples"] == 5
        assert daemon.stop() == 0
    assert sample_ids(folder_of(tmp_path, "cap-budget")) == first


def test_samples_stay_whole_through_kill_9_and_leftovers_are_swept_at_restart(tmp_path: Path) -> None:
    device, quota = "cap-kill", 40_000
    budgets = {"per_minute": 10_000, "per_hour": 100_000, "per_day": 100_000}
    config = digits_config(
        tmp_path, port=None, device=device, extra=capture_table(random=1.0, quota_bytes=quota, **budgets)
    )
    folder = folder_of(tmp_path, device)

    def newest() -> int:
        ids = sample_ids(folder)
        return int(ids[-1].rsplit("-", 1)[1]) if ids else 0

    def reached(target: int) -> bool:
        return newest() >= target

    for more in (3, 12, 31):  # kill -9 at several moments: early, mid-ring, after evictions began
        target = newest() + more
        with Daemon(config) as daemon:
            assert wait_until(functools.partial(reached, target), 60), daemon.log()[-3000:]
            daemon.kill9()
        check_samples(folder, quota)
    assert newest() >= 46 and len(sample_ids(folder)) < 46  # the ring evicted while it was killed
    # what a crash can leave: a half-written temporary file and an image whose JSON never came
    kept = sample_ids(folder)
    temp = folder / f".{kept[-1]}.jpg.tmp-99999"
    temp.write_bytes(b"\xff\xd8 half a jpeg")
    orphan = folder / "20200101T000000.000Z-000001.jpg"
    orphan.write_bytes((folder / f"{kept[-1]}.jpg").read_bytes())
    with Daemon(config) as daemon:
        assert wait_until(lambda: not temp.exists() and not orphan.exists(), 60), daemon.log()[-3000:]
        assert wait_until(lambda: newest() >= int(kept[-1].rsplit("-", 1)[1]) + 5, 60)
        assert daemon.stop() == 0
    seqs = [int(i.rsplit("-", 1)[1]) for i in check_samples(folder, quota)]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # the newest, contiguous: the oldest went first
    assert "captures: removed" in daemon.log()


def test_the_fleet_tool_pulls_every_capture_byte_for_byte(tmp_path: Path, broker: Mosquitto) -> None:
    config, dev = device_with(broker, tmp_path, "cap-pull", random=1.0, per_minute=1000, per_hour=6)
    device_folder = folder_of(tmp_path, "cap-pull")
    with dev.sub, Daemon(config) as daemon:
        dev.wait_capture(lambda c: c.get("stored") == 6 and c.get("dropped_budget", 0) >= 1)
        ids = sample_ids(device_folder)
        assert len(ids) == 6

        def pull(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
            where = ["--broker", f"{broker.host}:{broker.port}"]
            args = [str(FLEET), "captures", "pull", "--device", "cap-pull", "--out", str(out), *where, *extra]
            return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)

        done = pull(tmp_path / "pulled")
        assert done.returncode == 0, done.stderr
        assert "6 samples of digits" in done.stdout
        pulled = tmp_path / "pulled" / "digits"
        device_files = sorted(p.name for p in device_folder.iterdir())
        assert sorted(p.name for p in pulled.iterdir()) == device_files and len(device_files) == 12
        for name in device_files:
            assert (pulled / name).read_bytes() == (device_folder / name).read_bytes(), name
        again = pull(tmp_path / "pulled")  # a repeated pull fetches no image again
        assert again.returncode == 0 and "6 already there" in again.stdout, again.stdout + again.stderr
        since = json.loads((device_folder / f"{ids[2]}.json").read_bytes())["ts"]
        later = pull(tmp_path / "later", "--since", str(since))
        assert later.returncode == 0, later.stderr
        assert sample_ids(tmp_path / "later" / "digits") == ids[3:]
        # the chunks themselves: a file in 1 KiB chunks, reassembled, sha256 as named
        name = f"{ids[0]}.json"
        first = dev.command("capture.fetch", pipeline="digits", capture=ids[0], file=name, chunk_bytes=1024)
        assert first["ok"] and first["total"] >= 2 and first["index"] == 0
        parts = [base64.b64decode(first["data"])]
        for index in range(1, first["total"]):
            reply = dev.command(
                "capture.fetch", pipeline="digits", capture=ids[0], file=name, index=index, chunk_bytes=1024
            )
            parts.append(base64.b64decode(reply["data"]))
        data = b"".join(parts)
        assert (
            data == (device_folder / name).read_bytes()
            and hashlib.sha256(data).hexdigest() == first["sha256"]
        )
        listed = dev.command("capture.list", pipeline="digits", limit=4)
        assert [r["id"] for r in listed["captures"]] == ids[:4] and listed["more"] is True
        assert dev.command("capture.list")["pipelines"] == ["digits"]
        failed = subprocess.run(
            [str(FLEET), "captures", "pull", "--device", "cap-pull", "--out", str(tmp_path / "x"),
             "--broker", f"{broker.host}:{broker.port}", "--pipeline", "nope"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert failed.returncode == 1 and "no capturing pipeline 'nope'" in failed.stderr
        assert daemon.stop() == 0


def test_capture_now_takes_the_next_results_and_hostile_commands_are_refused(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config, dev = device_with(broker, tmp_path, "cap-cmd", per_hour=1000)  # a table without rules
    folder = folder_of(tmp_path, "cap-cmd")
    with dev.sub, Daemon(config) as daemon:
        dev.wait_online()
        assert dev.capture()["candidates"] == 0
        reply = dev.command("capture.now", pipeline="digits", count=3)
        assert reply["ok"] and reply["armed"] == 3
        seen = dev.wait_capture(lambda c: c.get("stored") == 3)
        assert seen["armed"] == 0 and seen["candidates"] == 3
        ids = sample_ids(folder)
        assert len(ids) == 3
        assert all(json.loads((folder / f"{i}.json").read_bytes())["reasons"] == ["command"] for i in ids)
        good = {"pipeline": "digits", "capture": ids[0]}
        hostile: list[tuple[str, dict[str, Any], str]] = [
            ("capture.fetch", {**good, "capture": "../../../etc/passwd"}, "bad capture id"),
            ("capture.fetch", {**good, "file": "../../../etc/passwd"}, "bad file name"),
            ("capture.fetch", {**good, "file": f"{ids[1]}.json"}, "bad file name"),
            ("capture.fetch", {**good, "file": f"{ids[0]}.x/../../x.json"}, "bad file name"),
            ("capture.fetch", {**good, "capture": "20990101T000000.000Z-000001"}, "(evicted?)"),
            ("capture.fetch", {**good, "pipeline": "../digits"}, "no capturing pipeline"),
            ("capture.fetch", {**good, "index": -1}, "index must be between 0 and 0"),
            ("capture.fetch", {**good, "index": 10**12}, "index must be between 0 and 0"),
            ("capture.fetch", {**good, "chunk_bytes": 10**9}, "chunk_bytes must be between"),
            ("capture.fetch", {**good, "capture": 5}, "wrong type"),
            ("capture.fetch", {**good, "path": "/etc/passwd"}, "unknown arguments"),
            ("capture.list", {"pipeline": "digits", "limit": 0}, "limit must be between"),
            ("capture.list", {"pipeline": "digits", "after": "../x"}, "bad capture id"),
            ("capture.list", {"pipeline": "digits", "since": 1e306}, "since must be a Unix time"),
            ("capture.list", {"pipeline": "digits", "since": -1}, "since must be a Unix time"),
            ("capture.now", {"pipeline": "digits", "count": 1000}, "count must be between"),
            ("capture.now", {"pipeline": "nope"}, "no capturing pipeline"),
        ]
        for name, body, error in hostile:
            refused = dev.command(name, **body)
            assert refused["ok"] is False and error in refused["error"], (name, body, refused)
        assert dev.command("ping")["pong"] is True
        before = dev.capture()
        assert sample_ids(folder) == ids and before["stored"] == 3  # nothing captured by the refusals
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0


def test_a_fused_pipeline_keeps_its_frame_and_sensor_window_and_a_clean_stop_writes_every_sample(
    tmp_path: Path,
) -> None:
    with np.load(MODELS / "digits_heldout.npz") as data:
        write_digits_video(tmp_path / "digits.avi", list(data["images"][:40]), fps=20.0)
    write_vibration_csv(tmp_path / "vib.csv", [(0.0, "idle"), (3.0, "running")], 8.0)
    image = {"kind": "image", "source": "camera", "input": "image", "resize": "crop", "color": "gray"}
    window = {"kind": "window", "source": "vib", "input": "vibration", "channels": ["ax", "ay", "az"]}
    fused = {
        "path": str(MODELS / "fused_int8.tflite"),
        "inputs": [{**image, "std": 255.0}, {**window, "window_s": 0.64, "samples": 64, "max_age_s": 0.5}],
        "postprocess": {
            "state": {"type": "classification", "output": 0},
            "digit": {"type": "classification", "output": 1},
        },
    }
    config = {
        "device": {"id": "cap-fused", "state_dir": str(tmp_path / "state")},
        "mqtt": {"enabled": False},
        "http": {"enabled": False},
        "monitor": {"capture": {"p": {"random": 1.0, "per_minute": 1000}}},
        "sources": {
            "camera": {"type": "camera", "uri": str(tmp_path / "digits.avi"), "realtime": True, "loop": True},
            "vib": {"type": "replay", "path": str(tmp_path / "vib.csv"), "format": "csv", "loop": True},
        },
        "pipelines": [{"name": "p", "trigger": {"every_s": 0.1}, "models": [fused]}],
    }
    service = Service(validate(config, tmp_path), [], max_results=12, duration_s=120)
    service.run(install_signals=False)
    assert service.stop_reason == "max results reached", service.stop_reason
    folder = tmp_path / "state" / "captures" / "p"
    ids = sample_ids(folder)
    stats = service.monitor.capture.stats()["p"]
    assert len(ids) == stats["stored"] == stats["candidates"] >= 12  # none lost at the stop
    for capture_id in ids:
        doc = json.loads((folder / f"{capture_id}.json").read_bytes())
        assert doc["channels"] == {"vibration": ["ax", "ay", "az"]}
        values = np.asarray(doc["inputs"]["vibration"], dtype=np.float64)
        assert values.shape == (1, 64, 3) and np.isfinite(values).all() and values.std() > 0
        assert set(doc["result"]["result"]) >= {"state", "digit"}
        assert doc["model"]["name"] == "fused_int8" and doc["reasons"] == ["random"]
        frame = cv2.imdecode(np.frombuffer((folder / f"{capture_id}.jpg").read_bytes(), np.uint8), 1)
        assert list(frame.shape) == doc["frames"]["camera"]["shape"]
    # the layout is the optimizer's captures format: a real `edge-runtime optimize` reads every sample
    out = tmp_path / "fused_from_captures.tflite"
    float_model = Path(__file__).parent / "data" / "float" / "fused_float.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "optimize", str(float_model), "--calibration", str(folder),
         "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["calibration"]["kind"] == "captures" and report["calibration"]["skipped"] == []
    assert report["calibration"]["samples"] + report["verification"]["samples"] == len(ids)


def test_a_reload_restarts_capture_with_its_budget_seeded_from_disk(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config, dev = device_with(broker, tmp_path, "cap-reload", random=1.0, per_minute=1000, per_hour=4)
    topic = "edge/cap-reload/health"

    def after_reload(test: Any) -> Any:
        def ok(messages: list[Any]) -> bool:
            docs = [m.json() for m in messages if m.topic == topic and not m.retain]
            last: dict[str, Any] = docs[-1] if docs else {"reloads": 0}
            return last["reloads"] == 1 and bool(test(last["monitor"]["capture"]["digits"]))

        return ok

    with dev.sub, Daemon(config) as daemon:
        dev.wait_capture(lambda c: c.get("stored") == 4 and c.get("dropped_budget", 0) >= 5)
        daemon.proc.send_signal(signal.SIGHUP)
        assert dev.sub.wait_for(after_reload(lambda c: c["dropped_budget"] >= 10), 60), daemon.log()[-3000:]
        seen = dev.capture()
        assert seen["stored"] == 0 and seen["budget_used"]["hour"] == 4 and seen["samples"] == 4
        assert len(sample_ids(folder_of(tmp_path, "cap-reload"))) == 4
        assert daemon.log().count("thread.crashed") == 0
        assert daemon.stop() == 0
