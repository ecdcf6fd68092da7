"""A model update carries its drift reference (issue 15): signed with the model, kept with it in
the store, used by the monitor after the swap, restored by a rollback and found again after a
restart. A real daemon process, a real broker, the real digits models and real Ed25519 keys."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import DATA, MODELS
from edge_runtime.fleet.cli import main
from edge_runtime.monitor.drift import manifest_reference
from edge_runtime.updates.protocol import reference_digest
from edge_runtime.updates.signing import SignedFields, generate_keypair, sign

DIGITS = MODELS / "digits_int8.tflite"
V2 = DATA / "digits_v2_int8.tflite"  # digits with another description: another sha256, same behaviour
DEVICE = "otaref-ref1"
BASE = f"edge/{DEVICE}"


def update(
    path: Path, version: str, key: bytes, reference: dict[str, Any] | None, signed_reference: Any = "same"
) -> dict[str, Any]:
    """A signed ``model.update`` of ``path`` carrying ``reference``; its signature covers
    ``signed_reference`` (by default the same reference: pass another to forge a swap)."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    signed = reference if signed_reference == "same" else signed_reference
    digest = reference_digest(signed) if signed is not None else None
    body: dict[str, Any] = {
        "pipeline": "digits",
        "url": f"file://{path}",
        "sha256": sha,
        "size": len(data),
        "version": version,
        "signature": sign(key, SignedFields.update("digits", version, sha, len(data), None, digest)),
    }
    if reference is not None:
        body["reference"] = reference
    return body


