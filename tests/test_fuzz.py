"""Fuzzing with hypothesis: config files, command payloads, names, model bytes never crash."""

from __future__ import annotations

import contextlib
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.paths import MODELS
from edge_runtime.config import validate
from edge_runtime.errors import ConfigError, EdgeRuntimeError
from edge_runtime.reporting.commands import CommandError, parse_command
from edge_runtime.reporting.topics import Topics, safe_level
from edge_runtime.runtime.modelfile import parse_model

pytestmark = pytest.mark.fuzz

KEYS = [
    "device",
    "id",
    "mqtt",
    "port",
    "sources",
    "type",
    "camera",
    "serial",
    "uri",
    "pipelines",
    "name",
    "trigger",
    "models",
    "path",
    "inputs",
    "kind",
    "image",
    "postprocess",
    "classification",
    "threads",
    "delegates",
    "every_s",
    "health",
    "interval_s",
    "tls",
    "ca",
    "fields",
    "format",
    "csv",
    "window_s",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(KEYS),
)
toml_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)
configs = st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_random_config_data_gives_config_errors_only(data: dict[str, Any]) -> None:
    try:
        validate(data, Path("/nonexistent"))
    except ConfigError as exc:
        assert exc.problems and all(": " in p for p in exc.problems)


def test_random_toml_files_never_give_a_traceback(tmp_path: Path) -> None:
    import random

    rng = random.Random(1)
    pieces = [
        "[device]\n",
        "id = ",
        '"x"\n',
        "[[pipelines]]\n",
        "name = 1\n",
        "[sources.a]\n",
        'type = "camera"\n',
        "= =\n",
        "[mqtt]\nport = -5\n",
        "\x00",
        "[[pipelines.models]]\n",
        'path = "a"\n',
        "inputs = [{}]\n",
        "trigger = {every_s = 0}\n",
        "[",
        "]]\n",
        '"\n',
        "threads = 1e400\n",
    ]
    files = []
    for i in range(40):
        path = tmp_path / f"c{i}.toml"
        path.write_text("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
        files.append(str(path))
    script = (
        "import sys\nfrom edge_runtime.cli import main\n"
        "codes = [main(['validate-config', f]) for f in sys.argv[1:]]\n"
        "sys.exit(0 if all(c in (0, 1) for c in codes) else 3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *files], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_command_payloads_are_refused_cleanly(payload: bytes) -> None:
    with contextlib.suppress(CommandError):  # anything else fails the test
        parse_command("ping", payload, max_bytes=200)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=string.printable + "é+#/\x00", max_size=30))
def test_names_never_inject_topic_levels(name: str) -> None:
    topics = Topics("edge", "dev")
    try:
        topic = topics.results(name)
    except ValueError:
        return
    assert topic.count("/") == 4 and "+" not in topic and "#" not in topic
    assert safe_level(name, "x") == name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_models_are_read_or_refused_never_crash(data: st.DataObject) -> None:
    original = bytearray((MODELS / "digits_int8.tflite").read_bytes())
    for _ in range(data.draw(st.integers(1, 16))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    with contextlib.suppress(EdgeRuntimeError):  # anything else fails the test
        parse_model(bytes(original[:cut] if data.draw(st.booleans()) else original))
