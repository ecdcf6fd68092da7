"""The model runtime on the real bundled models, under the backend named by the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import missing_delegate_cause

from devkit.paths import DATA, MODELS
from edge_runtime.errors import InputError, ModelFormatError, ModelLoadError
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.modelfile import parse_model, read_model_file
from edge_runtime.runtime.quant import quantize

pytestmark = pytest.mark.backend


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels))


def test_digits_int8_accuracy_on_the_held_out_split(backend_name: str, manifest: dict[str, Any]) -> None:
    model = Model(MODELS / "digits_int8.tflite", backend=backend_name)
    assert model.backend.name == backend_name
    spec = model.inputs[0]
    assert spec.dtype == "int8" and spec.quant is not None
    with np.load(MODELS / "digits_heldout.npz") as data:
        images, labels = data["images"], data["labels"]
    predicted = []
    for image in images:
        q = quantize(image.astype(np.float64)[..., None] / 255.0, spec.quant)
        (scores,) = model.invoke([q[None]])
        predicted.append(int(np.argmax(scores)))
    accuracy = _accuracy(np.array(predicted), labels)
    float_accuracy = manifest["models"]["digits"]["accuracy"]["float"]
    assert accuracy >= 0.95
    assert accuracy >= float_accuracy - 0.015, (accuracy, float_accuracy)


def test_fused_int8_accuracy_of_both_heads(backend_name: str, manifest: dict[str, Any]) -> None:
    model = Model(MODELS / "fused_int8.tflite", backend=backend_name)
    image_spec = next(s for s in model.inputs if "image" in s.name)
    vib_spec = next(s for s in model.inputs if "vibration" in s.name)
    state_out = next(s.position for s in model.outputs if s.shape[-1] == 3)
    digit_out = next(s.position for s in model.outputs if s.shape[-1] == 10)
    assert image_spec.quant is not None and vib_spec.quant is not None
    with np.load(MODELS / "fused_heldout.npz") as data:
        images, vibration = data["images"], data["vibration"]
        digit_labels, state_labels = data["digit_labels"], data["state_labels"]
    digits, states = [], []
    for image, window in zip(images, vibration, strict=True):
        inputs = {
            image_spec.name: quantize(image.astype(np.float64)[None, ..., None] / 255.0, image_spec.quant),
            vib_spec.name: quantize(window[None].astype(np.float64), vib_spec.quant),
        }
        outputs = model.invoke(inputs)
        digits.append(int(np.argmax(outputs[digit_out])))
        states.append(int(np.argmax(outputs[state_out])))
    float_acc = manifest["models"]["fused"]["accuracy"]["float"]
    digit_acc = _accuracy(np.array(digits), digit_labels)
    state_acc = _accuracy(np.array(states), state_labels)
    assert digit_acc >= 0.95 and digit_acc >= float_acc["digit"] - 0.015
    assert state_acc >= 0.95 and state_acc >= float_acc["state"] - 0.015


def test_a_missing_accelerator_falls_back_to_cpu_with_the_reason(backend_name: str) -> None:
    model = Model(MODELS / "digits_int8.tflite", delegates=["edgetpu", "gpu", "cpu"], backend=backend_name)
    assert model.delegate == "cpu"
    assert [f.delegate for f in model.failures] == ["edgetpu", "gpu"]
    cause = missing_delegate_cause(backend_name)
    assert f"libedgetpu.so.1: {cause}" in model.failures[0].cause
    assert model.placement.startswith(f"running on cpu; edgetpu failed: libedgetpu.so.1: {cause}")


def test_an_external_delegate_that_is_missing_is_reported(backend_name: str, tmp_path: Path) -> None:
    chain: list[Any] = [{"type": "external", "library": str(tmp_path / "libnope.so")}, "cpu"]
    model = Model(MODELS / "digits_int8.tflite", delegates=chain, backend=backend_name)
    assert model.delegate == "cpu"
    assert "libnope.so" in model.failures[0].cause


@pytest.mark.tflite
def test_an_edgetpu_compiled_model_without_an_edgetpu_is_a_clear_error(backend_name: str) -> None:
    path = DATA / "edgetpu_custom_op.tflite"
    info, _ = read_model_file(path)
    assert info.needs_edgetpu and "edgetpu-custom-op" in info.custom_ops
    with pytest.raises(ModelLoadError) as excinfo:
        Model(path, delegates=["edgetpu", "cpu"], backend=backend_name)
    message = str(excinfo.value)
    assert "edgetpu failed: libedgetpu.so.1: cannot open shared object file" in message
    assert "cpu failed: model is compiled for the Edge TPU (edgetpu-custom-op)" in message


def test_wrong_inputs_are_refused_with_the_input_named(backend_name: str) -> None:
    model = Model(MODELS / "digits_int8.tflite", backend=backend_name)
    name = model.inputs[0].name
    with pytest.raises(InputError, match=rf"input 0 '{name}' expects int8 \[1, 8, 8, 1\], got float32"):
        model.invoke([np.zeros((1, 8, 8, 1), np.float32)])
    with pytest.raises(InputError, match=r"got int8 \[1, 64\]"):
        model.invoke([np.zeros((1, 64), np.int8)])
    with pytest.raises(InputError, match="expects 1 inputs, got 2"):
        model.invoke([np.zeros((1, 8, 8, 1), np.int8)] * 2)
    with pytest.raises(InputError, match="no input named"):
        model.invoke({"nope": np.zeros((1, 8, 8, 1), np.int8)})
    # the batch dimension may be left out
    (out,) = model.invoke([np.zeros((8, 8, 1), np.int8)])
    assert out.shape == (1, 10) and out.dtype == np.int8


def test_tensors_are_allocated_once_and_reused(backend_name: str) -> None:
    model = Model(MODELS / "digits_int8.tflite", backend=backend_name)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 127, (1, 8, 8, 1), dtype=np.int8)
    first = model.invoke([x])[0]
    for _ in range(50):
        model.invoke([rng.integers(-128, 127, (1, 8, 8, 1), dtype=np.int8)])
    assert np.array_equal(model.invoke([x])[0], first)


def test_the_model_file_reader_sees_per_channel_weights_and_io_quantization() -> None:
    info, data = read_model_file(MODELS / "digits_int8.tflite")
    (inp,) = info.input_tensors
    assert inp.dtype == "int8" and inp.quantization is not None and not inp.quantization.per_channel
    convs = [info.tensors[op.inputs[1]] for op in info.operators if op.name == "CONV_2D"]
    assert convs and all(t.quantization is not None and t.quantization.per_channel for t in convs)
    assert info.fully_integer
    assert info.weight_sparsity >= 0.45
    assert parse_model(data).sha256 == info.sha256


@pytest.mark.parametrize("cut", [8, 64, 1000, 20000, -100, -1])
def test_truncated_models_are_format_errors(tmp_path: Path, cut: int) -> None:
    data = (MODELS / "digits_int8.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFormatError):
        read_model_file(path)
