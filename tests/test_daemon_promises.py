"""README promises about a running daemon that had no test of their own, each on a real daemon
process, a real mosquitto and the real digits model:

- ``seq`` goes on across a reload (SIGHUP and the ``reload`` command): no gap, no repeat, on
  stdout and in the raw arrival order at a subscriber;
- a broker that refuses the connection, goes away and comes back refusing is logged once per
  change (at WARNING; the repeats of an unchanged cause only at DEBUG) and reported by one event
  per change.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.delivery import assert_drained_in_order
from devkit.mqtt_client import Subscriber
from devkit.mqtt_types import Received
from devkit.processes import wait_until


def unique(prefix: str) -> str:
    """A device id of this test only (another suite's broker may reuse a freed port)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def events(messages: list[Received], kind: str) -> list[dict[str, Any]]:
    found = []
    for m in messages:
        if m.topic.endswith("/events"):
            event = m.json()
            if event["kind"] == kind:
                found.append(event)
    return found


def test_seq_goes_on_across_a_sighup_and_a_reload_command(tmp_path: Path, broker: Mosquitto) -> None:
    device = unique("reload")
    config = digits_config(tmp_path, port=broker.port, device=device)
    results = f"edge/{device}/pipelines/digits/results"
    with (
        Subscriber(broker.host, broker.port, [f"edge/{device}/#"]) as sub,
        Daemon(config) as daemon,
    ):
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == results]) >= 10, 30), daemon.log()
        marks: list[int] = []
        for how in ("SIGHUP", "command"):
            before = daemon.count()
            if how == "SIGHUP":
                daemon.proc.send_signal(signal.SIGHUP)
            else:
                code = sub.publish(f"edge/{device}/cmd/reload", {"id": "r1"})
                assert not code.is_failure, code
            reloads = len(marks) + 1

            def reloaded(ms: list[Received], n: int = reloads) -> bool:
                return len(events(ms, "config.reloaded")) >= n

            assert sub.wait_for(reloaded, 30), (
                how,
                daemon.log()[-3000:],
            )
            marks.append(before)
            # results flow again from the rebuilt pipeline
            assert wait_until(lambda: daemon.count() >= before + 10, 30), (how, daemon.log()[-3000:])  # noqa: B023
        reply = sub.expect(f"edge/{device}/reply/r1")[-1].json()
        assert reply["ok"] is True, reply
        assert daemon.stop() == 0
        printed = [int(r["seq"]) for r in daemon.results]
        assert sub.wait_for(
            lambda ms: len({m.json()["seq"] for m in ms if m.topic == results}) >= len(printed), 30
        )
    # the reloads happened between results: some before the first, some between, some after
    assert 0 < marks[0] < marks[1] < len(printed), (marks, len(printed))
    # stdout: every seq once, consecutive through both reloads
    assert printed == list(range(1, len(printed) + 1)), [
        (a, b) for a, b in itertools.pairwise(printed) if b != a + 1
    ]
    # the subscriber: first arrivals 1..N in order, any repeat an identical redelivery
    assert_drained_in_order(sub.messages(results), len(printed))
    assert "Traceback" not in daemon.log()


WARNING_RE = re.compile(r" WARNING edge_runtime\.reporting\.mqtt: mqtt: (.*)$")
DEBUG_RE = re.compile(r" DEBUG edge_runtime\.reporting\.mqtt: mqtt: (.*)$")


def _mqtt_lines(log: str, pattern: re.Pattern[str]) -> list[str]:
    return [m.group(1) for m in map(pattern.search, log.splitlines()) if m]


def test_connection_failures_are_logged_once_per_change(tmp_path: Path, make_broker: Any) -> None:
    broker = make_broker(users={"owner": "right-password"})
    device = unique("refused")
    (tmp_path / "badpw").write_text("wrong-password\n")
    mqtt = f'username = "owner"\npassword_file = "{tmp_path / "badpw"}"\n'
    config = digits_config(tmp_path, port=broker.port, device=device, mqtt=mqtt)
    refused = f"broker 127.0.0.1:{broker.port} refused the connection: Not authorized"
    unreachable = f"cannot connect to 127.0.0.1:{broker.port}: Connection refused"

    def repeats(daemon: Daemon, cause: str, n: int) -> bool:
        return _mqtt_lines(daemon.log(), DEBUG_RE).count(cause) >= n

    with Daemon(config, "--set", "device.log_level=debug") as daemon:
        # phase 1: the broker refuses the password, attempt after attempt
        assert wait_until(lambda: repeats(daemon, refused, 3), 60), daemon.log()[-3000:]
        # phase 2: the broker is gone
        broker.stop()
        assert wait_until(lambda: repeats(daemon, unreachable, 3), 60), daemon.log()[-3000:]
        # phase 3: back, still refusing
        broker.start()
        assert wait_until(lambda: repeats(daemon, refused, 6), 60), daemon.log()[-3000:]
        assert daemon.stop() == 0
    log = daemon.log()
    warnings = _mqtt_lines(log, WARNING_RE)
    # one WARNING per change of cause, in the order the causes came
    assert warnings == [refused, unreachable, refused], warnings
    mqtt_stats = stats_line(log, "reporting", "mqtt")
    assert mqtt_stats["connects"] == 0 and mqtt_stats["reconnect_attempts"] >= 9, mqtt_stats
    # one event per change, waiting in the outbox (never connected: nothing was forwarded)
    with sqlite3.connect(tmp_path / f"state-{device}" / "outbox.sqlite") as conn:
        kinds = [
            (event["kind"], event["message"])
            for (payload,) in conn.execute(
                "SELECT payload FROM messages WHERE topic LIKE '%/events' ORDER BY id"
            )
            if (event := json.loads(payload))["kind"].startswith("mqtt.")
        ]
    assert kinds == [
        ("mqtt.refused", refused),
        ("mqtt.unreachable", unreachable),
        ("mqtt.refused", refused),
    ], kinds
    assert "wrong-password" not in log
