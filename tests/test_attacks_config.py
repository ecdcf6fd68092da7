"""Attacks on the configuration (issue 11, part 4): ``config.update`` from the broker, SIGHUP
with a broken file, and configs that pass ``validate-config`` but break ``run``.

Every attack is refused with a clear error (a reply and an event for ``config.update``, an
event for SIGHUP, one line and exit 1 for the CLI), and the daemon keeps producing results and
answering commands afterwards. Real daemons, a real mosquitto, the real bundled int8 models.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.config import Config, load_config
from edge_runtime.config.fields import schema_leaves, unbounded_numbers
from edge_runtime.config.guard import POLICY, protected_changes, undecided, unused_entries
from edge_runtime.updates.configsign import config_message, sign_config, verify_config
from edge_runtime.updates.protocol import SignatureError
from edge_runtime.updates.signing import generate_keypair, write_private_key

# -- the schema: every number bounded, every field decided ------------------------------------------

NUMERIC_LEAVES = [
    leaf
    for leaf in schema_leaves(Config)
    if "int" in repr(leaf.info.annotation) or "float" in repr(leaf.info.annotation)
]


def test_every_numeric_field_of_the_schema_has_a_lower_and_an_upper_bound() -> None:
    assert len(NUMERIC_LEAVES) > 60  # sources, postprocess, inputs, triggers, mqtt, updates...
    missing = [m for leaf in schema_leaves(Config) for m in unbounded_numbers(leaf)]
    assert missing == []


def test_the_bound_check_catches_an_unbounded_field() -> None:
    class Grown(BaseModel):
        fine: int = Field(1, ge=0, le=10, description="bounded")
        rate: float = Field(1.0, gt=0, description="no upper bound")
        sizes: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, description="items")

    found = [m for leaf in schema_leaves(Grown) for m in unbounded_numbers(leaf)]
    assert found == [
        "rate: float without a upper bound",
        "sizes: int without a upper bound",
    ]


BAD_NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 2**70, -(2**70)]


@pytest.mark.parametrize("leaf", NUMERIC_LEAVES, ids=lambda leaf: f"{leaf.model.__name__}.{leaf.name}")
def test_every_numeric_field_refuses_nan_inf_and_huge_values(leaf: Any) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[leaf.info.annotation, leaf.info])
    for bad in BAD_NUMBERS:
        for value in (bad, [bad]):
            with pytest.raises(ValidationError):
                adapter.validate_python(value)


def test_every_field_has_a_config_update_decision_and_every_decision_a_field() -> None:
    assert undecided() == []
    assert unused_entries() == []
    guarded = {p for p, d in POLICY.items() if d.rule.value != "free"}
    for field in (
        "mqtt.tls",
        "mqtt.password_file",
        "mqtt.username",
        "mqtt.host",
        "metrics",
        "updates",
        "device.state_dir",
        "pipelines[].models[].delegates[].library",
    ):
        assert field in guarded, field


def test_a_new_field_without_a_decision_fails_the_policy_check() -> None:
    class GrownConfig(Config):
        listen_address: str = Field("0.0.0.0", description="a new field nobody decided on")

    assert undecided(GrownConfig) == ["listen_address"]


# -- the signed message ---------------------------------------------------------------------------


def test_a_config_signature_covers_device_base_and_exact_bytes(tmp_path: Path) -> None:
    pem, public = generate_keypair()
    key = write_private_key(tmp_path / "operator.pem", pem)
    base = hashlib.sha256(b"old").hexdigest()
    text = b"[device]\nid = 'dev1'\n"
    signature = sign_config(key, "dev1", base, text)
    assert config_message("dev1", base, text).startswith(b"edge-runtime-config-v1\ndev1\n")
    assert len(verify_config([public], "dev1", base, text, signature)) == 16
    _, other_public = generate_keypair()
    cases = {
        "another device": ([public], "dev2", base, text),
        "another base file": ([public], "dev1", hashlib.sha256(b"new").hexdigest(), text),
        "one byte more": ([public], "dev1", base, text + b"\n"),
        "another key": ([other_public], "dev1", base, text),
        "no key": ([], "dev1", base, text),
    }
    for name, (keys, device, base_sha, data) in cases.items():
        with pytest.raises(SignatureError):
            verify_config(keys, device, base_sha, data, signature)
            pytest.fail(name)
    with pytest.raises(SignatureError, match="base64"):
        verify_config([public], "dev1", base, text, "not base64!")


# -- the guard, on loaded configs -------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def guard_configs(tmp_path: Path) -> tuple[Path, str]:
    """A config with TLS and credentials, and what it names, for the guard's unit tests."""
    secret = _write(tmp_path / "mqtt.pass", "hunter2\n")
    ca = _write(tmp_path / "ca.pem", "placeholder: the guard does not read files\n")
    text = f"""
[device]
id = "dev1"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "broker.example"
username = "dev1"
password_file = "{secret}"
tls = {{ ca = "{ca}" }}

[updates]
public_keys = ["{generate_keypair()[1]}"]

[sources.camera]
type = "camera"
uri = "{tmp_path / "video.avi"}"

[[pipelines]]
name = "digits"
trigger = "camera"

[[pipelines.models]]
path = "{MODELS / "digits_int8.tflite"}"
inputs = [{{ kind = "image", source = "camera", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", labels = "{MODELS / "digits_labels.txt"}" }}
"""
    return _write(tmp_path / "edge.toml", text), text


