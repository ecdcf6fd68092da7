"""Fuzzing with hypothesis: config files, command payloads, names, model bytes never crash."""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devkit.paths import MODELS
from edge_runtime.config import validate
from edge_runtime.errors import ConfigError, ModelFormatError
from edge_runtime.reporting.commands import CommandError, parse_command
from edge_runtime.reporting.topics import Topics, safe_level
from edge_runtime.runtime.modelfile import ModelInfo, parse_model

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


ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True),  # mostly good ids
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
command_bodies = st.one_of(
    st.binary(max_size=300),  # mostly not JSON at all
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON, mostly not an object
    st.builds(  # objects with an id of some kind and other arguments: valid, bad id or too big
        lambda extra, request_id, with_id: json.dumps(
            {**extra, **({"id": request_id} if with_id else {})}
        ).encode(),
        st.dictionaries(st.text(max_size=8).filter(lambda k: k != "id"), json_values, max_size=4),
        ids,
        st.booleans(),
    ),
)
# a request id becomes a topic level (reply/{id}): a letter or digit first, at most 128 characters
# (edge_runtime/names.py); the refusal message names the characters only
GOOD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# the refusals edge_runtime/reporting/inbound.py documents for a payload that is not clean JSON
UNCLEAN_REFUSALS = re.compile(
    r"payload is not JSON: |payload is not usable JSON: |.* is not a JSON number$|duplicate key |"
    r"an integer of \d+ digits is too long|a number of \d+ characters is too long|number .* is out of range|"
    r"(payload is )?nested deeper than 16 levels|a string holds a lone surrogate"
)


def clean_json(text: str) -> tuple[bool, Any]:
    """Whether ``text`` is JSON the strict reader must take as it is (and the value): no NaN or
    Infinity, no duplicate key, integers of at most 20 digits, other numbers of at most 40
    characters and finite, no lone surrogate, at most 16 levels deep."""
    problems: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            problems.append("duplicate")
        return dict(items)

    def number(literal: str) -> float:
        value = float(literal)
        if len(literal) > 40 or not math.isfinite(value):
            problems.append("number")
        return value

    def integer(literal: str) -> int:
        if len(literal.lstrip("-")) > 20:
            problems.append("integer")
            return 0
        return int(literal)

    def constant(name: str) -> float:
        problems.append("constant")
        return 0.0

    try:
        value = json.loads(
            text, object_pairs_hook=pairs, parse_float=number, parse_int=integer, parse_constant=constant
        )
    except (ValueError, RecursionError):
        return False, None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if re.search("[\ud800-\udfff]", item):
                problems.append("surrogate")
        elif isinstance(item, dict | list):
            if depth > 16:
                problems.append("depth")
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if isinstance(key, str) and re.search("[\ud800-\udfff]", key):
                    problems.append("surrogate")
                stack.append((child, depth + 1))
    return not problems, value


@settings(max_examples=1000, deadline=None)
@given(command_bodies)
@example(b'{"id": "p1", "pipeline": "digits", "n": [1, 2]}')  # read: id and arguments
@example(b'{"id": "-p1"}')  # refused: the id does not start with a letter or digit
@example(b'{"id": "' + b"a" * 129 + b'"}')  # refused: the id is too long for a topic level
@example(b" " * 201)  # refused: over the limit before anything is parsed
@example(b'{"id": "p1", "id": "p2"}')  # refused: a duplicate key
@example(b'{"id": "p1", "x": NaN}')  # refused: not a JSON number
@example(b'{"id": "p1", "x": 123456789012345678901}')  # refused: an integer too long
@example(b'{"id": "p1", "x": "\\ud800"}')  # refused: a lone surrogate
@example(b'{"id": "p1", "x": ' + b"[" * 17 + b"]" * 17 + b"}")  # refused: nested too deep
def test_random_command_payloads_are_refused_cleanly(payload: bytes) -> None:
    """Each payload is either read exactly (the id, and every other key as an argument) or refused
    with the documented reason, decided here independently of the parser."""
    limit = 200
    expected: re.Pattern[str] | tuple[str, dict[str, Any]]
    if len(payload) > limit:
        expected = re.compile(re.escape(f"payload of {len(payload)} bytes is over the limit of {limit}"))
    else:
        try:
            clean, body = clean_json(payload.decode("utf-8"))
        except UnicodeDecodeError:
            clean, body = False, None
        if not clean:
            expected = UNCLEAN_REFUSALS
        elif not isinstance(body, dict):
            expected = re.compile(f"payload must be a JSON object, not {type(body).__name__}")
        elif not (isinstance(body.get("id"), str) and GOOD_ID.fullmatch(body["id"])):
            expected = re.compile(re.escape("'id' must be a string of letters, digits, '_', '.', ':' or '-'"))
        else:
            request_id = body.pop("id")
            expected = (request_id, body)
    try:
        command = parse_command("ping", payload, max_bytes=limit)
    except CommandError as exc:  # anything else fails the test
        assert isinstance(expected, re.Pattern), (payload, exc)
        assert expected.match(str(exc)), (payload, str(exc), expected.pattern)
    else:
        assert not isinstance(expected, re.Pattern), (payload, command, expected.pattern)
        assert (command.name, command.id, command.args) == ("ping", *expected)
        assert command.response_topic is None and command.correlation is None


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


