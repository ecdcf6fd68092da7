"""``edge-runtime inspect``: what a model file is and where it would run on this board."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import BackendUnavailableError, EdgeRuntimeError
from edge_runtime.runtime.backend import get_backend
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.modelfile import TensorInfo, read_model_file, sparsity_json
from edge_runtime.runtime.onnx_inspect import build_onnx_report, format_onnx_report
from edge_runtime.runtime.onnxfile import is_onnx_file, onnx_twin
from edge_runtime.runtime.quant import quant_fields

DEFAULT_PROBE = ("edgetpu", "gpu", "vx", "armnn", "cpu")


@dataclass(frozen=True)
class DelegateProbe:
    delegate: str
    loads: bool
    cause: str


def probe_delegates(path: Path, delegates: tuple[str, ...], backend: str) -> list[DelegateProbe]:
    """Try to load the model on each delegate alone."""
    probes: list[DelegateProbe] = []
    for key in delegates:
        try:
            Model(path, delegates=[key], backend=backend)
        except EdgeRuntimeError as exc:
            cause = str(exc)
            marker = f"{key} failed: "
            probes.append(DelegateProbe(key, False, cause.split(marker, 1)[-1]))
        else:
            probes.append(DelegateProbe(key, True, ""))
    return probes


def _tensor(t: TensorInfo) -> dict[str, Any]:
    q = t.quantization
    fields = quant_fields(q.scale, q.zero_point, q.axis) if q else quant_fields(None, None, None)
    return {"index": t.index, "name": t.name, "shape": list(t.shape), "dtype": t.dtype, **fields}


def build_report(
    path: str | Path, delegates: tuple[str, ...] = DEFAULT_PROBE, backend: str = "auto"
) -> dict[str, Any]:
    """The full inspect report as a JSON-ready dict. Raises on a file that is not a model."""
    p = Path(path)
    if is_onnx_file(p) or backend == "onnxruntime":  # onnxruntime inspects a .tflite model's twin
        onnx_file = p if is_onnx_file(p) else onnx_twin(p)
        return build_onnx_report(onnx_file, None if delegates == DEFAULT_PROBE else delegates)
    info, _ = read_model_file(p)
    report: dict[str, Any] = {
        "path": str(p),
        "size_bytes": info.size_bytes,
        "sha256": info.sha256,
        "schema_version": info.schema_version,
        "description": info.description,
        "subgraphs": info.subgraphs,
        "inputs": [_tensor(t) for t in info.input_tensors],
        "outputs": [_tensor(t) for t in info.output_tensors],
        "fully_integer": info.fully_integer,
        "float_tensors": list(info.float_tensors),
        "activation_dtypes": sorted({t.dtype for t in info.tensors if not t.is_constant}),
        "weight_sparsity": sparsity_json(info.weight_sparsity, info.weights),
        "ops": info.op_counts,
        "custom_ops": list(info.custom_ops),
        "needs_edgetpu": info.needs_edgetpu,
    }
    try:
        chosen = get_backend(backend)
    except BackendUnavailableError as exc:
        report["backend"] = None
        report["delegates"] = [{"delegate": d, "loads": False, "cause": str(exc)} for d in delegates]
        return report
    report["backend"] = {"name": chosen.name, "version": chosen.version}
    report["xnnpack"] = _xnnpack(p, chosen.name)
    report["delegates"] = [
        {"delegate": pr.delegate, "loads": pr.loads, "cause": pr.cause}
        for pr in probe_delegates(p, delegates, chosen.name)
    ]
    return report


def _xnnpack(path: Path, backend: str) -> dict[str, Any] | None:
    """Which ops LiteRT's XNNPACK delegate leaves on reference kernels (what makes int8 slow)."""
    if backend != "litert":
        return None
    from edge_runtime.runtime.coverage import xnnpack

    try:
        c = xnnpack(path.read_bytes())
    except (ValueError, RuntimeError, OSError) as exc:
        return {"error": " ".join(str(exc).split())[:300]}
    return {
        "whole_graph": c.whole_graph,
        "ops": c.ops,
        "partitions": c.partitions,
        "left": c.left,
        "text": c.text(),
    }


def _quant_text(t: dict[str, Any]) -> str:
    if t["scale"] is None:
        return "not quantized"
    if t["per_channel"]:
        return f"per-channel ({len(t['scale'])} scales, axis {t['quantized_dimension']})"
    return f"scale {t['scale']:.6g} zero_point {t['zero_point']}"


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    if report.get("format") == "onnx":
        return format_onnx_report(report)
    lines = [
        f"model       {report['path']}",
        f"size        {report['size_bytes']:,} bytes",
        f"sha256      {report['sha256']}",
    ]
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(report[kind]):
            label = kind if i == 0 else ""
            lines.append(
                f"{label:<12}{t['index']:>3} {t['name']}  {t['dtype']} {t['shape']}  {_quant_text(t)}"
            )
    if report["fully_integer"]:
        integer = f"yes (activations {', '.join(report['activation_dtypes'])})"
    else:
        floats = report["float_tensors"]
        integer = f"no: {len(floats)} float tensors, e.g. {', '.join(floats[:3])}"
    lines.append(f"integer     {integer}")
    sp = report["weight_sparsity"]
    lines.append(f"sparsity    {sp['total']:.1%} of {sp['elements']:,} weights are zero")
    for w in sp["per_tensor"]:
        lines.append(f"              {w['sparsity']:6.1%}  {w['op']:<18} {w['tensor']} ({w['elements']:,})")
    ops = ", ".join(f"{name} x{count}" for name, count in report["ops"].items())
    lines.append(f"ops         {ops}")
    lines.append(f"custom ops  {', '.join(report['custom_ops']) or 'none'}")
    backend = report["backend"]
    lines.append(f"backend     {backend['name'] + ' ' + backend['version'] if backend else 'none'}")
    xnn = report.get("xnnpack")
    if xnn:
        lines.append(f"xnnpack     {xnn.get('text') or 'cannot load: ' + xnn.get('error', '')}")
    for i, d in enumerate(report["delegates"]):
        label = "delegates" if i == 0 else ""
        state = "loads" if d["loads"] else f"no: {d['cause']}"
        lines.append(f"{label:<12}{d['delegate']:<9} {state}")
    return "\n".join(lines)
