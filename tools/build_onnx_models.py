#!/usr/bin/env python3
"""Build the ONNX twins of the bundled TFLite models and their manifests (dev-only).

Runs in the model-building venv (tools/requirements-models.txt, which lists tf2onnx, onnx and
onnxruntime next to TensorFlow):

    .venv-models/bin/python tools/build_onnx_models.py [--only digits,mobilenet_v2] [--out DIR]

For each model: ``tf2onnx`` converts the int8 .tflite with ``--dequantize`` (the int8 weights
become float32 constants, so the twin computes what the TFLite model computes before activation
rounding); the int8 edges tf2onnx leaves (Cast/Sub/Mul after the input, QuantizeLinear before
the output) are removed so the float twin has float32 input and output, as a model exported from
a training framework has; then ``onnxruntime.quantization.quantize_static`` makes the int8 QDQ
model (QDQ format, int8 activations and per-channel int8 weights, MinMax calibration) on the
calibration split the TFLite model was calibrated on. Both are evaluated with onnxruntime on the
held-out split. Outputs, relative to DIR (default: the repository root):

    edge_runtime/models/digits.onnx, digits_int8.onnx, manifest_onnx.json
    edge_runtime/models/fused_int8.onnx, detect_int8.onnx (exact twins: tf2onnx without --dequantize)
    models/mobilenet_v2_int8.onnx, models/manifest_onnx.json  (the float mobilenet stays in a temp dir)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

REPO = Path(__file__).resolve().parents[1]
SEED = 20261123
OPSET = 17
BUILD_COMMAND = ".venv-models/bin/python tools/build_onnx_models.py"
PKG_DIR = Path("edge_runtime/models")
NOTE = (
    "ONNX twins of the bundled TFLite models. Paths are relative to this file. A QDQ model with float32 "
    "edges (digits_int8) has QuantizeLinear/DequantizeLinear next to them; edge-runtime shows them as int8 "
    "with the scale and zero point under 'edges', as it does for the int8 edges of the exact twins."
)
ROOT_MODELS_DIR = Path("models")


def log(msg: str) -> None:
    print(f"[build_onnx_models] {msg}", file=sys.stderr, flush=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    return {name: version(name) for name in ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "numpy")} | {
        "python": platform.python_version()
    }


def convert(tflite: Path, out: Path, dequantize: bool = True) -> None:
    """tf2onnx, in a child process (it imports TensorFlow)."""
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--output", str(out)]
    cmd += ["--opset", str(OPSET)] + (["--dequantize"] if dequantize else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"tf2onnx failed on {tflite}:\n{proc.stderr[-3000:]}")


def float_edges(model: onnx.ModelProto, input_name: str, output_name: str) -> onnx.ModelProto:
    """Remove the int8 edges tf2onnx leaves: ``x:int8 -> Cast -> Sub -> Mul`` becomes a float32
    input, ``QuantizeLinear -> y:int8`` a float32 output; rename both to ``input_name`` and
    ``output_name`` (the TFLite signature names); the batch dimension is named ``batch``."""
    g = model.graph
    (inp,) = g.input
    (out,) = g.output
    chain: list[onnx.NodeProto] = []
    name = inp.name
    for op in ("Cast", "Sub", "Mul"):
        node = next(n for n in g.node if name in n.input)
        assert node.op_type == op, f"expected {op} after the input, found {node.op_type}"
        chain.append(node)
        name = node.output[0]
    last = next(n for n in g.node if out.name in n.output)
    assert last.op_type == "QuantizeLinear", last.op_type
    float_out = last.input[0]
    for n in [*chain, last]:
        g.node.remove(n)
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == name:
                n.input[i] = input_name
            if x == float_out:
                n.input[i] = output_name
        for i, x in enumerate(n.output):
            if x == float_out:
                n.output[i] = output_name
    in_dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    out_dims = [d.dim_value for d in out.type.tensor_type.shape.dim][1:]
    g.input.remove(inp)
    g.output.remove(out)
    g.input.append(
        onnx.helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, ["batch", *in_dims])
    )
    g.output.append(
        onnx.helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, ["batch", *out_dims])
    )
    used = {x for n in g.node for x in n.input}
    for init in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(init)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, samples: list[np.ndarray]) -> None:
        self.name = name
        self.samples: Iterator[np.ndarray] = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self.samples, None)
        return None if sample is None else {self.name: sample}


def quantize(float_path: Path, int8_path: Path, input_name: str, calib: list[np.ndarray]) -> None:
    quantize_static(
        str(float_path),
        str(int8_path),
        Reader(input_name, calib),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ops(path: Path) -> dict[str, int]:
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


def qdq_edges(path: Path) -> dict[str, Any]:
    """Scale and zero point of the QuantizeLinear after the input and the DequantizeLinear before
    the output, as edge-runtime's own reader sees them (edge_runtime/runtime/onnxfile.py)."""
    sys.path.insert(0, str(REPO))
    from edge_runtime.runtime.onnxfile import read_onnx_file

    info, _ = read_onnx_file(path)
    edges: dict[str, Any] = {}
    for kind, values in (("inputs", info.inputs), ("outputs", info.outputs)):
        edges[kind] = []
        for v in values:
            assert v.quant is not None and not v.quant.per_channel, f"{path}: {v.name} has no int8 edge"
            entry = {"name": v.name, "dtype": v.quant.dtype, "scale": v.quant.scale[0]}
            edges[kind].append(entry | {"zero_point": v.quant.zero_point[0]})
    return edges