def _changes(path: Path, old_text: str, new_text: str) -> list[str]:
    old = load_config(path, text=old_text)
    new = load_config(path, text=new_text)
    return protected_changes(old, new)


def test_the_guard_refuses_each_security_change_and_lets_the_rest_through(tmp_path: Path) -> None:
    path, text = guard_configs(tmp_path)
    victim = _write(tmp_path / "victim.txt", "".join(f"secret-{i}\n" for i in range(10)))
    (tmp_path / "link.txt").symlink_to(victim)
    (tmp_path / "pass-link").symlink_to(tmp_path / "mqtt.pass")
    labels = str(MODELS / "digits_labels.txt")
    guarded = {
        "password file": ("mqtt.password_file", text.replace(str(tmp_path / "mqtt.pass"), str(victim))),
        "symlink to the same password file": (
            "mqtt.password_file",
            text.replace(str(tmp_path / "mqtt.pass"), str(tmp_path / "pass-link")),
        ),
        "user": ("mqtt.username", text.replace('username = "dev1"', 'username = "admin"')),
        "no TLS": ("mqtt.tls.ca", text.replace(f'tls = {{ ca = "{tmp_path / "ca.pem"}" }}', "")),
        "insecure TLS": ("mqtt.tls.insecure", text.replace(" }\n", ", insecure = true }\n", 1)),
        "broker with TLS on": ("mqtt.host", text.replace("broker.example", "attacker.example")),
        "broker port": (
            "mqtt.port",
            text.replace('host = "broker.example"', 'host = "broker.example"\nport = 8883'),
        ),
        "MQTT off": ("mqtt.enabled", text.replace("[mqtt]\n", "[mqtt]\nenabled = false\n")),
        "no keys": (
            "updates.public_keys",
            text.replace(text.split("public_keys = ")[1].split("\n")[0], "[]"),
        ),
        "metrics on all interfaces": ("metrics", text + '\n[metrics]\nenabled = true\nhost = "0.0.0.0"\n'),
        "state dir": ("device.state_dir", text.replace(str(tmp_path / "state"), str(tmp_path / "other"))),
        "delegate library": (
            "delegates[0].library",
            text.replace(
                'path = "', 'delegates = [{ type = "external", library = "/tmp/evil.so" }, "cpu"]\npath = "'
            ),
        ),
        "labels from a secret": ("postprocess.labels", text.replace(labels, str(victim))),
        "labels through a symlink": ("postprocess.labels", text.replace(labels, str(tmp_path / "link.txt"))),
        "GStreamer pipeline": (
            "sources.camera.uri",
            text.replace(
                f'uri = "{tmp_path / "video.avi"}"', 'uri = "videotestsrc ! filesink location=/etc/x"'
            ),
        ),
        "another video file": ("sources.camera.uri", text.replace("video.avi", "other.avi")),
    }
    for name, (field, new_text) in guarded.items():
        assert new_text != text, name
        found = _changes(path, text, new_text)
        assert found and any(field in line for line in found), (name, found)
        assert "hunter2" not in " ".join(found)
    free = {
        "threads": text.replace('path = "', 'threads = 2\npath = "'),
        "labels inline": text.replace(
            f'labels = "{labels}"', 'labels = ["a","b","c","d","e","f","g","h","i","j"]'
        ),
        "bundled model": text.replace(str(MODELS / "digits_int8.tflite"), "bundled:digits_int8.tflite"),
        "health": text + "\n[health]\ninterval_s = 5\n",
        "device id": text.replace('id = "dev1"', 'id = "dev2"'),
        "stream camera": text.replace(f'uri = "{tmp_path / "video.avi"}"', 'uri = "rtsp://cam.local/stream"'),
        "edgetpu first (default library)": text.replace(
            'path = "', 'delegates = ["edgetpu", "cpu"]\npath = "'
        ),
    }
    for name, new_text in free.items():
        assert _changes(path, text, new_text) == [], name


