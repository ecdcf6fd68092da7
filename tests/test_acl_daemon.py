"""What edge-runtime does under a broker ACL that refuses part of what it publishes: the real
daemon, a real mosquitto with a password file and an ACL, MQTT 5 (PUBACK reason codes).

The device may write its status, health, events and replies, but not its results. Each refused
result is answered with PUBACK 0x87 "Not authorized": the daemon counts it (``rejected`` in its MQTT
statistics), logs it, does not retry it for ever (the outbox drains) and goes on serving; what the
ACL allows keeps arriving, and nothing the device publishes reaches a topic it may not write.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.processes import wait_until


def test_results_refused_by_the_acl_are_counted_and_logged_and_the_rest_flows(
    tmp_path: Path, make_broker: Callable[..., Mosquitto]
) -> None:
    device = f"acl-{uuid.uuid4().hex[:8]}"
    acl = f"""
user {device}
topic write edge/{device}/status
topic write edge/{device}/health
topic write edge/{device}/events
topic write edge/{device}/reply/#
topic read edge/{device}/cmd/#

user watcher
topic readwrite #
"""
    broker = make_broker(users={device: "dev-secret", "watcher": "watch-secret"}, acl=acl)
    (tmp_path / "pw").write_text("dev-secret\n")
    config = digits_config(
        tmp_path,
        port=broker.port,
        device=device,
        mqtt=f'username = "{device}"\npassword_file = "{tmp_path / "pw"}"\n',
    )
    with (
        broker.subscriber("#", username="watcher", password="watch-secret") as watcher,
        Daemon(config) as daemon,
    ):
        # what the ACL allows arrives: the online status, health, and commands are answered
        assert watcher.wait_for(lambda ms: any(m.topic == f"edge/{device}/health" for m in ms), 30), (
            daemon.log()
        )
        assert watcher.wait_for(lambda ms: any(m.topic == f"edge/{device}/status" for m in ms), 30)
        code = watcher.publish(f"edge/{device}/cmd/ping", {"id": "p1"})
        assert not code.is_failure, code
        reply = watcher.expect(f"edge/{device}/reply/p1", timeout=30)[-1].json()
        assert reply["ok"] is True and reply["pong"] is True
        # the results are refused, one PUBACK 0x87 each, and logged as such
        assert wait_until(lambda: daemon.log().count("broker rejected message") >= 20, 30), daemon.log()[
            -3000:
        ]
        # ... and reported in health (published: the ACL lets the device write it)
        assert watcher.wait_for(
            lambda ms: any(
                m.topic == f"edge/{device}/health" and m.json()["mqtt"]["rejected"] >= 20 for m in ms
            ),
            30,
        ), [m.json()["mqtt"] for m in watcher.messages(f"edge/{device}/health")][-3:]
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    log = daemon.log()
    printed = daemon.count()
    mqtt = stats_line(log, "reporting", "mqtt")
    outbox = stats_line(log, "reporting", "outbox")
    rejected_lines = [line for line in log.splitlines() if "mqtt: broker rejected message" in line]
    assert all(re.search(r"rejected message \d+: Not authorized$", line) for line in rejected_lines), (
        rejected_lines[:3]
    )
    # every result printed was refused and counted; none is kept for a retry that cannot succeed
    assert mqtt["rejected"] == len(rejected_lines) >= printed > 20, (mqtt, printed)
    assert outbox["depth"] == 0 and outbox["dropped"] == 0, outbox
    # nothing reached a topic the device may not write
    assert not [m.topic for m in watcher.messages() if "/pipelines/" in m.topic]
    assert "Denied PUBLISH" in broker.log_text()
    assert "dev-secret" not in log