def file_entry(path: Path, base: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"file": str(path.relative_to(base)), "sha256": sha256(data), "size_bytes": len(data)}


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The split of tools/build_models.py: sklearn digits as uint8 pixels, 75/25, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(pixels, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return xtr, ytr, xte, yte


def build_digits(out: Path, work: Path) -> dict[str, Any]:
    t0 = time.time()
    pkg = out / PKG_DIR
    tflite = pkg / "digits_int8.tflite"
    xtr, _, _, _ = digits_split()
    with np.load(pkg / "digits_heldout.npz") as held:
        xte, yte = held["images"], held["labels"]
    raw = work / "digits_tf2onnx.onnx"
    convert(tflite, raw)
    float_path, int8_path = pkg / "digits.onnx", pkg / "digits_int8.onnx"
    model = float_edges(onnx.load(str(raw)), "image", "digit")
    model.producer_name = "edge-runtime tools/build_onnx_models.py (tf2onnx)"
    onnx.save(model, str(float_path))
    # the calibration split of the TFLite model: every 4th training image, x = pixel / 255
    calib = [(xtr[i : i + 1].astype(np.float32) / 255.0)[..., None] for i in range(0, len(xtr), 4)]
    quantize(float_path, int8_path, "image", calib)
    x = xte.astype(np.float32)[..., None] / 255.0
    acc = {}
    for key, path in (("float", float_path), ("int8", int8_path)):
        s = session(path)
        pred = [int(np.argmax(s.run(None, {"image": x[i : i + 1]})[0])) for i in range(len(x))]
        acc[key] = round(float(np.mean(np.array(pred) == yte)), 4)
    log(f"digits: onnx float {acc['float']}, int8 QDQ {acc['int8']}")
    manifest_tflite = json.loads((pkg / "manifest.json").read_text())["models"]["digits"]
    common = {
        "twin_of": "digits_int8.tflite",
        "twin_sha256": manifest_tflite["sha256"],
        "task": "classification",
        "labels": "digits_labels.txt",
        "heldout": "digits_heldout.npz",
        "built_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_command": BUILD_COMMAND + " --only digits",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
        "preprocessing": {
            "kind": "image",
            "color": "gray",
            "layout": "HWC",
            "size": [8, 8],
            "normalize": {"mean": 0.0, "std": 255.0},
        },
    }
    return {
        "digits": {
            **file_entry(float_path, pkg),
            **common,
            "description": "Float32 ONNX twin of digits_int8.tflite: tf2onnx --dequantize of the TFLite file "
            f"(opset {OPSET}), int8 edges removed, float32 input 'image' [batch, 8, 8, 1] and output "
            "'digit' [batch, 10].",
            "accuracy": {"heldout": acc["float"], "tflite_int8": manifest_tflite["accuracy"]},
            "operators": ops(float_path),
        },
        "digits_int8": {
            **file_entry(int8_path, pkg),
            **common,
            "description": "int8 QDQ version of digits.onnx: onnxruntime.quantization.quantize_static (QDQ, "
            "int8 activations, per-channel int8 weights, MinMax) on the TFLite model's calibration split.",
            "quantization": {
                "method": "quantize_static QDQ, activation QInt8, weight QInt8 per channel, MinMax",
                "calibration": "every 4th image of the digits training split "
                "(train_test_split(test_size=0.25, random_state=0, stratify=y)), x = pixel / 255",
                "calibration_samples": len(calib),
                "edges": qdq_edges(int8_path),
            },
            "accuracy": {
                "heldout": acc["int8"],
                "float_onnx": acc["float"],
                "tflite_int8": manifest_tflite["accuracy"],
            },
            "operators": ops(int8_path),
        },
    }


def build_mobilenet(out: Path, work: Path) -> dict[str, Any]:
    t0 = time.time()
    base = out / ROOT_MODELS_DIR
    tflite = base / "mobilenet_v2_int8.tflite"
    raw = work / "mobilenet_tf2onnx.onnx"
    convert(tflite, raw)
    float_path = work / "mobilenet_v2.onnx"
    int8_path = base / "mobilenet_v2_int8.onnx"
    model = float_edges(onnx.load(str(raw)), "input", "predictions")
    model.producer_name = "edge-runtime tools/build_onnx_models.py (tf2onnx)"
    onnx.save(model, str(float_path))
    rng = np.random.default_rng(SEED + 3)
    calib = [rng.uniform(-1.0, 1.0, (1, 224, 224, 3)).astype(np.float32) for _ in range(32)]
    quantize(float_path, int8_path, "input", calib)
    log(f"mobilenet_v2: {int8_path.stat().st_size} bytes")
    return {
        "mobilenet_v2_int8": {
            **file_entry(int8_path, base),
            "twin_of": "mobilenet_v2_int8.tflite",
            "description": "int8 QDQ ONNX twin of mobilenet_v2_int8.tflite (RANDOM weights, for benchmarks "
            "only): tf2onnx --dequantize of the TFLite file, int8 edges removed, then quantize_static "
            "(QDQ, int8 activations, per-channel int8 weights, MinMax) on 32 random samples U(-1, 1).",
            "task": "benchmark",
            "accuracy": None,
            "built_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_command": BUILD_COMMAND + " --only mobilenet_v2",
            "build_seconds": round(time.time() - t0, 1),
            "versions": versions(),
            "seed": SEED + 3,
            "quantization": {"edges": qdq_edges(int8_path), "calibration_samples": len(calib)},
            "operators": ops(int8_path),
        }
    }


def tflite_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The int8 TFLite model's outputs (tf.lite.Interpreter of the build venv), in output order."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_path=str(path))
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], feeds[d["name"]])
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def build_direct(out: Path, name: str, work: Path) -> dict[str, Any]:
    """The exact twin of ``{name}_int8.tflite``: tf2onnx without --dequantize keeps the TFLite
    quantization (int8 inputs and outputs, QuantizeLinear/DequantizeLinear around every op), so the
    twin is fed and read like the TFLite model, tensor names included."""
    t0 = time.time()
    pkg = out / PKG_DIR
    tflite = pkg / f"{name}_int8.tflite"
    path = pkg / f"{name}_int8.onnx"
    convert(tflite, path, dequantize=False)
    model = onnx.load(str(path))
    model.producer_name = "edge-runtime tools/build_onnx_models.py (tf2onnx)"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    s = session(path)
    names = [i.name for i in s.get_inputs()]
    with np.load(pkg / f"{name}_heldout.npz") as held:
        arrays = {k: held[k] for k in held.files}
    edges = qdq_edges(path)
    scales = {e["name"]: e for e in edges["inputs"]}

    def feed(i: int) -> dict[str, np.ndarray]:
        out_feeds = {}
        for n in names:
            key = "images" if "image" in n else "vibration"
            x = arrays[key][i : i + 1].astype(np.float64)
            x = x[..., None] / 255.0 if key == "images" else x
            q = np.round(x / scales[n]["scale"]) + scales[n]["zero_point"]
            out_feeds[n] = np.clip(q, -128, 127).astype(np.int8)
        return out_feeds

    count = len(arrays["images"])
    max_diff, agree, total = 0, 0, 0
    for i in range(count):
        f = feed(i)
        ours = s.run(None, f)
        theirs = tflite_outputs(tflite, f)
        for a, b in zip(ours, theirs, strict=True):
            max_diff = max(max_diff, int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max()))
            if name == "fused":
                agree += int(np.argmax(a) == np.argmax(b))
                total += 1
    log(f"{name}: max |int8 difference| to the TFLite model on {count} held-out inputs: {max_diff}")
    entry: dict[str, Any] = {
        **file_entry(path, pkg),
        "twin_of": f"{name}_int8.tflite",
        "description": f"Exact int8 ONNX twin of {name}_int8.tflite: tf2onnx (opset {OPSET}) without "
        "--dequantize keeps the TFLite quantization (int8 inputs and outputs, QuantizeLinear/"
        "DequantizeLinear around each op) and the tensor names.",
        "task": json.loads((pkg / "manifest.json").read_text())["models"][name]["task"],
        "built_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_command": BUILD_COMMAND + f" --only {name}",
        "build_seconds": round(time.time() - t0, 1),
        "versions": versions(),
        "quantization": {"method": "the TFLite model's own (tf2onnx)", "edges": edges},
        "agreement_with_tflite": {
            "heldout_inputs": count,
            "max_abs_int8_difference": max_diff,
            "top1_agreement": round(agree / total, 4) if total else None,
        },
        "operators": ops(path),
    }
    return {f"{name}_int8": entry}