def send(sub: Subscriber, command: str, request_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send a command; every reply up to the final one (or the first refusal)."""
    sub.publish(f"{BASE}/cmd/{command}", json.dumps({"id": request_id, **body}).encode(), qos=1)
    topic = f"{BASE}/reply/{request_id}"

    def done(ms: list[Any]) -> bool:
        replies = [m.json() for m in ms if m.topic == topic]
        return any(r.get("final") or not r["ok"] or command != "model.update" for r in replies)

    assert sub.wait_for(done, 90), sub.json(topic)
    return sub.json(topic)


def drift_after(sub: Subscriber, since: float, **want: Any) -> dict[str, Any]:
    """The drift section of the latest health report after ``since`` whose fields equal ``want``
    (``level`` may be a set of levels)."""

    def fits(drift: dict[str, Any]) -> bool:
        return all(drift.get(k) in v if isinstance(v, set) else drift.get(k) == v for k, v in want.items())

    def report(ms: list[Any]) -> dict[str, Any] | None:
        for m in reversed(ms):
            if m.topic != f"{BASE}/health":
                continue
            doc = m.json()
            drift = (doc.get("monitor") or {}).get("drift", {}).get("digits")
            if doc["ts"] > since and drift is not None and fits(drift):
                return dict(drift)
        return None

    assert sub.wait_for(lambda ms: report(ms) is not None, 60), sub.json(f"{BASE}/health")[-1]["monitor"]
    found = report(sub.messages(f"{BASE}/health"))
    assert found is not None
    return found


def wait_input(sub: Subscriber) -> bool:
    def fed(ms: list[Any]) -> bool:
        h = [m.json() for m in ms if m.topic == f"{BASE}/health"]
        inp = h[-1]["monitor"]["drift"].get("digits", {}).get("input", {}) if h else {}
        return bool(inp.get("samples", 0) >= 3)

    return sub.wait_for(fed, 30)


def last_ts(sub: Subscriber) -> float:
    return float(sub.json(f"{BASE}/health")[-1]["ts"])


def test_an_update_carries_its_reference_through_swap_tamper_rollback_and_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    private, public = generate_keypair()
    manifest_ref = manifest_reference(DIGITS)
    assert manifest_ref is not None
    # R1 says nearly every digit is a 0: the digits video drifts against it
    skewed = copy.deepcopy(manifest_ref)
    skewed["class_rates"] = [0.91] + [0.01] * 9
    # R2: the class rates of the 60 digits the video loops over (it reads ok or watch against it)
    with np.load(MODELS / "digits_heldout.npz") as data:
        counts = np.bincount(data["labels"][:60], minlength=10)
    same = {**copy.deepcopy(manifest_ref), "class_rates": [round(float(n) / 60, 6) for n in counts]}
    extra = f'[updates]\npublic_keys = ["{public}"]\nprobation_s = 20\nprobation_results = 10\n'
    extra += "allow_file_urls = true\n\n[monitor.drift]\nwindow = 60\nmin_results = 30\n"
    config = digits_config(tmp_path, port=broker.port, device=DEVICE, extra=extra)
    v2_sha = hashlib.sha256(V2.read_bytes()).hexdigest()
    digits_sha = hashlib.sha256(DIGITS.read_bytes()).hexdigest()
    started = time.time()
    with Subscriber(broker.host, broker.port, [f"{BASE}/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        drift_after(
            sub, started, reference_sha256=reference_digest(manifest_ref), reference_origin="manifest"
        )

        replies = send(sub, "model.update", "r1", update(V2, "2", private, skewed))
        assert replies[-1]["ok"] and replies[-1]["step"] == "commit", replies
        got = drift_after(sub, last_ts(sub), reference_sha256=reference_digest(skewed), level="drift")
        assert got["reference_origin"] == "update" and got["model_sha256"] == v2_sha, got

        # the signature covers R2; the request carries R1 instead: refused before anything is fetched
        forged = update(DIGITS, "3", private, skewed, signed_reference=same)
        replies = send(sub, "model.update", "forged", forged)
        assert len(replies) == 1 and replies[0]["ok"] is False and replies[0]["step"] == "signature", replies
        assert "drift reference sha256" in replies[0]["error"], replies
        assert "matches none of the 1 configured public key" in replies[0]["error"], replies
        # a reference added to a request signed without one: refused the same way
        added = {**update(DIGITS, "3", private, None), "reference": same}
        replies = send(sub, "model.update", "added", added)
        assert replies[-1]["ok"] is False and replies[-1]["step"] == "signature", replies

        replies = send(sub, "model.update", "r2", update(DIGITS, "3", private, same))
        assert replies[-1]["ok"] and replies[-1]["step"] == "commit", replies
        got = drift_after(sub, last_ts(sub), reference_sha256=reference_digest(same), level={"ok", "watch"})
        assert "inputs" in same and wait_input(sub), sub.json(f"{BASE}/health")[-1]["monitor"]["drift"]
        assert got["model_sha256"] == digits_sha and got["psi"] < 0.25, got

        listing = send(sub, "model.list", "list", {"pipeline": "digits"})[-1]
        stored = {v["version"]: v["reference_sha256"] for v in listing["versions"]}
        assert stored == {"2": reference_digest(skewed), "3": reference_digest(same)}, listing

        rollback = {
            "pipeline": "digits",
            "version": "2",
            "rollback_from": "3",
            "signature": sign(private, SignedFields.rollback("digits", "2", "3")),
        }
        reply = send(sub, "model.rollback", "back", rollback)[-1]
        assert reply["ok"] and reply["version"] == "2", reply
        got = drift_after(sub, last_ts(sub), reference_sha256=reference_digest(skewed), level="drift")
        assert got["model_sha256"] == v2_sha, got
        assert daemon.stop() == 0

    restarted = time.time()  # the health report is retained: only one from the new process counts
    with Subscriber(broker.host, broker.port, [f"{BASE}/#"]) as sub, Daemon(config) as daemon:
        got = drift_after(sub, restarted, reference_sha256=reference_digest(skewed), level="drift")
        assert got["reference_origin"] == "update" and got["model_sha256"] == v2_sha, got
        assert daemon.stop() == 0
    store = tmp_path / f"state-{DEVICE}" / "models" / "digits"
    kept = store / f"{v2_sha}.reference.json"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == reference_digest(skewed)


def test_edge_fleet_update_sends_the_reference_from_the_manifest_beside_the_model(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    public = (tmp_path / "keys" / "fleet.pub").read_text().strip()
    manifest_ref = manifest_reference(DIGITS)
    assert manifest_ref is not None
    skewed = {**copy.deepcopy(manifest_ref), "class_rates": [0.01] * 9 + [0.91]}
    release = tmp_path / "release"
    release.mkdir()
    model = release / "digits_v2.tflite"
    shutil.copyfile(V2, model)
    manifest = {"models": {"digits": {"file": "digits_v2.tflite", "monitor_reference": skewed}}}
    (release / "manifest.json").write_text(json.dumps(manifest))
    device = "otaref-fleet1"
    extra = f'[updates]\npublic_keys = ["{public}"]\nprobation_results = 10\n'
    config = digits_config(tmp_path, port=broker.port, device=device, extra=extra)
    started = time.time()
    with Subscriber(broker.host, broker.port, [f"edge/{device}/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms), 30), daemon.log()
        capsys.readouterr()
        code = main(
            ["update", "--broker", f"{broker.host}:{broker.port}", "--model", str(model),
             "--pipeline", "digits", "--version", "2", "--key", str(tmp_path / "keys" / "fleet.key"),
             "--devices", device, "--timeout", "120", "--json"]
        )  # fmt: skip
        out, err = capsys.readouterr()
        report = json.loads(out)
        assert code == 0 and report["summary"] == "1 updated", (err, report, daemon.log()[-3000:])
        assert report["artifact"]["reference_sha256"] == reference_digest(skewed), report["artifact"]

        def drift(ms: list[Any]) -> dict[str, Any] | None:
            healths = [m.json() for m in ms if m.topic == f"edge/{device}/health"]
            latest = healths[-1] if healths and healths[-1]["ts"] > started else {}
            found: dict[str, Any] | None = (latest.get("monitor") or {}).get("drift", {}).get("digits")
            return found

        want = reference_digest(skewed)
        assert sub.wait_for(lambda ms: (drift(ms) or {}).get("reference_sha256") == want, 30), drift(
            sub.messages(f"edge/{device}/health")
        )
        assert daemon.stop() == 0
