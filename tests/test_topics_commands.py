from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.daemon.commands import redact
from edge_runtime.reporting.commands import ArgSpec, CommandDispatcher, CommandError, parse_command
from edge_runtime.reporting.topics import Topics, safe_level


def test_topics_follow_the_contract() -> None:
    t = Topics("edge", "cam-01")
    assert t.status == "edge/cam-01/status"
    assert t.health == "edge/cam-01/health"
    assert t.events == "edge/cam-01/events"
    assert t.results("digits") == "edge/cam-01/pipelines/digits/results"
    assert t.commands == "edge/cam-01/cmd/+"
    assert t.reply("abc-1") == "edge/cam-01/reply/abc-1"
    assert t.command_name("edge/cam-01/cmd/ping") == "ping"
    assert t.command_name("edge/cam-02/cmd/ping") is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x y", "../etc", "a\x00", "é"])
def test_unsafe_levels_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="safe topic level"):
        safe_level(bad, "name")
    with pytest.raises(ValueError):
        Topics("edge", bad)


@given(st.text(max_size=40))
def test_a_safe_level_never_contains_wildcards_or_separators(text: str) -> None:
    try:
        level = safe_level(text, "x")
    except ValueError:
        return
    assert not set(level) & {"+", "#", "/", "\x00"}


def test_parse_command_errors_are_specific() -> None:
    with pytest.raises(CommandError, match="over the limit"):
        parse_command("ping", b"x" * 100, max_bytes=10)
    with pytest.raises(CommandError, match="not JSON"):
        parse_command("ping", b"{nope", max_bytes=100)
    with pytest.raises(CommandError, match="not JSON"):
        parse_command("ping", b"\xff\xfe", max_bytes=100)
    with pytest.raises(CommandError, match="JSON object"):
        parse_command("ping", b"[1, 2]", max_bytes=100)
    with pytest.raises(CommandError, match="'id'"):
        parse_command("ping", b'{"x": 1}', max_bytes=100)
    with pytest.raises(CommandError, match="'id'"):
        parse_command("ping", b'{"id": "a/b"}', max_bytes=100)
    cmd = parse_command("pipeline.pause", b'{"id": "r1", "pipeline": "digits"}', max_bytes=100)
    assert cmd.id == "r1" and cmd.args == {"pipeline": "digits"}


def test_argument_specs_check_names_and_types() -> None:
    spec = ArgSpec({"pipeline": (str, True), "quality": (int, False)})
    spec.check({"pipeline": "x"})
    spec.check({"pipeline": "x", "quality": 5})
    for args, match in (
        ({}, "missing argument 'pipeline'"),
        ({"pipeline": 3}, "wrong type: int"),
        ({"pipeline": "x", "quality": True}, "wrong type: bool"),
        ({"pipeline": "x", "extra": 1}, "unknown arguments"),
    ):
        with pytest.raises(CommandError, match=match):
            spec.check(args)


def test_dispatcher_replies_and_refuses_without_a_broker() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    events: list[str] = []
    topics = Topics("edge", "dev")
    d = CommandDispatcher(
        topics,
        lambda topic, payload, props: sent.append((topic, json.loads(payload))),
        lambda kind, message, fields: events.append(kind),
        max_bytes=200,
    )
    d.register("ping", lambda cmd: {"pong": True})
    d.start()
    try:
        d.submit("edge/dev/cmd/ping", b'{"id": "a1"}')
        d.submit("edge/dev/cmd/nope", b'{"id": "a2"}')
        d.submit("edge/dev/cmd/ping", b"garbage")
        d.submit("edge/dev/cmd/ping", b'{"id": "a3", "extra": 1}')
        d.submit("edge/dev/cmd/ping", b'{"id": "a4", "pad": "' + b"x" * 300 + b'"}')
    finally:
        d.stop()
    replies = {topic: body for topic, body in sent}
    assert replies["edge/dev/reply/a1"] == {"id": "a1", "command": "ping", "ok": True, "pong": True}
    assert (
        replies["edge/dev/reply/a2"]["ok"] is False
        and "unknown command" in replies["edge/dev/reply/a2"]["error"]
    )
    assert (
        replies["edge/dev/reply/a3"]["ok"] is False
        and "unknown arguments" in replies["edge/dev/reply/a3"]["error"]
    )
    assert "edge/dev/reply/a4" not in replies  # too large to read its id: only the event
    assert events.count("command.error") == 4
    assert d.received == 5 and d.refused == 4


def test_redact_hides_secret_looking_values() -> None:
    config = {
        "mqtt": {"username": "dev", "password_file": "/etc/pw", "tls": {"key": "/k.pem", "ca": "/ca.pem"}}
    }
    out = redact(config)
    assert out["mqtt"]["password_file"] == "***" and out["mqtt"]["tls"]["key"] == "***"
    assert out["mqtt"]["username"] == "dev" and out["mqtt"]["tls"]["ca"] == "/ca.pem"
