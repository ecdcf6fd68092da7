"""Secrets and terminals (issue 11, part 5): credentials in camera URLs never leave the daemon
(get_config, health, events, replies, logs, state files), and the fleet tool prints nothing a
device sends that a terminal would act on (escape sequences, control and bidi characters)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.media import mjpeg_server
from devkit.mqtt_client import Subscriber
from devkit.paths import ROOT
from devkit.processes import free_port, wait_until
from edge_runtime.redaction import redact_config, redact_text
from edge_runtime.terminal import clean_text, clean_tree

FLEET = ROOT / "tools" / "fleet.py"
RTSP_PW = "RtspPw-7f3k"
HTTP_PW = "HttpPw-9q2x"
QUERY_PW = "QueryPw-4m8z"
PASSWORDS = (RTSP_PW, HTTP_PW, QUERY_PW)

# ------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://user:pass@10.0.0.9:554/s1", "rtsp://***@10.0.0.9:554/s1"),
        ("rtsps://user:pass@cam/s", "rtsps://***@cam/s"),
        ("http://u:p@cam.local/mjpg?x=1", "http://***@cam.local/mjpg?x=1"),
        ("rtsp://user:p@ss:w/rd@cam/s", "rtsp://***@cam/s"),  # '@', ':' and '/' in the password
        ("rtsp://user:p%40ss@cam/s", "rtsp://***@cam/s"),
        ("rtsp://token-only@cam/s", "rtsp://***@cam/s"),
        ("rtsp://u:p@[fe80::1]:554/s", "rtsp://***@[fe80::1]:554/s"),
        ("rtspsrc location=rtsp://u:p@h/s ! decodebin", "rtspsrc location=rtsp://***@h/s ! decodebin"),
        ("camera 'rtsp://u:p@h/s' is down", "camera 'rtsp://***@h/s' is down"),
        ('{"uri": "http://u:p@h/x"}', '{"uri": "http://***@h/x"}'),
        ("a rtsp://a:b@h1/x and http://c:d@h2/y", "a rtsp://***@h1/x and http://***@h2/y"),
        ("http://cam/snapshot.cgi?user=admin&pwd=123&w=640", "http://cam/snapshot.cgi?user=admin&pwd=***&w=640"),
        ("http://cam/x?password=abc;token=def", "http://cam/x?password=***;token=***"),
        ("http://cam/x?api_key=abc#frag", "http://cam/x?api_key=***#frag"),
        ("rtsp://cam.local:554/stream1", "rtsp://cam.local:554/stream1"),
        ("/dev/video0", "/dev/video0"),
        ("user@example.com wrote", "user@example.com wrote"),
    ],
)  # fmt: skip
def test_redact_text_hides_url_credentials(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_config_hides_keys_and_url_credentials_everywhere() -> None:
    config = {
        "mqtt": {"username": "dev", "password_file": "/etc/pw", "tls": {"key": "/k.pem", "ca": "/ca.pem"}},
        "sources": {
            "front": {"uri": f"rtsp://admin:{RTSP_PW}@10.0.0.9/s"},
            "gst": {"uri": f"rtspsrc location=rtsp://a:{RTSP_PW}@h/s ! appsink"},
        },
        "pipelines": [{"models": [{"path": f"http://u:{HTTP_PW}@models/x.tflite"}]}],
        "updates": {"public_keys": ["AAAA"]},
    }
    out = redact_config(config)
    text = json.dumps(out)
    assert not any(pw in text for pw in PASSWORDS), text
    assert out["mqtt"]["password_file"] == "***" and out["mqtt"]["tls"]["key"] == "***"
    assert out["updates"]["public_keys"] == ["***"]
    assert out["sources"]["front"]["uri"] == "rtsp://***@10.0.0.9/s"
    assert out["mqtt"]["username"] == "dev" and out["mqtt"]["tls"]["ca"] == "/ca.pem"


def test_redaction_is_linear_on_hostile_text() -> None:
    for text in ("a" * 200_000 + "://", "a://" * 50_000 + "@", "?password=" * 20_000):
        started = time.perf_counter()
        redact_text(text)
        assert time.perf_counter() - started < 2.0, text[:20]


def wait_reply(sub: Subscriber, topic: str) -> bool:
    return wait_until(lambda: bool(sub.messages(topic)), 30)


def test_a_daemon_never_shows_camera_credentials(tmp_path: Path, broker: Mosquitto) -> None:
    """rtsp:// and http:// cameras with passwords (one unreachable, one a real MJPEG stream with a
    password in its query too): get_config, health, events, every reply and the log at debug
    level show none of the passwords; the log and health still name the cameras."""
    closed = free_port()
    with mjpeg_server(tmp_path) as stream:
        http_uri = stream.url.replace("http://", f"http://viewer:{HTTP_PW}@") + f"?password={QUERY_PW}"
        extra = f"""