def _names(enum: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


def reference_reading(data: bytes) -> dict[str, Any]:
    """What the flatbuffers code generated from the TFLite schema (shipped in the LiteRT wheel)
    reads from ``data``: the reference a bounds-checked parser must agree with."""
    from ai_edge_litert import schema_py_generated as fb

    types, ops = _names(fb.TensorType), _names(fb.BuiltinOperator)
    model = fb.Model.GetRootAs(data, 0)
    main = model.Subgraphs(0)

    def ints(array: Any) -> tuple[int, ...]:
        return () if isinstance(array, int) else tuple(int(x) for x in array)

    def op_name(index: int) -> str:
        code = model.OperatorCodes(index)
        builtin = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
        if builtin == fb.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            return custom.decode("utf-8", errors="replace") if custom else "<unnamed custom op>"
        return ops.get(builtin, f"BUILTIN_{builtin}")

    tensors = []
    for i in range(main.TensorsLength()):
        tensor = main.Tensors(i)
        name = tensor.Name()
        tensors.append(
            (
                name.decode("utf-8", errors="replace") if name else f"tensor_{i}",
                ints(tensor.ShapeAsNumpy()),
                types.get(tensor.Type(), f"type_{tensor.Type()}").lower(),
                tensor.Buffer(),
            )
        )
    operators = []
    for i in range(main.OperatorsLength()):
        op = main.Operators(i)
        operators.append((op_name(op.OpcodeIndex()), ints(op.InputsAsNumpy()), ints(op.OutputsAsNumpy())))
    description = model.Description()
    return {
        "version": model.Version(),
        "description": description.decode("utf-8", errors="replace") if description else "",
        "subgraphs": model.SubgraphsLength(),
        "tensors": tensors,
        "operators": operators,
        "inputs": ints(main.InputsAsNumpy()),
        "outputs": ints(main.OutputsAsNumpy()),
    }


def our_reading(info: ModelInfo, main_operators: int) -> dict[str, Any]:
    """parse_model's reading in the reference's shape (the main subgraph's operators come first)."""
    return {
        "version": info.schema_version,
        "description": info.description,
        "subgraphs": info.subgraphs,
        "tensors": [(t.name, t.shape, t.dtype, t.buffer) for t in info.tensors],
        "operators": [(op.name, op.inputs, op.outputs) for op in info.operators[:main_operators]],
        "inputs": info.inputs,
        "outputs": info.outputs,
    }


REFUSALS = ("digits_int8.tflite: not a valid TFLite flatbuffer: ", "digits_int8.tflite: empty file")


def test_the_reference_reader_reads_the_bundled_model_as_parse_model_does() -> None:
    data = (MODELS / "digits_int8.tflite").read_bytes()
    reference = reference_reading(data)
    ours = our_reading(parse_model(data, "digits_int8.tflite"), len(reference["operators"]))
    assert ours == reference
    assert len(ours["tensors"]) == 17 and ours["inputs"] == (0,) and ours["operators"][0][0] == "CONV_2D"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_models_are_read_or_refused_never_crash(data: st.DataObject) -> None:
    """Bytes changed at random places, maybe cut short: parse_model either reads exactly what the
    schema's reference reader reads from the same bytes, or refuses them with a ModelFormatError
    that names the file and says it is not a valid TFLite flatbuffer; never anything else."""
    original = bytearray((MODELS / "digits_int8.tflite").read_bytes())
    for _ in range(data.draw(st.integers(1, 16))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    mutated = bytes(original[:cut] if data.draw(st.booleans()) else original)
    try:
        info = parse_model(mutated, "digits_int8.tflite")
    except ModelFormatError as exc:  # any other exception fails the test
        assert str(exc).startswith(REFUSALS), str(exc)
        return
    assert info.size_bytes == len(mutated)
    assert info.sha256 == hashlib.sha256(mutated).hexdigest()
    reference = reference_reading(mutated)
    assert len(info.operators) >= len(reference["operators"])
    assert our_reading(info, len(reference["operators"])) == reference