def test_the_broker_address_is_free_without_tls_or_credentials(tmp_path: Path) -> None:
    path, text = guard_configs(tmp_path)
    plain = text.replace(f'tls = {{ ca = "{tmp_path / "ca.pem"}" }}', "")
    plain = plain.replace('username = "dev1"\n', "").replace(
        f'password_file = "{tmp_path / "mqtt.pass"}"\n', ""
    )
    assert _changes(path, plain, plain.replace("broker.example", "other.example")) == []


# -- validate-config and run agree: the examples of the issue, and variants ------------------------------


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(("20", "WARNING", "INFO"))]
    errors = [line for line in lines if line.startswith("edge-runtime: error:")]
    assert len(errors) == 1 and len(lines) == 1, proc.stderr
    return errors[0]


@pytest.fixture
def offline_config(tmp_path: Path) -> Path:
    """The digits pipeline on a video file, MQTT off: what run needs, nothing else."""
    return digits_config(tmp_path, port=None, fps=50.0)


def edited(config: Path, old: str, new: str, name: str = "edited.toml") -> Path:
    text = config.read_text()
    assert old in text, old
    return _write(config.with_name(name), text.replace(old, new, 1))


IMAGE = 'kind = "image", source = "camera", resize = "crop", color = "gray", std = 255.0'
BROKEN_AT_START = {
    "std = 0": (IMAGE, IMAGE.replace("std = 255.0", "std = 0"), "inputs[0].std"),
    "mean of the wrong length": (IMAGE, IMAGE + ", mean = [0.0, 0.0, 0.0]", "mean has 3 values"),
    "health.interval_s = inf": ("interval_s = 1.0", "interval_s = inf", "health.interval_s"),
    "huge session_expiry_s": (
        "[mqtt]\nenabled = false\n",
        "[mqtt]\nenabled = false\nsession_expiry_s = 99999999999\n",
        "mqtt.session_expiry_s",
    ),
    "state_dir that is a file": ('state_dir = "', 'state_dir = "/etc/hostname" # "', "device.state_dir"),
    "rgb on a grey model": (IMAGE, IMAGE.replace('"gray"', '"rgb"'), "channels"),
    "an input the model does not have": (IMAGE, IMAGE + ", input = 5", "no input 5"),
    "labels that do not match the outputs": (
        'labels = "',
        'labels = ["zero", "one"], x = "',
        "10 classes but 2 labels",
    ),
    "labels file that is a directory": (
        f'labels = "{MODELS}/digits_labels.txt"',
        f'labels = "{MODELS}"',
        "directory",
    ),
    "labels that are a device": (
        f'labels = "{MODELS}/digits_labels.txt"',
        'labels = "/dev/zero"',
        "not a regular file",
    ),
    "model that is not a model": (f"{MODELS}/digits_int8.tflite", f"{MODELS}/digits_labels.txt", "models[0]"),
    "fps = nan": ("loop = true", "loop = true\nfps = nan", "sources.camera.fps"),
    "negative stall timeout": ("loop = true", "loop = true\nstall_timeout_s = -1", "stall_timeout_s"),
    "huge top_k": ("top_k = 1", "top_k = 100000000", "top_k"),
    "huge outbox": ("[health]", "[outbox]\nmax_bytes = 1e400\n[health]", "outbox.max_bytes"),
}


