"""Security: TLS required, secrets kept out of logs and replies, a broker ACL that confines the
device's credentials, names and command arguments that cannot reach outside their place, signed
updates, private state files, and no shell, pickle or eval in the package."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import DATA, MODELS, ROOT
from devkit.processes import wait_until
from edge_runtime.config import PACKAGE_DIR
from edge_runtime.updates.signing import SignedFields, sign

NOT_AUTHORIZED = 0x87
ADMIN_PASSWORD = "admin-Pw-4711"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def command(
    sub: Subscriber, name: str, body: dict[str, Any], device: str = "dev1", timeout: float = 20
) -> dict[str, Any]:
    """Send a command and return its (first) reply."""
    request_id = body["id"]
    sub.publish(f"edge/{device}/cmd/{name}", json.dumps(body).encode(), qos=1)
    topic = f"edge/{device}/reply/{request_id}"
    assert sub.wait_for(lambda ms: any(m.topic == topic for m in ms), timeout), f"no reply to {name} {body}"
    reply: dict[str, Any] = sub.json(topic)[0]
    return reply


def final_reply(
    sub: Subscriber, name: str, body: dict[str, Any], timeout: float = 60
) -> list[dict[str, Any]]:
    """Send a long-running command (model.update) and return every reply up to the final one."""
    topic = f"edge/dev1/reply/{body['id']}"
    sub.publish(f"edge/dev1/cmd/{name}", json.dumps(body).encode(), qos=1)
    assert sub.wait_for(
        lambda ms: any(m.topic == topic and (m.json().get("final") or not m.json()["ok"]) for m in ms),
        timeout,
    ), sub.json(topic)
    return sub.json(topic)


def health_seen(sub: Subscriber) -> Callable[[list[Any]], bool]:
    return lambda ms: any(m.topic == "edge/dev1/health" for m in ms)


# ------------------------------------------------------------------------------------------ TLS


def test_tls_required_without_a_ca_refuses_to_start(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=1883, mqtt="tls = { required = true }\n")
    started = time.monotonic()
    proc = run_cli("run", "--config", str(config))
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert time.monotonic() - started < 30
    assert proc.stdout == "", "no result may be produced without TLS"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("edge-runtime: error:"), lines
    assert "mqtt.tls.ca: '': tls.required is set but no CA is configured" in proc.stderr, proc.stderr
    assert len(lines) <= 2, lines  # the error and its one cause: no log noise, no traceback


def test_validate_config_refuses_tls_required_without_a_ca(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=1883, mqtt="tls = { required = true }\n")
    proc = run_cli("validate-config", str(config))
    assert proc.returncode == 1, proc.stdout
    assert "mqtt.tls" in proc.stderr and "required" in proc.stderr


# ------------------------------------------------------------------------------------- secrets


def test_the_mqtt_password_never_appears_in_logs_replies_or_health(
    tmp_path: Path, make_broker: Callable[..., Mosquitto]
) -> None:
    password = "Kx4-zq9Lr-8hT2-pw"
    broker = make_broker(users={"dev1": password, "admin": ADMIN_PASSWORD})
    password_file = tmp_path / "dev1.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    mqtt = f'username = "dev1"\npassword_file = "{password_file}"\n'
    config = digits_config(tmp_path, port=broker.port, mqtt=mqtt)
    with (
        Subscriber(
            broker.host, broker.port, ["edge/dev1/#"], username="admin", password=ADMIN_PASSWORD
        ) as sub,
        Daemon(config, "--set", "device.log_level=debug") as daemon,
    ):
        assert sub.wait_for(health_seen(sub), 30), daemon.log()[-3000:]
        reply = command(sub, "get_config", {"id": "c1"})
        assert reply["ok"], reply
        assert reply["config"]["mqtt"]["username"] == "dev1"
        assert reply["config"]["mqtt"]["password_file"] == "***"
        assert command(sub, "health", {"id": "h1"})["ok"]
        bad = command(sub, "ping", {"id": "p1", "password": password})  # refused, and not echoed
        assert bad["ok"] is False
        # reconnects send the credentials again; repeated connection errors are logged at debug
        connections = sub.connections
        broker.stop()
        assert wait_until(lambda: " DEBUG " in daemon.log(), 20), "nothing logged at debug level"
        broker.start()
        assert sub.wait_ready(30, after=connections)
        sub.clear()
        assert sub.wait_for(health_seen(sub), 30), daemon.log()[-3000:]
        assert daemon.stop() == 0
    log = daemon.log()
    assert password not in log
    for message in sub.messages():
        assert password.encode() not in message.payload, message.topic
    for path in (tmp_path / "state-dev1").rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------ ACL

ACL = """\
user admin
topic readwrite #

