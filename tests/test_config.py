from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.config import apply_override, load_config, parse_value
from edge_runtime.errors import ConfigError

GOOD = """
[device]
id = "cam-01"
state_dir = "state"

[sources.front]
type = "camera"
uri = "video.avi"

[sources.vib]
type = "serial"
port = "loop://"
format = "csv"
fields = ["ax", "ay", "az"]

[[pipelines]]
name = "digits"
trigger = "front"

[[pipelines.models]]
path = "bundled:digits_int8.tflite"
delegates = ["edgetpu", { type = "cpu" }]
threads = 2
inputs = [{ kind = "image", source = "front", color = "gray", std = 255 }]
postprocess = { type = "classification", labels = "bundled:digits_labels.txt" }
"""

FIVE_MISTAKES = """
[device]
id = "cam/01"

[mqtt]
port = 70000

[sources.front]
type = "camera"
uri = "video.avi"
colour = "rgb"

[[pipelines]]
name = "digits"
trigger = "back"

[[pipelines.models]]
path = "bundled:digits_int8.tflite"
threads = 0
inputs = [{ kind = "image", source = "front" }]
postprocess = { type = "classification" }
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_and_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    assert config.device.id == "cam-01"
    assert config.resolve("state") == tmp_path / "state"
    assert config.resolve("bundled:digits_int8.tflite").is_file()
    chain = config.pipelines[0].models[0].delegates
    assert chain is not None and [d.type for d in chain] == ["edgetpu", "cpu"]
    assert config.pipelines[0].trigger.source == "front"  # type: ignore[union-attr]


def test_every_mistake_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, FIVE_MISTAKES))
    problems = info.value.problems
    text = "\n".join(problems)
    assert "device.id: 'cam/01':" in text
    assert "mqtt.port: 70000: Input should be less than or equal to 65535" in text
    assert "sources.front.colour: 'rgb': Extra inputs are not permitted" in text
    assert "pipelines[0].models[0].threads: 0: Input should be greater than or equal to 1" in text
    assert len(problems) == 4  # schema errors first; cross-references after a clean schema


def test_cross_references_are_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace('trigger = "front"', 'trigger = "back"').replace('source = "front"', 'source = "vib"')
    text = text.replace("bundled:digits_int8.tflite", "missing.tflite")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    problems = "\n".join(info.value.problems)
    assert "pipelines[0].trigger: 'back': no source of that name" in problems
    assert "pipelines[0].models[0].path: 'missing.tflite': no such file" in problems
    assert "pipelines[0].models[0].inputs[0].source: 'vib': an image input needs a camera source" in problems


def test_validate_config_cli_reports_five_mistakes_and_exits_1(tmp_path: Path) -> None:
    text = FIVE_MISTAKES.replace('trigger = "back"', "trigger = { every_s = -1 }")
    path = _write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "validate-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert len(lines) == 5, proc.stderr
    assert any(line.strip().startswith("pipelines[0].trigger.every_s: -1:") for line in lines), proc.stderr


def test_validate_config_cli_accepts_a_good_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "validate-config", str(_write(tmp_path, GOOD))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok: device cam-01, 2 sources, 1 pipelines, 1 models" in proc.stdout


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "[device\nid = 1"))


def test_set_overrides_by_dotted_path_and_is_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    config = load_config(path, ["mqtt.port=1884", "pipelines.0.models.0.threads=4", "device.id=cam-02"])
    assert config.mqtt.port == 1884
    assert config.pipelines[0].models[0].threads == 4
    assert config.device.id == "cam-02"
    with pytest.raises(ConfigError, match=r"mqtt\.port: 'abc'"):
        load_config(path, ["mqtt.port=abc"])
    with pytest.raises(ConfigError, match="no list item 3"):
        load_config(path, ["pipelines.3.name=x"])


def test_override_values_use_toml_syntax() -> None:
    assert parse_value("2") == 2
    assert parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("plain text") == "plain text"
    data: dict[str, object] = {}
    apply_override(data, "a.b.c=1.5")
    assert data == {"a": {"b": {"c": 1.5}}}


def test_per_camera_tamper_options_override_the_global_ones_for_that_camera_only(tmp_path: Path) -> None:
    text = GOOD + (
        "\n[monitor.tamper]\ndark_enter = 30.0\nhold_s = 1.0\n"
        '\n[monitor.tamper.sources.front]\nstates = ["dark", "covered"]\ndark_enter = 5.0\ndark_leave = 8.0\n'
    )
    tamper = load_config(_write(tmp_path, text)).monitor.tamper
    front = tamper.for_source("front")
    assert (front.dark_enter, front.dark_leave, front.hold_s, front.states) == (
        5.0,
        8.0,
        1.0,
        ["dark", "covered"],
    )
    other = tamper.for_source("side")  # any other camera: the global options
    assert (other.dark_enter, other.dark_leave, len(other.states)) == (30.0, 50.0, 6)


def test_per_camera_tamper_options_are_checked_with_their_path(tmp_path: Path) -> None:
    unknown = GOOD + "\n[monitor.tamper.sources.back]\nenabled = false\n"
    unknown += "\n[monitor.tamper.sources.vib]\nhold_s = 1.0\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, unknown))
    problems = "\n".join(info.value.problems)
    assert "monitor.tamper.sources.back: 'back': no source of that name" in problems
    assert "monitor.tamper.sources.vib: 'vib': tamper options apply to camera sources only" in problems

    # the merged options keep their hysteresis: a leave threshold below the global enter one
    crossed = (
        GOOD + "\n[monitor.tamper]\ndark_enter = 40.0\n\n[monitor.tamper.sources.front]\ndark_leave = 20.0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, crossed))
    problems = "\n".join(info.value.problems)
    assert (
        "monitor.tamper" in problems and "sources.front: dark_leave must be at least dark_enter" in problems
    )

    bad = GOOD + '\n[monitor.tamper.sources.front]\ndark_enter = 300.0\nstates = ["moving"]\ncheck_hz = 2.0\n'
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, bad))
    problems = "\n".join(info.value.problems)
    assert (
        "monitor.tamper.sources.front.dark_enter: 300.0: Input should be less than or equal to 255"
        in problems
    )
    assert "monitor.tamper.sources.front.states[0]: 'moving'" in problems
    assert "monitor.tamper.sources.front.check_hz: 2.0: Extra inputs are not permitted" in problems