@pytest.mark.parametrize("case", list(BROKEN_AT_START), ids=list(BROKEN_AT_START))
def test_what_validate_config_accepts_run_starts_and_what_it_refuses_run_refuses_the_same_way(
    offline_config: Path, case: str
) -> None:
    old, new, expected = BROKEN_AT_START[case]
    if case == "labels that do not match the outputs":  # keep the TOML valid: drop the file name
        text = offline_config.read_text()
        start = text.index('labels = "')
        end = text.index('"', start + len('labels = "')) + 1
        bad = _write(
            offline_config.with_name("edited.toml"), text[:start] + 'labels = ["zero", "one"]' + text[end:]
        )
    else:
        bad = edited(offline_config, old, new)
    validate = one_line_error(cli("validate-config", str(bad)))
    assert expected in validate, validate
    run = one_line_error(cli("run", "--config", str(bad), "--max-results", "1"))
    assert run == validate


def test_deep_nesting_and_other_malformed_toml_are_one_line(tmp_path: Path) -> None:
    cases = {
        "deep.toml": "a = " + "[" * 1000 + "]" * 1000,
        "deep-tables.toml": "a = " + "{ b = " * 1000 + "1" + " }" * 1000,
        "binary.toml": "\x00\x01\x02",
        "huge-int.toml": "a = 1" + "0" * 5000,
        "bad-date.toml": "a = 2026-13-45",
    }
    for name, text in cases.items():
        path = _write(tmp_path / name, text)
        for args in (("validate-config", str(path)), ("run", "--config", str(path), "--max-results", "1")):
            line = one_line_error(cli(*args))
            assert name in line, line
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b"a = '\xe9'\n")
    assert "latin1.toml" in one_line_error(cli("validate-config", str(latin)))


NUMERIC_PATHS = [
    "health.interval_s",
    "device.stop_timeout_s",
    "outbox.max_count",
    "sources.camera.fps",
    "sources.camera.stall_timeout_s",
    "sources.camera.reconnect.initial_s",
    "pipelines.0.max_results",
    "pipelines.0.models.0.threads",
    "pipelines.0.models.0.weight",
    "pipelines.0.models.0.inputs.0.std",
    "pipelines.0.models.0.inputs.0.mean",
    "pipelines.0.models.0.inputs.0.pad_value",
    "pipelines.0.models.0.postprocess.top_k",
    "pipelines.0.models.0.postprocess.min_score",
    "pipelines.0.trigger.min_interval_s",
    "updates.probation_s",
]
VALUES = st.one_of(
    st.sampled_from(
        ["nan", "inf", "-inf", "-1", "0", "1e300", "99999999999999999", "0.5", "3", "255", "[1.0]"]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(NUMERIC_PATHS), value=VALUES)
def test_hypothesis_validate_config_and_run_agree_on_any_number(
    offline_config: Path, field: str, value: str
) -> None:
    if field.startswith("pipelines.0.trigger"):
        assignment = f'pipelines.0.trigger={{ source = "camera", min_interval_s = {value} }}'
    else:
        assignment = f"{field}={value}"
    validate = cli("validate-config", str(offline_config), "--set", assignment)
    assert "Traceback" not in validate.stderr, validate.stderr
    run = cli("run", "--config", str(offline_config), "--set", assignment, "--max-results", "1", timeout=120)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if validate.returncode == 0:
        assert run.returncode == 0, (assignment, run.stderr[-3000:])
        results = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        assert len(results) == 1 and results[0]["pipeline"] == "digits", (assignment, run.stdout)
    else:
        assert one_line_error(run) == one_line_error(validate), assignment


# -- on a real daemon: config.update and SIGHUP --------------------------------------------------------


def command(
    sub: Subscriber, name: str, request_id: str, body: dict[str, Any], timeout: float = 60
) -> dict[str, Any]:
    """Send a command; return its final reply."""
    sub.publish(f"edge/dev1/cmd/{name}", json.dumps({"id": request_id, **body}).encode(), qos=1)
    topic = f"edge/dev1/reply/{request_id}"
    assert sub.wait_for(lambda ms: any(m.topic == topic for m in ms), timeout), (
        f"no reply to {name} {request_id}"
    )
    reply: dict[str, Any] = sub.json(topic)[-1]
    return reply


def events(sub: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [e for e in sub.json("edge/dev1/events") if e.get("kind") == kind]


def still_working(sub: Subscriber, tag: str) -> None:
    """Results keep coming and commands are answered."""
    count = len(sub.messages("edge/dev1/pipelines/+/results"))
    assert sub.wait_for(lambda ms: len([m for m in ms if "/results" in m.topic]) >= count + 3, 30), tag
    reply = command(sub, "ping", f"ping-{tag}", {})
    assert reply["ok"] and reply["pong"], reply


def reload_failures_reach(sub: Subscriber, count: int) -> bool:
    return len(events(sub, "config.reload_failed")) >= count


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".new", ".bak")) or ".tmp-" in p.name)


