"""``EDGE_RUNTIME__SECTION__KEY=value`` environment overrides (containers): read like ``--set``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.config.load import env_overrides, load_config
from edge_runtime.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONTAINER_TOML = REPO / "devices" / "container" / "config.toml"


def test_variables_become_set_assignments_in_name_order() -> None:
    env = {
        "EDGE_RUNTIME__MQTT__PORT": "1884",
        "EDGE_RUNTIME__DEVICE__ID": "cam-07",
        "EDGE_RUNTIME__PIPELINES__0__MODELS__0__THREADS": "2",
        "EDGE_RUNTIME_SOAK_S": "60",  # one underscore: another variable of the project, not an override
        "PATH": "/usr/bin",
    }
    assert env_overrides(env) == [
        ("EDGE_RUNTIME__DEVICE__ID", "device.id=cam-07"),
        ("EDGE_RUNTIME__MQTT__PORT", "mqtt.port=1884"),
        ("EDGE_RUNTIME__PIPELINES__0__MODELS__0__THREADS", "pipelines.0.models.0.threads=2"),
    ]


def test_a_malformed_name_is_refused_with_the_variable() -> None:
    with pytest.raises(ConfigError, match="EDGE_RUNTIME__MQTT____PORT: expected"):
        env_overrides({"EDGE_RUNTIME__MQTT____PORT": "1"})
    with pytest.raises(ConfigError, match="EDGE_RUNTIME__: expected"):
        env_overrides({"EDGE_RUNTIME__": "1"})


def test_overrides_apply_and_are_validated_like_set() -> None:
    env = {
        "EDGE_RUNTIME__MQTT__PORT": "1884",
        "EDGE_RUNTIME__DEVICE__ID": "cam-07",
        "EDGE_RUNTIME__PIPELINES__0__MODELS__0__THREADS": "2",
        "EDGE_RUNTIME__UPDATES__MAX_BYTES": "2048",
    }
    config = load_config(CONTAINER_TOML, environ=env)
    assert config.mqtt.port == 1884
    assert config.device.id == "cam-07"
    assert config.pipelines[0].models[0].threads == 2
    assert config.updates.max_bytes == 2048
    # the same errors as --set, all at once, as path: value: message
    with pytest.raises(ConfigError) as caught:
        bad = {"EDGE_RUNTIME__MQTT__PORT": "abc", "EDGE_RUNTIME__MQTT__QOS": "7"}
        load_config(CONTAINER_TOML, environ=bad)
    assert any(p.startswith("mqtt.port: 'abc'") for p in caught.value.problems)
    assert any(p.startswith("mqtt.qos: 7") for p in caught.value.problems)
    with pytest.raises(ConfigError, match="Extra inputs are not permitted"):
        load_config(CONTAINER_TOML, environ={"EDGE_RUNTIME__MQTT__HOSTNAME": "x"})
    # a path that does not exist in the data names the variable, not --set
    with pytest.raises(ConfigError, match="EDGE_RUNTIME__PIPELINES__5__NAME") as caught:
        load_config(CONTAINER_TOML, environ={"EDGE_RUNTIME__PIPELINES__5__NAME": "x"})
    assert "--set" not in str(caught.value)


def test_set_wins_over_the_environment() -> None:
    config = load_config(CONTAINER_TOML, ["mqtt.port=1999"], environ={"EDGE_RUNTIME__MQTT__PORT": "1884"})
    assert config.mqtt.port == 1999


def test_the_cli_reads_the_process_environment(tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_RUNTIME__DEVICE__ID": "from-env", "EDGE_RUNTIME__MQTT__PORT": "99999"}
    cmd = [sys.executable, "-m", "edge_runtime", "validate-config", str(CONTAINER_TOML)]
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "mqtt.port: 99999: Input should be less than or equal to 65535" in bad.stderr
    env["EDGE_RUNTIME__MQTT__PORT"] = "1884"
    good = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert good.returncode == 0, good.stderr
    assert "device from-env" in good.stdout
