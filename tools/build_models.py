#!/usr/bin/env python3
"""Build the bundled int8 TFLite models, their held-out sets and manifests (dev-only).

Runs in its own TensorFlow venv, never in the runtime's:

    python3 -m venv .venv-models
    .venv-models/bin/pip install -r tools/requirements-models.txt
    TF_USE_LEGACY_KERAS=1 .venv-models/bin/python tools/build_models.py \
        [--only NAME ...] [--out DIR] [--float]

Models (NAME): digits, fused, detect, mobilenet_v2, edgetpu_custom_op (the last one is derived
from the digits model and rebuilds it when DIR has none). Outputs, relative to DIR (default: the
repository root):

    edge_runtime/models/{digits,fused,detect}_int8.tflite, labels, *_heldout.npz, manifest.json
    models/mobilenet_v2_int8.tflite, models/manifest.json
    tests/data/edgetpu_custom_op.tflite
    tests/data/float/{digits,fused,detect}_float.tflite, tests/data/float/manifest.json (with --float:
        the pruned float models the int8 ones are converted from, test data of `edge-runtime optimize`)

Every model is trained with fixed seeds (python, numpy, TensorFlow, op determinism) on CPU,
magnitude-pruned with tfmot, stripped, converted to full-integer int8 (int8 input and output)
and evaluated with tf.lite.Interpreter on its held-out split, fed exactly the stored uint8
pixels quantized as q = clip(round(x / scale) + zero_point, -128, 127).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if os.environ["TF_USE_LEGACY_KERAS"] != "1":
    sys.exit("build_models.py: run with TF_USE_LEGACY_KERAS=1 (tfmot prunes only tf-keras models)")

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow.lite.tools import flatbuffer_utils

REPO = Path(__file__).resolve().parents[1]
SEED = 20261123
BUILD_COMMAND = "TF_USE_LEGACY_KERAS=1 .venv-models/bin/python tools/build_models.py"
ALL_MODELS = ("digits", "fused", "detect", "mobilenet_v2", "edgetpu_custom_op")
PKG_DIR = Path("edge_runtime/models")
ROOT_MODELS_DIR = Path("models")
TEST_DATA_DIR = Path("tests/data")
FLOAT_DIR = TEST_DATA_DIR / "float"
# set by --float: also write the float (pruned, unquantized) models digits and fused come from
OPTIONS = {"float": False}

FINAL_SPARSITY = 0.6
IMAGE_PREPROCESSING = {
    "kind": "image",
    "color": "gray",
    "layout": "HWC",
    "normalize": {"mean": 0.0, "std": 255.0},
    "resize_interpolation": "area",
}
DIGIT_LABELS = [str(i) for i in range(10)]


def _load_synthetic() -> Any:
    """Import edge_runtime/synthetic.py by path (works without the package being installed)."""
    path = REPO / "edge_runtime" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("edge_runtime_synthetic", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


synthetic = _load_synthetic()


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[build_models {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    keras.utils.set_random_seed(seed)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """A compressed .npz with fixed zip timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def file_entry(path: Path, data: bytes) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256_bytes(data), "size_bytes": len(data)}


def versions() -> dict[str, str]:
    import sklearn

    return {
        "tensorflow": tf.__version__,
        "tf_keras": keras.__version__,
        "tfmot": tfmot.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def pixels_to_float(pixels: np.ndarray) -> np.ndarray:
    """The documented image normalisation: x = pixel / 255."""
    return pixels.astype(np.float32) / 255.0


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (scale * (q.astype(np.int32) - zero_point)).astype(np.float32)


# --------------------------------------------------------------------------- data


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits as uint8 pixels round(v * 255 / 16), split 75/25 stratified, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    labels = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(pixels, labels, test_size=0.25, random_state=0, stratify=labels)
    return xtr, ytr, xte, yte


def shift_images(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Shift each [H, W] image by (dy, dx) pixels in -1..1 with zero fill."""
    n, h, w = x.shape
    padded = np.zeros((n, h + 2, w + 2), dtype=x.dtype)
    padded[:, 1 : h + 1, 1 : w + 1] = x
    out = np.empty_like(x)
    for i in range(n):
        y0, x0 = 1 - dy[i], 1 - dx[i]
        out[i] = padded[i, y0 : y0 + h, x0 : x0 + w]
    return out


def augment_digits(
    pixels: np.ndarray, labels: np.ndarray, copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Clean copy plus ``copies - 1`` copies with +/-1 px shifts, gain 0.8..1.1, offset and
    gaussian pixel noise (sigma 6/255), as float [N, 8, 8, 1] in 0..1."""
    clean = pixels_to_float(pixels)
    xs, ys = [clean], [labels]
    n = len(pixels)
    for _ in range(copies - 1):
        shifted = rng.random(n) < 0.6
        dy = np.where(shifted, rng.integers(-1, 2, n), 0)
        dx = np.where(shifted, rng.integers(-1, 2, n), 0)
        x = shift_images(clean, dy, dx)
        gain = rng.uniform(0.8, 1.1, (n, 1, 1)).astype(np.float32)
        offset = rng.uniform(0.0, 0.06, (n, 1, 1)).astype(np.float32)
        noise = rng.normal(0.0, 6.0 / 255.0, x.shape).astype(np.float32)
        xs.append(np.clip(x * gain + offset + noise, 0.0, 1.0))
        ys.append(labels)
    return np.concatenate(xs)[..., None], np.concatenate(ys)


def codec_roundtrip_digits(
    pixels: np.ndarray, size: int = 96, quality: int | None = None
) -> tuple[np.ndarray, str]:
    """Render 8x8 digits upscaled (nearest) to size x size BGR frames, write them to an MJPG .avi,
    read it back, convert to grey and resize to 8x8 with INTER_AREA.

    ``quality=None``: OpenCV's default MJPG writer (FFmpeg backend) at its default quality.
    Otherwise OpenCV's built-in MJPEG encoder (CAP_OPENCV_MJPEG) at that JPEG quality (the FFmpeg
    backend ignores VIDEOWRITER_PROP_QUALITY)."""
    import cv2

    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits.avi")
        if quality is None:
            writer = cv2.VideoWriter(path, fourcc, 10.0, (size, size))
        else:
            writer = cv2.VideoWriter(path, cv2.CAP_OPENCV_MJPEG, fourcc, 10.0, (size, size))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write MJPG .avi")
        if quality is not None and not writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality):
            raise RuntimeError("OpenCV's MJPEG writer refused the quality setting")
        backend = writer.getBackendName()
        for img in pixels:
            big = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
            writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
        writer.release()
        cap = cv2.VideoCapture(path)
        out = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            out.append(cv2.resize(grey, (8, 8), interpolation=cv2.INTER_AREA))
        cap.release()
    if len(out) != len(pixels):
        raise RuntimeError(f"codec round trip returned {len(out)} frames for {len(pixels)}")
    return np.stack(out), f"opencv {cv2.__version__}, {backend} writer"


# --------------------------------------------------------------------------- keras / tfmot / tflite

PRUNABLE = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)


