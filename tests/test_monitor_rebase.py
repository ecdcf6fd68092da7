"""``monitor.rebase`` and per-camera tamper options on a real daemon process: two cameras play a
real video whose scene changes; one camera has its own options (``moved`` not judged, other dark
thresholds). A real broker; the rebase is a remote command."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.media import noisy, scene, write_video
from devkit.mqtt_client import Subscriber

DEVICE = "otaref-rebase1"
BASE = f"edge/{DEVICE}"

MONITOR = """
[sources.ptz]
type = "camera"
uri = "{video}"
realtime = true
loop = true

[monitor.tamper]
hold_s = 0.3
check_hz = 10.0

[monitor.tamper.sources.ptz]
states = ["dark", "bright", "covered", "blurred", "frozen"]
dark_enter = 200.0
dark_leave = 210.0
"""


def tamper(ms: list[Any], source: str, state: str, active: bool) -> list[dict[str, Any]]:
    found = []
    for m in ms:
        if m.topic != f"{BASE}/events":
            continue
        doc = m.json()
        f = doc.get("fields") or doc
        if doc.get("kind") == "source.tamper" and (f.get("source"), f.get("state"), f.get("active")) == (
            source,
            state,
            active,
        ):
            found.append(doc)
    return found


def command(sub: Subscriber, request_id: str, args: dict[str, Any]) -> dict[str, Any]:
    sub.publish(f"{BASE}/cmd/monitor.rebase", json.dumps({"id": request_id, **args}).encode(), qos=1)
    topic = f"{BASE}/reply/{request_id}"
    assert sub.wait_for(lambda ms: any(m.topic == topic for m in ms), 30)
    reply: dict[str, Any] = sub.json(topic)[-1]
    return reply


def test_rebase_clears_moved_and_per_camera_options_apply_to_that_camera_only(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rng = np.random.default_rng(15)
    first, second = scene(1, 320, 240), scene(2, 320, 240)
    frames = [noisy(first, rng) for _ in range(30)] + [noisy(second, rng) for _ in range(900)]
    video = write_video(tmp_path / "turned.avi", frames, 20.0)
    extra = MONITOR.format(video=video)
    config = digits_config(tmp_path, port=broker.port, device=DEVICE, extra=extra)
    config.write_text(config.read_text().replace(str(tmp_path / "digits.avi"), str(video)))
    with Subscriber(broker.host, broker.port, [f"{BASE}/#"]) as sub, Daemon(config) as daemon:
        # the main camera's view moved from the first scene; the PTZ camera (same video) is not judged
        # for moves, and its own dark thresholds call this mid-grey scene dark
        assert sub.wait_for(lambda ms: bool(tamper(ms, "camera", "moved", True)), 60), daemon.log()[-3000:]
        assert sub.wait_for(lambda ms: bool(tamper(ms, "ptz", "dark", True)), 30), daemon.log()[-3000:]

        refused = command(sub, "r-unknown", {"source": "nope"})
        assert refused["ok"] is False and "no camera 'nope'" in refused["error"], refused
        assert "camera, ptz" in refused["error"], refused
        hostile = command(sub, "r-hostile", {"source": ["camera"]})
        assert hostile["ok"] is False and "wrong type" in hostile["error"], hostile
        assert not tamper(sub.messages(f"{BASE}/events"), "camera", "moved", False)

        asked = time.time()
        reply = command(sub, "r-camera", {"source": "camera"})
        assert reply["ok"] is True and reply["rebased"] == ["camera"], reply
        assert sub.wait_for(lambda ms: bool(tamper(ms, "camera", "moved", False)), 20), daemon.log()[-3000:]
        cleared = tamper(sub.messages(f"{BASE}/events"), "camera", "moved", False)[0]
        assert cleared["ts"] >= asked - 1, cleared
        events = [m.json() for m in sub.messages(f"{BASE}/events")]
        assert any(e["kind"] == "monitor.rebased" for e in events), events

        everyone = command(sub, "r-all", {})
        assert everyone["ok"] is True and sorted(everyone["rebased"]) == ["camera", "ptz"], everyone

        health = sub.json(f"{BASE}/health")[-1]["monitor"]["tamper"]
        assert "moved" not in health["ptz"]["states"] and health["ptz"]["states"]["dark"] is True, health
        assert health["camera"]["states"]["dark"] is False and health["ptz"]["checks"] > 10, health
        assert not tamper(sub.messages(f"{BASE}/events"), "ptz", "moved", True)
        assert not tamper(sub.messages(f"{BASE}/events"), "camera", "dark", True)
        assert daemon.stop() == 0
