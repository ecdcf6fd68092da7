"""Derive test models from the bundled ones, without TensorFlow.

``tests/data/digits_v2_int8.tflite``: the same model with another description (another sha256).
``tests/data/constant_digits_int8.tflite``: the bundled digits model with the weights of its last
FULLY_CONNECTED layer set to zero, so its output is softmax(bias) whatever the input: the same
inputs and outputs as digits (it passes an update's staging checks) but constant outputs (it must
fail probation). Run: ``.venv/bin/python tools/make_test_models.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime.runtime.modelfile import read_model_file  # noqa: E402


def constant_digits(source: Path, target: Path) -> None:
    info, data = read_model_file(source)
    last_fc = [op for op in info.operators if op.name == "FULLY_CONNECTED"][-1]
    weights = info.tensors[last_fc.inputs[1]]
    raw = bytearray(data)
    # the weight buffer's bytes, found by content (the parser gives views, not offsets)
    parsed = next(w for w in info.weights if w.tensor == weights.name)
    assert parsed.elements == weights.nbytes, "int8 weights: one byte each"
    view = _buffer_bytes(data, weights.buffer)
    start = raw.find(view)
    if start < 0 or raw.find(view, start + 1) >= 0:
        raise SystemExit(f"cannot locate the weights of {weights.name} uniquely")
    raw[start : start + len(view)] = bytes(len(view))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(raw))
    print(f"{target}: {weights.name} ({len(view)} int8 weights) zeroed")


def relabelled_copy(source: Path, target: Path) -> None:
    """The same model with another description string: other bytes and sha256, same behaviour
    (a stand-in for a retrained model that passes every check of an update)."""
    data = bytearray(source.read_bytes())
    marker = b"MLIR Converted."
    start = data.find(marker)
    if start < 0:
        raise SystemExit(f"{source}: no converter description to change")
    data[start : start + len(marker)] = b"MLIR Converted!"
    target.write_bytes(bytes(data))
    print(f"{target}: {source.name} with another description")


def _buffer_bytes(data: bytes, buffer_index: int) -> bytes:
    from edge_runtime.runtime.flatbuffer import Buffer, root
    from edge_runtime.runtime.modelfile import TFLITE_IDENTIFIER

    buf = Buffer(data, "model")
    model = root(buf, TFLITE_IDENTIFIER)
    raw = model.tables(4)[buffer_index].bytes(0)
    assert raw is not None
    return bytes(raw)


if __name__ == "__main__":
    models = ROOT / "edge_runtime" / "models"
    constant_digits(models / "digits_int8.tflite", ROOT / "tests" / "data" / "constant_digits_int8.tflite")
    relabelled_copy(models / "digits_int8.tflite", ROOT / "tests" / "data" / "digits_v2_int8.tflite")