def pruning_schedule(end_step: int, begin_step: int = 0, final_sparsity: float = FINAL_SPARSITY) -> Any:
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=final_sparsity,
        begin_step=begin_step,
        end_step=end_step,
        frequency=max(1, (end_step - begin_step) // 40),
    )


def with_pruning(model: Any, schedule: Any) -> Any:
    """Wrap every Conv/Dense layer (kernels only) in prune_low_magnitude, keeping trained weights."""

    def clone_fn(layer: Any) -> Any:
        if isinstance(layer, PRUNABLE):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=clone_fn)


def schedule_dict(
    end_step: int, steps_per_epoch: int, begin_step: int = 0, final_sparsity: float = FINAL_SPARSITY
) -> dict[str, Any]:
    return {
        "method": "tfmot prune_low_magnitude on every Conv/Dense kernel, then strip_pruning",
        "schedule": "PolynomialDecay (power 3)",
        "initial_sparsity": 0.0,
        "final_sparsity": final_sparsity,
        "begin_step": begin_step,
        "end_step": end_step,
        "frequency": max(1, (end_step - begin_step) // 40),
        "steps_per_epoch": steps_per_epoch,
    }


def convert_int8(model: Any, representative: Callable[[], Iterator[Any]]) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def interpreter(data: bytes) -> Any:
    interp = tf.lite.Interpreter(model_content=data, num_threads=2)
    interp.allocate_tensors()
    return interp


def tensor_spec(detail: dict[str, Any], name: str, position: int) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "name": name,
        "tflite_name": detail["name"],
        "index": int(detail["index"]),
        "position": position,
        "shape": [int(s) for s in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def io_specs(data: bytes) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Input and output specs keyed by signature (Keras) name."""
    interp = interpreter(data)
    runner = interp.get_signature_runner()
    in_pos = {d["index"]: i for i, d in enumerate(interp.get_input_details())}
    out_pos = {d["index"]: i for i, d in enumerate(interp.get_output_details())}
    ins = {k: tensor_spec(d, k, in_pos[d["index"]]) for k, d in runner.get_input_details().items()}
    outs = {k: tensor_spec(d, k, out_pos[d["index"]]) for k, d in runner.get_output_details().items()}
    for spec, details in ((ins, interp.get_input_details()), (outs, interp.get_output_details())):
        for d in details:  # the signature details carry no names; take them from the tensor list
            for s in spec.values():
                if s["index"] == d["index"]:
                    s["tflite_name"] = d["name"]
    return ins, outs


def run_int8(data: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the int8 model one sample at a time; feeds are float arrays [N, ...] per input name.
    Returns dequantized outputs [N, ...] per output name."""
    interp = interpreter(data)
    ins, outs = io_specs(data)
    n = len(next(iter(feeds.values())))
    results: dict[str, list[np.ndarray]] = {k: [] for k in outs}
    for i in range(n):
        for name, spec in ins.items():
            q = quantize(feeds[name][i : i + 1], spec["scale"], spec["zero_point"])
            interp.set_tensor(spec["index"], q.reshape(spec["shape"]))
        interp.invoke()
        for name, spec in outs.items():
            results[name].append(
                dequantize(interp.get_tensor(spec["index"])[0], spec["scale"], spec["zero_point"])
            )
    return {k: np.stack(v) for k, v in results.items()}


WEIGHT_OPS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED", 67: "TRANSPOSE_CONV"}


def weight_sparsity(data: bytes) -> dict[str, Any]:
    """Share of zeros in the int8 weight tensors of conv and fully-connected operators."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    per_tensor = []
    zeros_total = count_total = 0
    seen: set[tuple[int, int]] = set()
    for sg_i, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            oc = model.operatorCodes[op.opcodeIndex]
            code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
            if code not in WEIGHT_OPS or (sg_i, op.inputs[1]) in seen:
                continue
            seen.add((sg_i, op.inputs[1]))
            tensor = sg.tensors[op.inputs[1]]
            buf = model.buffers[tensor.buffer].data
            if buf is None:
                raise RuntimeError(f"weight tensor {tensor.name!r} has no inline buffer")
            values = np.asarray(buf, dtype=np.uint8).view(np.int8)
            zeros = int(np.count_nonzero(values == 0))
            zeros_total += zeros
            count_total += values.size
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            per_tensor.append(
                {
                    "tensor": name,
                    "op": WEIGHT_OPS[code],
                    "shape": [int(s) for s in tensor.shape],
                    "dtype": flatbuffer_utils.type_to_name(tensor.type).lower(),
                    "zeros": zeros,
                    "elements": int(values.size),
                    "sparsity": round(zeros / values.size, 4),
                }
            )
    return {
        "definition": "zeros / elements of the int8 weight buffers of CONV_2D, DEPTHWISE_CONV_2D and "
        "FULLY_CONNECTED operators in the .tflite file (biases excluded)",
        "total": round(zeros_total / max(count_total, 1), 4),
        "zeros": zeros_total,
        "elements": count_total,
        "per_tensor": per_tensor,
    }


def op_list(data: bytes) -> list[str]:
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    names = set()
    for oc in model.operatorCodes:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        names.add(flatbuffer_utils.opcode_to_name(model, model.operatorCodes.index(oc)) or str(code))
    return sorted(names)


def keras_summary(model: Any) -> list[str]:
    rows = []
    for layer in model.layers:
        shape = getattr(layer, "output_shape", None)
        rows.append(f"{layer.name}: {layer.__class__.__name__} -> {shape} ({layer.count_params()} params)")
    return rows


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return round(float(np.mean(np.argmax(pred, axis=-1) == labels)), 4)


# --------------------------------------------------------------------------- digits


def image_cnn(inp: Any, prefix: str = "") -> Any:
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"{prefix}conv16")(inp)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"{prefix}conv32")(x)
    x = keras.layers.MaxPooling2D(2, name=f"{prefix}pool")(x)
    x = keras.layers.Flatten(name=f"{prefix}flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name=f"{prefix}dense64")(x)
    x = keras.layers.Dense(10, name=f"{prefix}dense10")(x)
    return keras.layers.Softmax(name="digit")(x)


def convert_float(model: Any) -> bytes:
    """The plain float32 TFLite model (no optimizations), with its serving_default signature."""
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def write_float(out: Path, name: str, model: Any, float_accuracy: Any, heldout: str) -> None:
    """With --float: write ``tests/data/float/NAME_float.tflite`` and its entry in the float manifest."""
    if not OPTIONS["float"]:
        return
    data = convert_float(model)
    path = out / FLOAT_DIR / f"{name}_float.tflite"
    write_bytes(path, data)
    entry = {
        **file_entry(path, data),
        "description": f"The pruned float32 model that {name}_int8.tflite is converted from (same weights, "
        "before quantization): the input of `edge-runtime optimize` in its tests.",
        "int8": f"edge_runtime/models/{name}_int8.tflite",
        "conversion": "tf.lite.TFLiteConverter.from_keras_model(model).convert(), no optimizations",
        "accuracy": {"metric": "as for the int8 model, held-out split (Keras)", "float": float_accuracy},
        "heldout": heldout,
        "build_command": BUILD_COMMAND + f" --only {name} --float",
        "built_at": utc_now(),
        "versions": versions(),
        "operators": op_list(data),
    }
    header = {
        "schema": 1,
        "generated_by": "tools/build_models.py --float",
        "note": "Float sources of the bundled int8 models (test data, not package data). Paths are "
        "relative to this file.",
    }
    update_manifest(out / FLOAT_DIR / "manifest.json", "models", name, entry, header)
    log(f"{name}: float model {len(data)} bytes, sha256 {entry['sha256'][:16]}")


def build_digits(out: Path) -> dict[str, Any]:
    t0 = time.time()
    set_seeds(SEED)
    rng = np.random.default_rng(SEED)
    xtr, ytr, xte, yte = load_digits_split()
    x_aug, y_aug = augment_digits(xtr, ytr, copies=8, rng=rng)
    inp = keras.Input((8, 8, 1), name="image")
    model = keras.Model(inp, image_cnn(inp), name="digits_cnn")
    batch, float_epochs, prune_epochs = 64, 30, 16
    steps = int(np.ceil(len(x_aug) / batch))
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_aug, y_aug, batch_size=batch, epochs=float_epochs, shuffle=True, verbose=0)
    x_test = pixels_to_float(xte)[..., None]
    dense_acc = accuracy(model.predict(x_test, verbose=0), yte)
    log(f"digits: dense float accuracy {dense_acc}")

    end_step = steps * (prune_epochs * 5 // 8)
    pruned = with_pruning(model, pruning_schedule(end_step))
    pruned.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(
        x_aug,
        y_aug,
        batch_size=batch,
        epochs=prune_epochs,
        shuffle=True,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    float_acc = accuracy(final.predict(x_test, verbose=0), yte)
    write_float(out, "digits", final, float_acc, "edge_runtime/models/digits_heldout.npz")

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(0, len(xtr), 4):
            yield [pixels_to_float(xtr[i : i + 1])[..., None]]

    data = convert_int8(final, representative)
    int8_out = run_int8(data, {"image": x_test})["digit"]
    int8_acc = accuracy(int8_out, yte)
    log(f"digits: pruned float {float_acc}, int8 {int8_acc}")

    codec_pixels, codec_lib = codec_roundtrip_digits(xte)
    codec_int8 = accuracy(run_int8(data, {"image": pixels_to_float(codec_pixels)[..., None]})["digit"], yte)
    codec_float = accuracy(final.predict(pixels_to_float(codec_pixels)[..., None], verbose=0), yte)
    codec_mad = float(np.mean(np.abs(codec_pixels.astype(np.int16) - xte.astype(np.int16))))
    log(f"digits: MJPG round trip int8 {codec_int8}, float {codec_float}, mean |dpixel| {codec_mad:.2f}")
    harsh_pixels, harsh_lib = codec_roundtrip_digits(xte, size=32, quality=10)
    harsh_int8 = accuracy(run_int8(data, {"image": pixels_to_float(harsh_pixels)[..., None]})["digit"], yte)
    harsh_mad = float(np.mean(np.abs(harsh_pixels.astype(np.int16) - xte.astype(np.int16))))
    log(f"digits: MJPG 32x32 quality 10 round trip int8 {harsh_int8}, mean |dpixel| {harsh_mad:.2f}")

    pkg = out / PKG_DIR
    model_path = pkg / "digits_int8.tflite"
    write_bytes(model_path, data)
    labels = ("\n".join(DIGIT_LABELS) + "\n").encode()
    write_bytes(pkg / "digits_labels.txt", labels)
    heldout = npz_bytes(images=xte, labels=yte)
    write_bytes(pkg / "digits_heldout.npz", heldout)

    ins, outs = io_specs(data)
    return {
        **file_entry(model_path, data),
        "description": "Handwritten digit classifier (8x8 grey) for the digits demo pipeline.",
        "task": "classification",
        "built_at": utc_now(),
        "build_command": BUILD_COMMAND + " --only digits",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
        "seed": SEED,
        "dataset": {
            "source": "sklearn.datasets.load_digits (1797 8x8 images, values 0..16)",
            "pixels": "uint8 = round(v * 255 / 16)",
            "split": "train_test_split(test_size=0.25, random_state=0, stratify=y)",
            "train": len(xtr),
            "heldout": len(xte),
            "augmentation": "8x: clean copy + 7 copies with +/-1 px shifts (p=0.6), gain 0.8..1.1, "
            "offset 0..0.06, gaussian noise sigma 6/255, clipped to 0..1",
        },
        "architecture": keras_summary(final),
        "parameters": int(final.count_params()),
        "training": {
            "optimizer": "Adam",
            "batch_size": batch,
            "float_epochs": float_epochs,
            "pruning_epochs": prune_epochs,
        },
        "epochs": float_epochs + prune_epochs,
        "pruning": schedule_dict(end_step, steps),
        "sparsity": weight_sparsity(data),
        "quantization": "full integer int8 (TFLITE_BUILTINS_INT8), int8 input and output, representative "
        "dataset: every 4th training image (clean)",
        "operators": op_list(data),
        "accuracy": {
            "metric": "top-1 accuracy on the held-out split",
            "float_dense": dense_acc,
            "float": float_acc,
            "int8": int8_acc,
            "int8_mjpg_roundtrip": codec_int8,
            "float_mjpg_roundtrip": codec_float,
            "mjpg_roundtrip": "held-out digits upscaled 8x8 -> 96x96 (nearest), written as BGR frames to an "
            f"MJPG .avi at OpenCV's default quality ({codec_lib}), decoded, BGR->grey, resized to 8x8 with "
            f"INTER_AREA; mean absolute pixel change {codec_mad:.2f}",
            "int8_mjpg_harsh_roundtrip": harsh_int8,
            "mjpg_harsh": "the same rendered at 32x32 and encoded at JPEG quality 10 "
            f"({harsh_lib}); mean absolute pixel change {harsh_mad:.2f}",
        },
        "inputs": [{**ins["image"], "preprocessing": {**IMAGE_PREPROCESSING, "size": [8, 8]}}],
        "outputs": [
            {
                **outs["digit"],
                "kind": "classification",
                "activation": "softmax",
                "labels": "digits_labels.txt",
            }
        ],
        "labels": "digits_labels.txt",
        "heldout": {
            "file": "digits_heldout.npz",
            "sha256": sha256_bytes(heldout),
            "arrays": {"images": f"uint8 {list(xte.shape)}", "labels": f"int64 {list(yte.shape)}"},
        },
    }


# --------------------------------------------------------------------------- fused


def vibration_windows(states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack(
        [
            synthetic.vibration_samples(
                synthetic.STATES[s], synthetic.WINDOW_SAMPLES, rng, t0=float(rng.uniform(0.0, 600.0))
            )
            for s in states
        ]
    )


def heldout_stream_windows(per_state: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Windows cut from continuous streams (segments of 4..12 s), each fully inside one state."""
    w = synthetic.WINDOW_SAMPLES
    rate = synthetic.SAMPLE_RATE_HZ
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(synthetic.STATES))}
    while min(len(v) for v in got.values()) < per_state:
        schedule, t = [], 0.0
        while t < 60.0:
            schedule.append((t, synthetic.STATES[int(rng.integers(0, len(synthetic.STATES)))]))
            t += float(rng.uniform(4.0, 12.0))
        _, samples = synthetic.vibration_stream(schedule, 60.0, rng, rate)
        starts = [s for s, _ in schedule] + [60.0]
        for k in range(len(schedule)):
            lo = int(np.ceil(starts[k] * rate))
            hi = int(np.floor(starts[k + 1] * rate)) - w
            if hi <= lo:
                continue
            state = synthetic.state_index(schedule[k][1])
            for _ in range(2):
                i = int(rng.integers(lo, hi + 1))
                if len(got[state]) < per_state:
                    got[state].append(samples[i : i + w])
    windows = np.concatenate([np.stack(v) for v in got.values()])
    labels = np.concatenate([np.full(per_state, i, dtype=np.int64) for i in got])
    return windows, labels