def write_manifest(path: Path, note: str, models: dict[str, Any]) -> None:
    existing: dict[str, Any] = {}
    if path.is_file():
        existing = json.loads(path.read_text()).get("models", {})
    data = {
        "schema": 1,
        "generated_by": "tools/build_onnx_models.py",
        "note": note,
        "models": existing | models,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--only", default="digits,mobilenet_v2", help="digits, mobilenet_v2 (comma-separated)"
    )
    parser.add_argument("--out", type=Path, default=REPO, help="repository root to write into")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {"digits", "fused", "detect", "mobilenet_v2"}
    if unknown:
        parser.error(f"unknown models: {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="onnx-build-") as tmp:
        work = Path(tmp)
        if "digits" in names:
            write_manifest(
                args.out / PKG_DIR / "manifest_onnx.json",
                NOTE,
                build_digits(args.out, work),
            )
        for name in ("fused", "detect"):
            if name in names:
                write_manifest(
                    args.out / PKG_DIR / "manifest_onnx.json", NOTE, build_direct(args.out, name, work)
                )
        if "mobilenet_v2" in names:
            write_manifest(
                args.out / ROOT_MODELS_DIR / "manifest_onnx.json",
                "Development artefacts, not package data: the ONNX twin of the random-weight "
                "benchmark model.",
                build_mobilenet(args.out, work),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