user dev1
topic write edge/dev1/#
topic read edge/dev1/cmd/#
"""


def test_the_device_credentials_reach_only_their_own_topics(
    tmp_path: Path, make_broker: Callable[..., Mosquitto]
) -> None:
    broker = make_broker(users={"dev1": "pw1", "admin": "pw"}, acl=ACL)
    (tmp_path / "pw1").write_text("pw1\n")
    mqtt = f'username = "dev1"\npassword_file = "{tmp_path / "pw1"}"\n'
    config = digits_config(tmp_path, port=broker.port, mqtt=mqtt)
    with (
        Subscriber(broker.host, broker.port, ["edge/#"], username="admin", password="pw") as watcher,
        Daemon(config) as daemon,
    ):
        # the daemon works normally under the ACL: results, health and command replies
        assert watcher.wait_for(
            lambda ms: len([m for m in ms if m.topic == "edge/dev1/pipelines/digits/results"]) >= 5, 30
        ), (daemon.log()[-3000:], broker.log_text()[-3000:])
        assert watcher.wait_for(health_seen(watcher), 30)
        assert command(watcher, "ping", {"id": "acl1"})["ok"]
        # a rogue client with the device's credentials
        topics = ["edge/dev2/cmd/#", "edge/dev1/cmd/#", "edge/dev1/pipelines/#"]
        rogue_client = Subscriber(
            broker.host, broker.port, topics, client_id="rogue", username="dev1", password="pw1"
        )
        with rogue_client as rogue:
            for topic in ("edge/dev2/pipelines/digits/results", "edge/dev2/cmd/ping", "other/x"):
                code = rogue.publish(topic, b'{"id": "r1"}', qos=1)
                assert code.value == NOT_AUTHORIZED, (topic, code)
            assert rogue.publish("edge/dev1/events", b'{"kind": "test"}', qos=1).value == 0
            watcher.publish("edge/dev2/cmd/ping", b'{"id": "dev2-secret"}', qos=1)
            watcher.publish("edge/dev1/cmd/ping", b'{"id": "marker"}', qos=1)
            assert rogue.wait_for(lambda ms: any(m.topic == "edge/dev1/cmd/ping" for m in ms), 20)
            time.sleep(1.0)  # results keep flowing to the watcher meanwhile
            assert [m.topic for m in rogue.messages()] == ["edge/dev1/cmd/ping"], "read outside its commands"
        assert not any(m.topic.startswith("edge/dev2/pipelines") for m in watcher.messages())
        assert daemon.stop() == 0
    assert "Denied PUBLISH" in broker.log_text()


# -------------------------------------------------------------------------- names and arguments

BAD_NAMES = ["a/b", "a+b", "a#b", "..", "../x"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_that_could_escape_a_topic_or_path_are_refused(tmp_path: Path, bad: str) -> None:
    config = digits_config(tmp_path, port=None)
    text = config.read_text()
    text = text.replace('id = "dev1"', f"id = {json.dumps(bad)}")
    text = text.replace('name = "digits"', f"name = {json.dumps(bad)}")
    text = text.replace("enabled = false\n", f"enabled = false\nprefix = {json.dumps(bad)}\n")
    config.write_text(text)
    proc = run_cli("validate-config", str(config))
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    for path in ("device.id", "mqtt.prefix", "pipelines[0].name"):
        assert f"{path}: {bad!r}: name must be" in proc.stderr, (path, proc.stderr)


def test_source_names_that_could_escape_are_refused(tmp_path: Path) -> None:
    config = digits_config(tmp_path, port=None)
    extra = "".join(
        f'\n[sources.{json.dumps(bad)}]\ntype = "serial"\nport = "loop://"\nformat = "csv"\nfields = ["a"]\n'
        for bad in BAD_NAMES
    )
    config.write_text(config.read_text() + extra)
    proc = run_cli("validate-config", str(config))
    assert proc.returncode == 1, proc.stdout
    for bad in BAD_NAMES:
        assert f"sources.{bad}: {bad!r}: source name must be" in proc.stderr, (bad, proc.stderr)


def tree(root: Path) -> set[Path]:
    return {root, *root.rglob("*")}


def test_traversal_looking_command_arguments_are_refused(tmp_path: Path, broker: Mosquitto) -> None:
    config = digits_config(tmp_path, port=broker.port)
    state = tmp_path / "state-dev1"
    model = MODELS / "digits_int8.tflite"
    data = model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    update = {"sha256": sha, "size": len(data), "version": "9"}
    chunk = base64.b64encode(data[:100]).decode()
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("snapshot", {"source": "../../etc/passwd"}, "no camera source"),
        ("snapshot", {"source": "/etc/passwd"}, "no camera source"),
        ("pipeline.pause", {"pipeline": "../evil"}, "no pipeline"),
        ("model.list", {"pipeline": "../../evil"}, "no pipeline"),
        ("model.rollback", {"pipeline": "../evil"}, "not a valid pipeline name"),
        ("model.update", {"pipeline": "../evil", "url": f"file://{model}", **update}, "not a valid pipeline"),
        (
            "model.update",
            {"pipeline": "digits/../../evil", "url": f"file://{model}", **update},
            "not a valid",
        ),
        ("model.update", {"pipeline": "digits", "transfer": "../evil", **update}, "transfer id"),
        ("model.update", {"pipeline": "digits", "transfer": "..", **update}, "transfer id"),
        ("model.chunk", {"transfer": "../evil", "index": 0, "total": 1, "data": chunk}, "transfer id"),
        ("model.chunk", {"transfer": "../../evil", "index": 0, "total": 2, "data": chunk}, "transfer id"),
    ]
    with (
        Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub,
        Daemon(config) as daemon,
    ):
        assert sub.wait_for(health_seen(sub), 30), daemon.log()[-3000:]
        before = tree(tmp_path)
        for n, (name, args, error) in enumerate(refusals):
            reply = command(sub, name, {"id": f"t{n}", **args})
            assert reply["ok"] is False and error in reply["error"], (name, args, reply)
        # an update id that looks like a path: refused before anything runs; the reply can only go
        # to the MQTT 5 response topic, since reply/{id} would not be a topic of this device
        body = {"id": "../../evil", "pipeline": "digits", "url": f"file://{model}", **update}
        sub.publish(
            "edge/dev1/cmd/model.update",
            json.dumps(body).encode(),
            qos=1,
            response_topic="edge/dev1/reply/app",
            correlation_data=b"traversal",
        )
        assert sub.wait_for(lambda ms: any(m.topic == "edge/dev1/reply/app" for m in ms), 20)
        answer = sub.messages("edge/dev1/reply/app")[-1]
        assert answer.correlation_data == b"traversal"
        assert answer.json()["ok"] is False and "'id' must be" in answer.json()["error"]
        count = daemon.count()
        assert daemon.proc.poll() is None
        assert wait_until(lambda: daemon.count() > count + 5, 20), "results stopped"
        assert daemon.stop() == 0
    created = tree(tmp_path) - before
    allowed = (state, broker.directory, daemon.log_path)
    outside = sorted(p for p in created if not any(p.is_relative_to(a) for a in allowed))
    assert not outside, outside
    assert not [p for p in tree(tmp_path.parent) if "evil" in p.name], (
        "a traversal argument was used as a path"
    )
    assert not (state / "downloads").exists() or not any((state / "downloads").iterdir())
    expected = {
        "models",
        "outbox.sqlite",
        "outbox.sqlite-shm",
        "outbox.sqlite-wal",
        "outbox.sqlite.lock",
        "seq.json",
    }
    assert {p.name for p in state.iterdir()} <= expected, sorted(state.iterdir())


# -------------------------------------------------------------------- signed updates and modes


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_signed_updates_are_required_once_a_key_exists_and_state_files_are_private(
    tmp_path: Path, broker: Mosquitto
) -> None:
    keys = tmp_path / "keys"
    keygen = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fleet.py"), "keygen", "--out", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0,  # the modes must not depend on the caller's umask
    )
    assert keygen.returncode == 0, keygen.stderr
    assert mode(keys) == 0o700 and mode(keys / "fleet.key") == 0o600
    public = (keys / "fleet.pub").read_text().strip()
    private = (keys / "fleet.key").read_bytes()
    candidate = tmp_path / "candidate.tflite"  # not the serving model: the update really happens
    shutil.copyfile(DATA / "constant_digits_int8.tflite", candidate)
    data = candidate.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    body = {
        "pipeline": "digits",
        "url": f"file://{candidate}",
        "sha256": sha,
        "size": len(data),
        "version": "2",
    }
    extra = (
        f'[updates]\npublic_keys = ["{public}"]\nprobation_s = 10\nprobation_results = 5\n'
        "allow_file_urls = true\n"
        "max_latency_factor = 1000.0\nfail_on_constant = false\n"
    )
    config = digits_config(tmp_path, port=broker.port, extra=extra)
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub:
        with umask(0):
            daemon = Daemon(config)
        with daemon:
            assert sub.wait_for(health_seen(sub), 30), daemon.log()[-3000:]
            unsigned = final_reply(sub, "model.update", {"id": "u1", **body})[-1]
            assert unsigned["ok"] is False and unsigned["step"] == "signature", unsigned
            assert "unsigned" in unsigned["error"]
            forged = final_reply(sub, "model.update", {"id": "u2", **body, "signature": "A" * 88})[-1]
            assert forged["ok"] is False and forged["step"] == "signature", forged
            signature = sign(private, SignedFields.update("digits", "2", sha, len(data)))
            signed = final_reply(sub, "model.update", {"id": "u3", **body, "signature": signature})
            assert signed[-1]["ok"] and signed[-1]["step"] == "commit", signed
            assert daemon.stop() == 0
    state = tmp_path / "state-dev1"
    assert (state / "models" / "digits" / f"{sha}.tflite").is_file()
    assert (state / "outbox.sqlite").is_file()
    loose = sorted(
        f"{p.relative_to(tmp_path)} {mode(p):04o}"
        for p in tree(state)
        if mode(p) != (0o700 if p.is_dir() else 0o600)
    )
    assert not loose, f"state files must be 0600 and folders 0700, even under umask 0: {loose}"


# ------------------------------------------------------------------- no shell, pickle or eval

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "shelve", "marshal", "dill"}
FORBIDDEN_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        where = f"{shown}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in FORBIDDEN_CALLS or name in FORBIDDEN_BUILTINS or name.startswith("pickle."):
                found.append(f"{where}: {name}()")
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg == "shell" and not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{where}: {name}(shell=...)")
    return found


def test_no_module_uses_a_shell_pickle_or_eval() -> None:
    modules = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(modules) > 30, modules
    found = [line for path in modules for line in findings(path)]
    assert not found, found


def test_the_checker_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "forbidden.py"
    sample.write_text(
        "import pickle\nimport os, subprocess\n# os.system('x') in a comment does not count\n"
        "from marshal import loads\nos.system('ls')\nsubprocess.run('ls', shell=True)\n"
        "eval('1')\nexec('x = 1')\ns = 'eval(1)'\nsubprocess.run(['ls'], shell=False)\n"
    )
    found = findings(sample)
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted(
        [
            "import pickle",
            "from marshal import",
            "os.system()",
            "subprocess.run(shell=...)",
            "eval()",
            "exec()",
        ]
    ), found