def build_fused(out: Path) -> dict[str, Any]:
    t0 = time.time()
    set_seeds(SEED + 1)
    rng = np.random.default_rng(SEED + 1)
    xtr, ytr, xte, yte = load_digits_split()
    x_img, y_dig = augment_digits(xtr, ytr, copies=8, rng=rng)
    y_state = rng.integers(0, len(synthetic.STATES), len(x_img)).astype(np.int64)
    x_vib = vibration_windows(y_state, rng)

    per_state = len(xte) // 3
    vib_te, state_te = heldout_stream_windows(per_state, rng)
    order = rng.permutation(len(state_te))
    vib_te, state_te = vib_te[order], state_te[order]
    img_te, dig_te = xte[: len(state_te)], yte[: len(state_te)]

    image = keras.Input((8, 8, 1), name="image")
    vib = keras.Input((synthetic.WINDOW_SAMPLES, 3), name="vibration")
    digit = image_cnn(image, prefix="img_")
    mean = keras.layers.GlobalAveragePooling1D(keepdims=True, name="vib_mean")(vib)
    v = keras.layers.Subtract(name="vib_remove_gravity")([vib, mean])
    v = keras.layers.Conv1D(16, 5, strides=2, padding="same", activation="relu", name="vib_conv16")(v)
    v = keras.layers.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="vib_conv32")(v)
    v = keras.layers.Conv1D(32, 3, padding="same", activation="relu", name="vib_conv32b")(v)
    v = keras.layers.GlobalMaxPooling1D(name="vib_maxpool")(v)
    v = keras.layers.Dense(32, activation="relu", name="vib_dense32")(v)
    v = keras.layers.Dense(len(synthetic.STATES), name="vib_dense3")(v)
    state = keras.layers.Softmax(name="state")(v)
    model = keras.Model([image, vib], [digit, state], name="fused")

    batch, float_epochs, prune_epochs = 64, 30, 16
    steps = int(np.ceil(len(x_img) / batch))
    losses = {"digit": "sparse_categorical_crossentropy", "state": "sparse_categorical_crossentropy"}
    model.compile(keras.optimizers.Adam(2e-3), losses, metrics=["accuracy"])
    xs = {"image": x_img, "vibration": x_vib}
    ys = {"digit": y_dig, "state": y_state}
    model.fit(xs, ys, batch_size=batch, epochs=float_epochs, shuffle=True, verbose=0)
    end_step = steps * (prune_epochs * 5 // 8)
    pruned = with_pruning(model, pruning_schedule(end_step))
    pruned.compile(keras.optimizers.Adam(5e-4), losses, metrics=["accuracy"])
    pruned.fit(
        xs,
        ys,
        batch_size=batch,
        epochs=prune_epochs,
        shuffle=True,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    final = tfmot.sparsity.keras.strip_pruning(pruned)

    feeds = {"image": pixels_to_float(img_te)[..., None], "vibration": vib_te}
    fp = final.predict(feeds, verbose=0)
    fp = dict(zip(final.output_names, fp, strict=True))
    float_acc = {"digit": accuracy(fp["digit"], dig_te), "state": accuracy(fp["state"], state_te)}
    write_float(out, "fused", final, float_acc, "edge_runtime/models/fused_heldout.npz")

    def representative() -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(xtr), 4):
            yield {"image": pixels_to_float(xtr[i : i + 1])[..., None], "vibration": x_vib[i : i + 1]}

    data = convert_int8(final, representative)
    q = run_int8(data, feeds)
    int8_acc = {"digit": accuracy(q["digit"], dig_te), "state": accuracy(q["state"], state_te)}
    log(f"fused: float {float_acc}, int8 {int8_acc}")

    pkg = out / PKG_DIR
    model_path = pkg / "fused_int8.tflite"
    write_bytes(model_path, data)
    write_bytes(pkg / "fused_state_labels.txt", ("\n".join(synthetic.STATES) + "\n").encode())
    heldout = npz_bytes(images=img_te, vibration=vib_te, digit_labels=dig_te, state_labels=state_te)
    write_bytes(pkg / "fused_heldout.npz", heldout)

    ins, outs = io_specs(data)
    vib_pre = {
        "kind": "window",
        "rate_hz": synthetic.SAMPLE_RATE_HZ,
        "samples": synthetic.WINDOW_SAMPLES,
        "duration_s": synthetic.WINDOW_SAMPLES / synthetic.SAMPLE_RATE_HZ,
        "channels": list(synthetic.CHANNELS),
        "units": "g",
        "layout": "[samples, channels], oldest sample first",
        "normalize": None,
        "note": "raw acceleration in g including gravity; the model removes the window mean itself",
    }
    return {
        **file_entry(model_path, data),
        "description": "Two-input, two-head model: digit class from an 8x8 grey image and machine state "
        "from a 0.64 s window of 3-axis vibration. The heads are independent (separate branches).",
        "task": "classification",
        "built_at": utc_now(),
        "build_command": BUILD_COMMAND + " --only fused",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
        "seed": SEED + 1,
        "dataset": {
            "image": "sklearn digits as for 'digits' (same split, same augmentation)",
            "vibration": "synthetic windows from edge_runtime/synthetic.py: training windows drawn per state "
            "with vibration_samples(state, 64, rng, t0=U(0, 600)); held-out windows cut from continuous "
            "vibration_stream() recordings (segments of 4..12 s), each window fully inside one state",
            "pairing": "each vibration window paired with a random digit image; labels independent",
            "train": len(x_img),
            "heldout": len(state_te),
            "heldout_per_state": per_state,
        },
        "architecture": keras_summary(final),
        "parameters": int(final.count_params()),
        "training": {
            "optimizer": "Adam",
            "batch_size": batch,
            "float_epochs": float_epochs,
            "pruning_epochs": prune_epochs,
        },
        "epochs": float_epochs + prune_epochs,
        "pruning": schedule_dict(end_step, steps),
        "sparsity": weight_sparsity(data),
        "quantization": "full integer int8, int8 inputs and outputs, representative dataset: every 4th "
        "training sample (clean image + vibration window)",
        "operators": op_list(data),
        "accuracy": {
            "metric": "top-1 accuracy per head on the held-out set",
            "float": float_acc,
            "int8": int8_acc,
        },
        "inputs": [
            {**ins["image"], "preprocessing": {**IMAGE_PREPROCESSING, "size": [8, 8]}},
            {**ins["vibration"], "preprocessing": vib_pre},
        ],
        "outputs": sorted(
            [
                {
                    **outs["digit"],
                    "head": "digit",
                    "kind": "classification",
                    "activation": "softmax",
                    "labels": "digits_labels.txt",
                },
                {
                    **outs["state"],
                    "head": "state",
                    "kind": "classification",
                    "activation": "softmax",
                    "labels": "fused_state_labels.txt",
                },
            ],
            key=lambda o: o["position"],
        ),
        "heads": {
            "digit": {
                "output_position": outs["digit"]["position"],
                "tflite_index": outs["digit"]["index"],
                "shape": outs["digit"]["shape"],
                "labels": "digits_labels.txt",
            },
            "state": {
                "output_position": outs["state"]["position"],
                "tflite_index": outs["state"]["index"],
                "shape": outs["state"]["shape"],
                "labels": "fused_state_labels.txt",
            },
        },
        "labels": {"digit": "digits_labels.txt", "state": "fused_state_labels.txt"},
        "heldout": {
            "file": "fused_heldout.npz",
            "sha256": sha256_bytes(heldout),
            "arrays": {
                "images": f"uint8 {list(img_te.shape)}",
                "vibration": f"float32 {list(vib_te.shape)} (g)",
                "digit_labels": f"int64 {list(dig_te.shape)}",
                "state_labels": f"int64 {list(state_te.shape)} (index into fused_state_labels.txt)",
            },
        },
    }


# --------------------------------------------------------------------------- detect

CANVAS = 64
GRID = 8
NUM_CLASSES = 10
MAX_OBJECTS = 3


def make_canvases(
    pixels: np.ndarray,
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    train: bool,
    max_objects: int = MAX_OBJECTS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n canvases 64x64 uint8 with 1..max_objects digits each at non-overlapping places.

    Background: uniform level 0..40 plus gaussian noise sigma 2..8. Each digit: 8x8 upscaled to a
    random square size 12..20 px (bilinear; training mixes in nearest), gain 0.7..1.0, pasted
    with max(). Returns images [n,64,64] uint8, boxes [n,max_objects,4] float32 x1,y1,x2,y2 in
    pixels (padding 0) and classes [n,max_objects] int64 (padding -1).
    """
    import cv2

    images = np.empty((n, CANVAS, CANVAS), dtype=np.uint8)
    boxes = np.zeros((n, max_objects, 4), dtype=np.float32)
    classes = np.full((n, max_objects), -1, dtype=np.int64)
    for i in range(n):
        bg = rng.uniform(0, 40)
        canvas = bg + rng.normal(0, rng.uniform(2, 8), (CANVAS, CANVAS))
        k = int(rng.integers(1, max_objects + 1))
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(k):
            for _attempt in range(100):
                s = int(rng.integers(12, 21))
                x, y = int(rng.integers(0, CANVAS - s + 1)), int(rng.integers(0, CANVAS - s + 1))
                if all(x + s <= a or a + c <= x or y + s <= b or b + c <= y for a, b, c, _ in placed):
                    break
            else:
                continue
            j = int(rng.integers(0, len(pixels)))
            interp = cv2.INTER_NEAREST if (train and rng.random() < 0.3) else cv2.INTER_LINEAR
            patch = cv2.resize(pixels[j], (s, s), interpolation=interp).astype(np.float64)
            patch *= rng.uniform(0.7, 1.0)
            region = canvas[y : y + s, x : x + s]
            canvas[y : y + s, x : x + s] = np.maximum(region, patch)
            placed.append((x, y, s, int(labels[j])))
        for m, (x, y, s, c) in enumerate(placed):
            boxes[i, m] = (x, y, x + s, y + s)
            classes[i, m] = c
        images[i] = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return images, boxes, classes


def detect_targets(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """[n, 64, 15] targets: per cell cx, cy, w, h (normalised), objectness, one-hot class."""
    n = len(boxes)
    y = np.zeros((n, GRID * GRID, 5 + NUM_CLASSES), dtype=np.float32)
    stride = CANVAS / GRID
    for i in range(n):
        for m in range(classes.shape[1]):
            c = classes[i, m]
            if c < 0:
                continue
            x1, y1, x2, y2 = boxes[i, m]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cell = int(cy // stride) * GRID + int(cx // stride)
            y[i, cell, :4] = (cx / CANVAS, cy / CANVAS, (x2 - x1) / CANVAS, (y2 - y1) / CANVAS)
            y[i, cell, 4] = 1.0
            y[i, cell, 5 + c] = 1.0
    return y


class YoloDecode(keras.layers.Layer):
    """Raw [B, G, G, 5+C] -> [B, G*G, 5+C]: cx = (col + sigmoid) / G, cy = (row + sigmoid) / G,
    w, h, objectness = sigmoid, classes = softmax. Cells are row-major."""

    def __init__(self, grid: int, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid = grid
        self.num_classes = num_classes
        cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))
        self._offsets = np.stack([cols, rows], axis=-1).astype(np.float32)[None]

    def call(self, raw: Any) -> Any:
        xy = (tf.sigmoid(raw[..., 0:2]) + self._offsets) * (1.0 / self.grid)
        wh_obj = tf.sigmoid(raw[..., 2:5])
        cls = tf.nn.softmax(raw[..., 5:], axis=-1)
        out = tf.concat([xy, wh_obj, cls], axis=-1)
        return tf.reshape(out, [-1, self.grid * self.grid, 5 + self.num_classes])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "grid": self.grid, "num_classes": self.num_classes}


def yolo_loss(y_true: Any, y_pred: Any) -> Any:
    eps = 1e-6
    pos = y_true[..., 4]
    npos = tf.maximum(tf.reduce_sum(pos), 1.0)
    p_obj = tf.clip_by_value(y_pred[..., 4], eps, 1 - eps)
    obj = -(pos * tf.math.log(p_obj) * 2.0 + (1 - pos) * tf.math.log(1 - p_obj))
    box = tf.reduce_sum(tf.square((y_true[..., :4] - y_pred[..., :4]) * GRID), axis=-1)
    cls = -tf.reduce_sum(y_true[..., 5:] * tf.math.log(tf.clip_by_value(y_pred[..., 5:], eps, 1.0)), axis=-1)
    return (tf.reduce_sum(obj) + tf.reduce_sum(pos * (2.0 * box + cls))) / npos


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N,4] against b [M,4] -> [N,M]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def decode_nms(
    pred: np.ndarray, score_thr: float = 0.4, iou_thr: float = 0.45
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's [64, 15] output -> boxes [K,4] pixels x1y1x2y2, classes [K], scores [K]
    after class-agnostic greedy NMS."""
    cls = np.argmax(pred[:, 5:], axis=-1)
    score = pred[:, 4] * pred[np.arange(len(pred)), 5 + cls]
    keep = np.nonzero(score >= score_thr)[0]
    keep = keep[np.argsort(-score[keep], kind="stable")]
    cx, cy, w, h = (pred[keep, k] * CANVAS for k in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    chosen: list[int] = []
    for i in range(len(keep)):
        if all(iou_xyxy(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= iou_thr for j in chosen):
            chosen.append(i)
    return boxes[chosen], cls[keep][chosen], score[keep][chosen]


def detection_metrics(preds: np.ndarray, gt_boxes: np.ndarray, gt_classes: np.ndarray) -> dict[str, Any]:
    tp = fp = n_gt = tp_any = 0
    for pred, gb_all, gc_all in zip(preds, gt_boxes, gt_classes, strict=True):
        valid = gc_all >= 0
        gb, gc = gb_all[valid], gc_all[valid]
        n_gt += len(gc)
        boxes, classes, _ = decode_nms(pred)
        matched = np.zeros(len(gc), dtype=bool)
        matched_any = np.zeros(len(gc), dtype=bool)
        ious = iou_xyxy(boxes, gb) if len(boxes) and len(gb) else np.zeros((len(boxes), len(gb)))
        for k in range(len(boxes)):
            cand = [m for m in range(len(gc)) if not matched[m] and gc[m] == classes[k] and ious[k, m] >= 0.5]
            if cand:
                matched[max(cand, key=lambda m: ious[k, m])] = True
                tp += 1
            else:
                fp += 1
            anyc = [m for m in range(len(gc)) if not matched_any[m] and ious[k, m] >= 0.5]
            if anyc:
                matched_any[max(anyc, key=lambda m: ious[k, m])] = True
                tp_any += 1
    return {
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(n_gt, 1), 4),
        "true_positives": tp,
        "false_positives": fp,
        "ground_truth": n_gt,
        "recall_any_class": round(tp_any / max(n_gt, 1), 4),
    }


def conv_bn_relu(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_detect(out: Path) -> dict[str, Any]:
    t0 = time.time()
    set_seeds(SEED + 2)
    rng = np.random.default_rng(SEED + 2)
    xtr, ytr, xte, yte = load_digits_split()
    n_train, train_max_objects = 8000, 4
    tr_img, tr_boxes, tr_cls = make_canvases(
        xtr, ytr, n_train, rng, train=True, max_objects=train_max_objects
    )
    te_img, te_boxes, te_cls = make_canvases(xte, yte, 200, rng, train=False)
    x_train = pixels_to_float(tr_img)[..., None]
    y_train = detect_targets(tr_boxes, tr_cls)
    x_test = pixels_to_float(te_img)[..., None]

    inp = keras.Input((CANVAS, CANVAS, 1), name="image")
    x = inp
    for i, (filters, stride) in enumerate(((16, 2), (32, 2), (32, 1), (64, 2), (96, 1))):
        x = conv_bn_relu(x, filters, 3, stride, name=f"conv{i + 1}_{filters}_s{stride}")
    x = conv_bn_relu(x, 128, 1, 1, name="conv6_128_1x1")
    raw = keras.layers.Conv2D(5 + NUM_CLASSES, 1, name="head")(x)
    det = YoloDecode(GRID, NUM_CLASSES, name="detections")(raw)
    model = keras.Model(inp, det, name="digit_detector")

    # One training run with the sparsity ramp inside it (fine-tuning a dense detector after the
    # fact lost ~10 points of recall at 60 % sparsity within the time budget).
    batch, epochs, prune_begin_epoch, prune_end_epoch, lr = 64, 16, 2, 10, 2e-3
    steps = int(np.ceil(n_train / batch))
    begin_step, end_step = steps * prune_begin_epoch, steps * prune_end_epoch
    pruned = with_pruning(model, pruning_schedule(end_step, begin_step))
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps * epochs, alpha=0.05)
    pruned.compile(keras.optimizers.Adam(schedule), yolo_loss)
    pruned.fit(
        x_train,
        y_train,
        batch_size=batch,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    float_metrics = detection_metrics(final.predict(x_test, verbose=0), te_boxes, te_cls)
    write_float(out, "detect", final, float_metrics, "edge_runtime/models/detect_heldout.npz")

    # The first calibration canvas gets one pixel at 0 and one at 255, so the input range is
    # exactly 0..1: scale 1/255, zero point -128, i.e. q = pixel - 128 as for the digits models.
    anchor = x_train[:1].copy()
    anchor[0, 0, 0, 0], anchor[0, 0, 1, 0] = 0.0, 1.0

    def representative() -> Iterator[list[np.ndarray]]:
        yield [anchor]
        for i in range(1, 100):
            yield [x_train[i : i + 1]]

    data = convert_int8(final, representative)
    int8_metrics = detection_metrics(run_int8(data, {"image": x_test})["detections"], te_boxes, te_cls)
    log(f"detect: pruned float {float_metrics}, int8 {int8_metrics}")

    pkg = out / PKG_DIR
    model_path = pkg / "detect_int8.tflite"
    write_bytes(model_path, data)
    heldout = npz_bytes(images=te_img, boxes=te_boxes, classes=te_cls)
    write_bytes(pkg / "detect_heldout.npz", heldout)
    ins, outs = io_specs(data)
    n_cells = GRID * GRID
    return {
        **file_entry(model_path, data),
        "description": "Small YOLO-style single-scale detector of digits on 64x64 grey canvases; raw head, "
        "decoding thresholds and NMS are done by the runtime.",
        "task": "detection",
        "built_at": utc_now(),
        "build_command": BUILD_COMMAND + " --only detect",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
        "seed": SEED + 2,
        "dataset": {
            "source": "synthetic canvases built from sklearn digits (training canvases from the digits TRAIN "
            "split, held-out canvases from the held-out split of the 'digits' model)",
            "canvas": "64x64 uint8 grey, background level U(0,40) + gaussian noise sigma U(2,8); 1..3 digits "
            "(training canvases 1..4) "
            "at non-overlapping places, each 8x8 upscaled to a square of 12..20 px (bilinear; training also "
            "30% nearest), gain U(0.7,1.0), pasted with max(); box = the pasted square",
            "train": n_train,
            "heldout": len(te_img),
            "heldout_objects": int(np.sum(te_cls >= 0)),
        },
        "architecture": keras_summary(final),
        "parameters": int(final.count_params()),
        "training": {
            "optimizer": f"Adam, cosine decay from {lr}",
            "batch_size": batch,
            "epochs": epochs,
            "train_objects_per_canvas": f"1..{train_max_objects}",
            "pruning": f"sparsity ramp from epoch {prune_begin_epoch} to {prune_end_epoch} in the same run",
            "loss": "objectness BCE (positives x2) + 2 x squared box error in grid units + class CE on "
            "positive cells, / number of objects; an object is assigned to the cell of its centre",
        },
        "epochs": epochs,
        "pruning": schedule_dict(end_step, steps, begin_step),
        "sparsity": weight_sparsity(data),
        "quantization": "full integer int8, int8 input and output, representative dataset: 100 training "
        "canvases "
        "(the first with one pixel set to 0 and one to 255 so the input scale is exactly 1/255)",
        "operators": op_list(data),
        "accuracy": {
            "metric": "precision / recall at IoU >= 0.5 with the correct class, after decoding with "
            "score = objectness * max class probability >= 0.4 and class-agnostic greedy NMS at IoU 0.45",
            "float": float_metrics,
            "int8": int8_metrics,
        },
        "inputs": [{**ins["image"], "preprocessing": {**IMAGE_PREPROCESSING, "size": [CANVAS, CANVAS]}}],
        "outputs": [
            {
                **outs["detections"],
                "kind": "detection",
                "format": "yolo",
                "boxes": "cxcywh_normalized",
                "layout": f"[1, {n_cells}, {5 + NUM_CLASSES}]: per grid cell "
                f"(row-major, cell = row * {GRID} + col)"
                f" [cx, cy, w, h, objectness, p_class_0 .. p_class_{NUM_CLASSES - 1}]",
                "coordinates": "cx, cy, w, h as fractions (0..1) of the input width/height; multiply by the "
                "input size for pixels",
                "activations_applied": True,
                "activation": {
                    "boxes": "sigmoid (+ cell offset / grid for cx, cy)",
                    "objectness": "sigmoid",
                    "classes": "softmax",
                },
                "score": "objectness * class probability",
                "num_boxes": n_cells,
                "num_classes": NUM_CLASSES,
                "grid": [GRID, GRID],
                "stride": CANVAS // GRID,
                "anchors": None,
                "score_threshold": 0.4,
                "iou_threshold": 0.45,
                "labels": "digits_labels.txt",
            }
        ],
        "labels": "digits_labels.txt",
        "heldout": {
            "file": "detect_heldout.npz",
            "sha256": sha256_bytes(heldout),
            "arrays": {
                "images": f"uint8 {list(te_img.shape)}",
                "boxes": f"float32 {list(te_boxes.shape)} pixel x1,y1,x2,y2 (exclusive), padding rows 0",
                "classes": f"int64 {list(te_cls.shape)}, -1 = padding",
            },
        },
    }


# --------------------------------------------------------------------------- mobilenet v2


def build_mobilenet(out: Path) -> dict[str, Any]:
    t0 = time.time()
    set_seeds(SEED + 3)
    rng = np.random.default_rng(SEED + 3)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    # Magnitude pruning without training: the same per-layer rule as tfmot's ConstantSparsity
    # (zero the 50% smallest |w| of every conv/depthwise/dense kernel), applied directly.
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            weights = layer.get_weights()
            k = weights[0]
            thr = np.quantile(np.abs(k), 0.5)
            weights[0] = np.where(np.abs(k) <= thr, 0.0, k).astype(k.dtype)
            layer.set_weights(weights)
    calib = [rng.uniform(-1.0, 1.0, (1, 224, 224, 3)).astype(np.float32) for _ in range(32)]

    def representative() -> Iterator[list[np.ndarray]]:
        for c in calib:
            yield [c]

    data = convert_int8(model, representative)
    path = out / ROOT_MODELS_DIR / "mobilenet_v2_int8.tflite"
    write_bytes(path, data)
    ins, outs = io_specs(data)
    in_name, out_name = next(iter(ins)), next(iter(outs))
    log(f"mobilenet_v2: {len(data)} bytes")
    return {
        **file_entry(path, data),
        "description": "keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None) with RANDOM "
        "weights: for benchmarks and runtime tests (size, speed, delegates) only. Its outputs mean nothing; "
        "there is no accuracy.",
        "task": "benchmark",
        "accuracy": None,
        "built_at": utc_now(),
        "build_command": BUILD_COMMAND + " --only mobilenet_v2",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
        "seed": SEED + 3,
        "pruning": {
            "method": "magnitude, per kernel, 50% smallest |w| of every Conv2D/DepthwiseConv2D/Dense "
            "kernel set to 0 (no training, so applied directly rather than through tfmot)",
            "final_sparsity": 0.5,
        },
        "sparsity": {k: v for k, v in weight_sparsity(data).items() if k != "per_tensor"},
        "quantization": "full integer int8, int8 input and output, 32 random calibration samples U(-1, 1) "
        "(the MobileNetV2 normalisation)",
        "operators": op_list(data),
        "inputs": [
            {
                **ins[in_name],
                "preprocessing": {
                    "kind": "image",
                    "color": "rgb",
                    "layout": "HWC",
                    "size": [224, 224],
                    "normalize": {"mean": 127.5, "std": 127.5},
                },
            }
        ],
        "outputs": [
            {
                **outs[out_name],
                "kind": "classification",
                "activation": "softmax",
                "labels": None,
                "note": "1000 ImageNet-sized classes, random weights",
            }
        ],
    }


# --------------------------------------------------------------------------- edgetpu custom op

EDGETPU_CUSTOM_CODE = "edgetpu-custom-op"
CUSTOM = 32


def build_edgetpu(out: Path) -> dict[str, Any]:
    t0 = time.time()
    src = out / PKG_DIR / "digits_int8.tflite"
    data = src.read_bytes()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    first_op = model.subgraphs[0].operators[0]
    index = first_op.opcodeIndex
    oc = model.operatorCodes[index]
    replaced = flatbuffer_utils.opcode_to_name(model, index)
    oc.builtinCode = CUSTOM
    oc.deprecatedBuiltinCode = CUSTOM
    oc.customCode = EDGETPU_CUSTOM_CODE
    oc.version = 1
    n_ops = 0
    for sg in model.subgraphs:
        for op in sg.operators:
            if op.opcodeIndex == index:
                op.builtinOptionsType = 0
                op.builtinOptions = None
                op.customOptions = None
                n_ops += 1
    new = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    try:
        interpreter(new)
        raise RuntimeError("edgetpu_custom_op.tflite unexpectedly runs without an Edge TPU")
    except (RuntimeError, ValueError) as exc:
        if "unexpectedly" in str(exc):
            raise
        error = str(exc).strip().splitlines()[0]
    path = out / TEST_DATA_DIR / "edgetpu_custom_op.tflite"
    write_bytes(path, new)
    log(f"edgetpu_custom_op: replaced {replaced} ({n_ops} operators); tf.lite error: {error}")
    return {
        **file_entry(path, new),
        "path": str(TEST_DATA_DIR / "edgetpu_custom_op.tflite"),
        "description": "Looks like edgetpu_compiler output: contains a CUSTOM operator with custom_code "
        "'edgetpu-custom-op'. It cannot run without an Edge TPU delegate; the runtime must detect it and "
        "fail "
        "with a clear error.",
        "made_from": {"file": "edge_runtime/models/digits_int8.tflite", "sha256": sha256_bytes(data)},
        "how": "tensorflow.lite.tools.flatbuffer_utils object API: the operator code of the first operator "
        f"({replaced}) set to builtin_code = deprecated_builtin_code = CUSTOM (32), custom_code "
        f"'{EDGETPU_CUSTOM_CODE}'; the {n_ops} operators using it lost their builtin options",
        "custom_ops": [EDGETPU_CUSTOM_CODE],
        "tflite_interpreter_error": error,
        "built_at": utc_now(),
        "build_command": BUILD_COMMAND + " --only edgetpu_custom_op",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
    }


# --------------------------------------------------------------------------- main


def update_manifest(
    path: Path, section: str, name: str, entry: dict[str, Any], header: dict[str, Any]
) -> None:
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    manifest = {**header, **{k: v for k, v in manifest.items() if k not in header}}
    manifest.setdefault(section, {})[name] = entry
    manifest[section] = dict(sorted(manifest[section].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())


PKG_HEADER = {
    "schema": 1,
    "generated_by": "tools/build_models.py",
    "note": "Bundled int8 models. Paths are relative to this file. Input/output 'index' is the tensor index "
    "for Interpreter.set_tensor/get_tensor, 'position' the order in "
    "get_input_details()/get_output_details(); "
    "feed q = clip(round(x / scale) + zero_point, -128, 127) with x the documented preprocessing.",
}
ROOT_HEADER = {
    "schema": 1,
    "generated_by": "tools/build_models.py",
    "note": "Development artefacts, not package data: a random-weight benchmark model and test data. "
    "Paths in 'models' are relative to this file; 'test_data' paths are relative to the repository root.",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ALL_MODELS,
        metavar="NAME",
        help=f"build only these ({', '.join(ALL_MODELS)})",
    )
    parser.add_argument("--out", type=Path, default=REPO, help="output root (default: the repository root)")
    parser.add_argument(
        "--float",
        action="store_true",
        help=f"also write the float models of digits, fused, detect under {FLOAT_DIR} (optimize's test data)",
    )
    args = parser.parse_args(argv)
    OPTIONS["float"] = args.float
    names = list(args.only or ALL_MODELS)
    out: Path = args.out.resolve()

    tf.config.set_visible_devices([], "GPU")
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception as exc:  # pragma: no cover - depends on the TF build
        log(f"op determinism not available: {exc}")

    if (
        "edgetpu_custom_op" in names
        and "digits" not in names
        and not (out / PKG_DIR / "digits_int8.tflite").exists()
    ):
        names.insert(0, "digits")

    started = time.time()
    builders = {"digits": build_digits, "fused": build_fused, "detect": build_detect}
    for name in names:
        log(f"building {name}")
        if name in builders:
            entry = builders[name](out)
            update_manifest(out / PKG_DIR / "manifest.json", "models", name, entry, PKG_HEADER)
        elif name == "mobilenet_v2":
            entry = build_mobilenet(out)
            update_manifest(
                out / ROOT_MODELS_DIR / "manifest.json", "models", "mobilenet_v2_int8", entry, ROOT_HEADER
            )
        else:
            entry = build_edgetpu(out)
            update_manifest(
                out / ROOT_MODELS_DIR / "manifest.json", "test_data", "edgetpu_custom_op", entry, ROOT_HEADER
            )
        log(f"{name}: {entry['size_bytes']} bytes, sha256 {entry['sha256'][:16]}, {entry['build_seconds']} s")
    log(f"done in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