def test_config_update_cannot_weaken_security_without_an_operator_signature(
    tmp_path: Path, broker: Mosquitto, make_broker: Any
) -> None:
    private, public = generate_keypair()
    key_file = write_private_key(tmp_path / "operator.pem", private)
    attacker_private, attacker_public = generate_keypair()
    attacker_key = write_private_key(tmp_path / "attacker.pem", attacker_private)
    attacker = make_broker(name="attacker")
    victim = _write(tmp_path / "victim.txt", "".join(f"secret-{i}\n" for i in range(10)))
    (tmp_path / "victim-link.txt").symlink_to(victim)
    config = digits_config(tmp_path, port=broker.port, extra=f'[updates]\npublic_keys = ["{public}"]\n')
    text = config.read_text()
    original = config.read_bytes()
    labels = f"{MODELS}/digits_labels.txt"
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    attacks = {  # name: (new config text, what the refusal names)
        "password file to an attacker's broker": (
            text.replace(
                mqtt,
                (
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {attacker.port}\nusername = "dev1"\n'
                    f'password_file = "{victim}"\n'
                ),
            ),
            "mqtt.password_file",
        ),
        "signing off": (
            text.replace(f'public_keys = ["{public}"]', "public_keys = []"),
            "updates.public_keys",
        ),
        "the attacker's key": (text.replace(public, attacker_public), "updates.public_keys"),
        "TLS without checks": (text.replace(mqtt, mqtt + "tls = { insecure = true }\n"), "mqtt.tls.insecure"),
        "metrics on every interface": (text + '\n[metrics]\nenabled = true\nhost = "0.0.0.0"\n', "metrics"),
        "state dir elsewhere": (text.replace("state-dev1", "state-elsewhere"), "device.state_dir"),
        "labels from a secret file": (text.replace(labels, str(victim)), "labels"),
        "labels through a symlink": (text.replace(labels, str(tmp_path / "victim-link.txt")), "labels"),
        "a GStreamer pipeline": (
            text.replace(
                f'uri = "{tmp_path / "digits.avi"}"', 'uri = "videotestsrc ! filesink location=/tmp/x"'
            ),
            "sources.camera.uri",
        ),
        "an include": (f'include = ["{victim}"]\n' + text, "include"),
        "MQTT off": (text.replace(mqtt, mqtt + "enabled = false\n"), "mqtt.enabled"),
    }
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        base = command(sub, "get_config", "get", {})["file_sha256"]
        assert base == hashlib.sha256(original).hexdigest()
        for number, (name, (new_text, field)) in enumerate(attacks.items()):
            assert new_text != text, name
            reply = command(sub, "config.update", f"attack-{number}", {"config": new_text})
            assert reply["ok"] is False and field in reply["error"], (name, reply)
            assert "secret-" not in json.dumps(reply)
            assert config.read_bytes() == original, name
        signed_by_attacker = sign_config(attacker_key, "dev1", base, attacks["signing off"][0].encode())
        reply = command(
            sub,
            "config.update",
            "attacker-signed",
            {"config": attacks["signing off"][0], "signature": signed_by_attacker},
        )
        assert reply["ok"] is False and "none of the 1 configured operator key" in reply["error"], reply
        for_another = sign_config(key_file, "dev2", base, attacks["signing off"][0].encode())
        reply = command(
            sub,
            "config.update",
            "other-device",
            {"config": attacks["signing off"][0], "signature": for_another},
        )
        assert reply["ok"] is False, reply
        assert sub.wait_for(lambda ms: len(events(sub, "config.refused")) >= len(attacks) + 2, 20)
        still_working(sub, "after-attacks")
        assert "edge-runtime-dev1" not in attacker.log_text()  # never connected to the attacker
        # the operator's signed change goes through, once
        second = generate_keypair()[1]
        rotated = text.replace(
            f'public_keys = ["{public}"]', f'public_keys = ["{public}", "{second}"]'
        ).encode()
        signature = sign_config(key_file, "dev1", base, rotated)
        reply = command(sub, "config.update", "signed", {"config": rotated.decode(), "signature": signature})
        assert reply["ok"] is True and reply["signed_by"] and reply["guarded_changes"], reply
        assert config.read_bytes() == rotated
        shown = command(sub, "get_config", "get-2", {})
        assert len(shown["config"]["updates"]["public_keys"]) == 2  # (shown redacted)
        assert shown["file_sha256"] == hashlib.sha256(rotated).hexdigest()
        replayed = command(
            sub, "config.update", "replayed", {"config": rotated.decode() + "\n", "signature": signature}
        )
        assert replayed["ok"] is False and "signature" in replayed["error"], replayed
        still_working(sub, "after-signed")
        assert daemon.stop() == 0
    assert leftovers(tmp_path) == []