[sources.door]
type = "camera"
uri = "rtsp://admin:{RTSP_PW}@127.0.0.1:{closed}/stream1"
stall_timeout_s = 1.0

[sources.yard]
type = "camera"
uri = "{http_uri}"
"""
        config = digits_config(tmp_path, port=broker.port)
        config.write_text(config.read_text().replace("[[pipelines]]", extra + "\n[[pipelines]]", 1))
        with (
            Subscriber(broker.host, broker.port, ["edge/#"]) as sub,
            Daemon(config, "--set", "device.log_level=debug") as daemon,
        ):

            def health_with_sources() -> bool:
                docs = sub.json("edge/dev1/health")
                return bool(docs) and {"door", "yard"} <= set(docs[-1].get("sources", {}))

            assert sub.wait_for(lambda ms: health_with_sources(), 60), daemon.log()[-3000:]
            assert sub.wait_for(
                lambda ms: any(
                    e.get("kind") == "source.down" and "door" in e["message"]
                    for e in sub.json("edge/dev1/events")
                ),
                60,
            ), daemon.log()[-3000:]
            for name, body in [
                ("get_config", {"id": "g1"}),
                ("health", {"id": "h1"}),
                ("snapshot", {"id": "s1", "source": "door"}),  # an error naming the source
                (
                    "config.update",
                    {"id": "u1", "config": f'[sources.x]\nuri = "rtsp://a:{RTSP_PW}@h"\nbad = 1\n'},
                ),
            ]:
                sub.publish(f"edge/dev1/cmd/{name}", json.dumps(body).encode(), qos=1)
                assert wait_reply(sub, f"edge/dev1/reply/{body['id']}")
            reply = sub.json("edge/dev1/reply/g1")[0]
            sources = reply["config"]["sources"]
            assert sources["door"]["uri"] == f"rtsp://***@127.0.0.1:{closed}/stream1", sources
            assert (
                sources["yard"]["uri"].startswith("http://***@127.0.0.1:")
                and "password=***" in sources["yard"]["uri"]
            )
            assert daemon.stop() == 0
    log = daemon.log()
    assert "door" in log and "127.0.0.1" in log  # the cameras are still named in the log
    shown = [m for m in sub.messages() if "/cmd/" not in m.topic]  # what the daemon published
    assert any(m.topic == "edge/dev1/reply/u1" for m in shown) and any(
        m.topic.endswith("/health") for m in shown
    )
    leaks = [(m.topic, pw) for m in shown for pw in PASSWORDS if pw.encode() in m.payload]
    assert not leaks, leaks
    assert not [pw for pw in PASSWORDS if pw in log], [
        line for line in log.splitlines() if any(p in line for p in PASSWORDS)
    ][:5]
    for path in (tmp_path / "state-dev1").rglob("*"):
        if path.is_file():
            assert not any(pw.encode() in path.read_bytes() for pw in PASSWORDS), path


# ------------------------------------------------------------------------------ terminals

HOSTILE = [
    "\x1b[2J\x1b[H",  # clear the screen, home
    "\x1b]0;pwned\x07",  # set the window title (OSC ... BEL)
    "\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\",  # an OSC 8 hyperlink
    "\x1b[31;1mred\x1b[0m",
    "\x9b31m",  # C1 CSI
    "\x1bc",  # full reset
    "\x1bP1;1|payload\x1b\\",  # DCS
    "a\rb\x08c\x07d\x00e\x7f",
    "\u202etxt.exe\u202c",  # right-to-left override (Trojan Source)
    "\u2066iso\u2069",
    "zero\u200bwidth\ufeff",
    "[bold red]markup[/bold red] [link=http://evil]x[/link]",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_clean_text_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    out = clean_text(text)
    assert all(c.isprintable() for c in out), repr(out)
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in out)
    assert "\x1b" not in out and "\x9b" not in out


def test_clean_text_keeps_ordinary_text() -> None:
    assert clean_text("cam-01 v1.2 ✓ caméra 東京 19.5 fps") == "cam-01 v1.2 ✓ caméra 東京 19.5 fps"
    assert clean_text("two\nlines\ttab") == "two lines tab"
    assert clean_tree({"a\x1b[1m": ["x\x07", 1, None, {"k": "\u202ev"}]}) == {"a": ["x", 1, None, {"k": "v"}]}


def _run_fleet_status(where: str, *, tty: bool) -> str:
    """``tools/fleet.py status`` as an operator runs it: on a pseudo-terminal when ``tty``."""
    command = [sys.executable, str(FLEET), "status", "--broker", where, "--wait", "3"]
    env = {**os.environ, "COLUMNS": "250", "TERM": "xterm-256color"}
    if not tty:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(10) == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode("utf-8", "replace")


def test_fleet_status_prints_a_hostile_device_clean(broker: Mosquitto) -> None:
    """A device whose retained status and health carry ESC/CSI/OSC sequences, C1 controls, bidi
    overrides and rich markup, and one whose health is a deeply nested JSON bomb: ``fleet.py
    status`` prints both rows clean, on a pipe and on a terminal."""
    evil = "".join(HOSTILE)
    status = {
        "state": "online\x1b[2J",
        "ts": time.time(),
        "version": f"1.0{evil}",
        "pipelines": [f"digits{evil}"],
    }
    health = {
        "state": f"degraded{evil}",
        "ts": time.time(),
        "pipelines": {
            f"digits{evil}": {
                "fps_out": 9.5,
                "models": [{"name": f"m{evil}", "version": f"2{evil}", "sha256": f"ab{evil}"}],
            }
        },
    }
    broker.publish("edge/evil1/status", json.dumps(status).encode(), retain=True)
    broker.publish("edge/evil1/health", json.dumps(health).encode(), retain=True)
    broker.publish("edge/bomb1/status", b'{"state":"online","ts":1,"version":"1"}', retain=True)
    broker.publish("edge/bomb1/health", b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", retain=True)
    where = f"{broker.host}:{broker.port}"
    plain = _run_fleet_status(where, tty=False)
    assert "evil1" in plain and "bomb1" in plain and "9.5" in plain, plain
    assert "\x1b" not in plain and "\x9b" not in plain, repr(plain)
    assert "markup" in plain and "[bold red]" in plain, "rich markup must be shown as text, not applied"
    on_terminal = _run_fleet_status(where, tty=True)
    assert "evil1" in on_terminal and "bomb1" in on_terminal, on_terminal
    for text in (plain, on_terminal):
        assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in text)
        assert not any(0x80 <= ord(c) <= 0x9F for c in text), repr(text)
        assert "pwned" not in text or "\x1b]0;" not in text
        assert "\x07" not in text and "\x1b]" not in text and "\x1bP" not in text and "\x1bc" not in text
        assert "\x1b[2J" not in text and "\x1b[H" not in text
    # rich's own colours are the only escape sequences on a terminal: SGR only
    import re

    leftover = re.sub(r"\x1b\[[0-9;]*m", "", on_terminal)
    assert "\x1b" not in leftover, repr(leftover)
    json_out = subprocess.run(
        [sys.executable, str(FLEET), "status", "--broker", where, "--json", "--wait", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = {row["device"]: row for row in json.loads(json_out)["devices"]}
    assert rows["evil1"]["version"].startswith("1.0") and "\x1b" not in json.dumps(rows, ensure_ascii=False)