def test_config_update_applies_checks_every_file_and_restores_on_a_failed_reload(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = digits_config(tmp_path, port=broker.port)
    text = config.read_text()
    (tmp_path / "ca-dir").mkdir()
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        # the happy path: an unsigned, free change is written and reloaded
        two = text.replace("top_k = 1", "top_k = 2")
        reply = command(sub, "config.update", "top2", {"config": two})
        assert reply["ok"] is True and reply["reloaded"] == "1 pipelines, 1 sources", reply
        assert config.read_text() == two
        assert sub.wait_for(lambda ms: len(events(sub, "config.reloaded")) == 1, 20)
        sub.clear()
        assert sub.wait_for(lambda ms: any("/results" in m.topic for m in ms), 20)
        assert len(sub.json("edge/dev1/pipelines/+/results")[-1]["result"]["top"]) == 2
        # files that do not open: refused with a reply, the file on disk unchanged
        broken = {
            "missing CA": (mqtt + f'tls = {{ ca = "{tmp_path / "no-such-ca.pem"}" }}\n', "no such file"),
            "a directory as CA": (mqtt + f'tls = {{ ca = "{tmp_path / "ca-dir"}" }}\n', "is a directory"),
            "missing password file": (
                mqtt + f'username = "dev1"\npassword_file = "{tmp_path / "nothing"}"\n',
                "no such file",
            ),
            "a directory as password file": (
                mqtt + f'username = "dev1"\npassword_file = "{tmp_path / "ca-dir"}"\n',
                "is a directory",
            ),
            "model file missing": (None, "no such file"),
        }
        for number, (name, (section, message)) in enumerate(broken.items()):
            if section is None:
                new_text = two.replace("digits_int8.tflite", "missing_int8.tflite")
            else:
                new_text = two.replace(mqtt, section)
            reply = command(sub, "config.update", f"broken-{number}", {"config": new_text})
            assert reply["ok"] is False and message in reply["error"], (name, reply)
            assert config.read_text() == two, name
        # preflight passes, the reload does not (no delegate loads): the old file is written back
        no_delegate = two.replace(
            'path = "', 'delegates = [{ type = "external", library = "/nonexistent/lib.so" }]\npath = "'
        )
        reply = command(sub, "config.update", "no-delegate", {"config": no_delegate})
        assert reply["ok"] is False and "delegates[0].library" in reply["error"], reply
        edgetpu_only = two.replace('path = "', 'delegates = ["edgetpu"]\npath = "')
        reply = command(sub, "config.update", "edgetpu-only", {"config": edgetpu_only})
        assert reply["ok"] is False and "rolled back to the previous config" in reply["error"], reply
        assert config.read_text() == two
        assert sub.wait_for(lambda ms: len(events(sub, "config.reload_failed")) >= 1, 20)
        assert sub.wait_for(lambda ms: len(events(sub, "config.refused")) >= len(broken) + 2, 20)
        still_working(sub, "after-broken")
        assert leftovers(tmp_path) == []
        assert daemon.stop() == 0
    # the next start works: nothing broken was left on disk
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any("/results" in m.topic for m in ms), 30), daemon.log()
        assert daemon.stop() == 0


def test_sighup_with_a_broken_config_is_refused_and_the_daemon_goes_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = digits_config(tmp_path, port=broker.port)
    good = config.read_text()
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
    broken = {
        "missing CA": good.replace(mqtt, mqtt + f'tls = {{ ca = "{tmp_path / "no-such-ca.pem"}" }}\n'),
        "std = 0": good.replace("std = 255.0", "std = 0"),
        "deep nesting": "a = " + "[" * 1000 + "]" * 1000,
        "state_dir a file": good.replace(
            f'state_dir = "{tmp_path / "state-dev1"}"', 'state_dir = "/etc/hostname"'
        ),
    }
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        for number, (name, text) in enumerate(broken.items(), start=1):
            assert text != good, name
            config.write_text(text)
            daemon.proc.send_signal(signal.SIGHUP)
            failed = wait_until(partial(reload_failures_reach, sub, number), 30)
            assert failed, (name, daemon.log()[-3000:])
            assert daemon.proc.poll() is None, name
            still_working(sub, f"sighup-{number}")
        config.write_text(good)
        daemon.proc.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda ms: len(events(sub, "config.reloaded")) == 1, 30)
        still_working(sub, "sighup-good")
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()


def test_the_fleet_tool_sends_a_signed_config_update(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_runtime.fleet.cli import main as fleet

    private, public = generate_keypair()
    key_file = write_private_key(tmp_path / "operator.pem", private)
    config = digits_config(tmp_path, port=broker.port, extra=f'[updates]\npublic_keys = ["{public}"]\n')
    second = generate_keypair()[1]
    new = _write(
        tmp_path / "new.toml",
        config.read_text().replace(f'public_keys = ["{public}"]', f'public_keys = ["{public}", "{second}"]'),
    )
    where = ["--broker", f"{broker.host}:{broker.port}"]
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        assert fleet(["config", "dev1", str(new), *where]) == 1
        assert "config refused" in capsys.readouterr().err and config.read_text() != new.read_text()
        assert fleet(["config", "dev1", str(new), "--key", str(key_file), *where]) == 0
        assert "config applied: 1 pipelines, 1 sources, signed by" in capsys.readouterr().out
        assert config.read_bytes() == new.read_bytes()
        still_working(sub, "after-fleet")
        assert daemon.stop() == 0


FUSED = "pipelines.1.models.0"
FUSED_CASES = {
    "a window of the wrong length": (f"{FUSED}.inputs.1.samples=32", "does not hold 32 samples x 3 channels"),
    "a channel missing": (f'{FUSED}.inputs.1.channels=["ax", "ay"]', "does not hold 64 samples x 2 channels"),
    "an input name the model lacks": (f'{FUSED}.inputs.1.input="accel"', "no input 'accel'"),
    "a head on an output the model lacks": (f"{FUSED}.postprocess.digit.output=5", "output 5 not found"),
    "labels of another model": (
        f'{FUSED}.postprocess.state.labels="bundled:digits_labels.txt"',
        "3 classes but 10 labels",
    ),
    "an event label the model lacks": (f'{FUSED}.postprocess.state.event={{labels=["boom"]}}', "boom"),
}


@pytest.mark.parametrize("case", list(FUSED_CASES), ids=list(FUSED_CASES))
def test_model_dependent_checks_of_the_two_input_model_agree(tmp_path: Path, case: str) -> None:
    """The demo's fused model (an image and a window of vibration): its inputs, heads and labels
    checked against the file by validate-config, refused the same way by run."""
    demo = _write(tmp_path / "demo.toml", (MODELS.parent / "demo.toml").read_text())
    assignment, expected = FUSED_CASES[case]
    state = f"device.state_dir={str(tmp_path / 'state')!r}"
    assert cli("validate-config", str(demo), "--set", state).returncode == 0
    validate = one_line_error(cli("validate-config", str(demo), "--set", state, "--set", assignment))
    assert expected in validate and "pipelines[1]" in validate, validate
    run = cli("run", "--config", str(demo), "--set", state, "--set", assignment, "--max-results", "1")
    assert one_line_error(run) == validate
