"""``edge-runtime inspect`` for .onnx files: opsets, ops, QDQ, sparsity, and where it would run.

The file is read by the pure parser (:mod:`onnxfile`); the execution providers are probed by
loading the model in a child process, so a file that makes onnxruntime itself crash costs the
child, not the command (the cause is reported as that provider's failure).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_runtime.errors import BackendUnavailableError
from edge_runtime.runtime.backend import ONNXRUNTIME, get_backend
from edge_runtime.runtime.modelfile import sparsity_json
from edge_runtime.runtime.onnxfile import read_onnx_file
from edge_runtime.runtime.onnxproto import ValueInfo
from edge_runtime.runtime.quant import quant_fields

ONNX_PROBE = ("xnnpack", "acl", "cpu")
PROBE_TIMEOUT_S = 120.0
_PROBE_CODE = """
import json, sys
from pathlib import Path
from edge_runtime.runtime.inspect import probe_delegates
probes = probe_delegates(Path(sys.argv[1]), tuple(sys.argv[2].split(",")), "onnxruntime")
print(json.dumps([{"delegate": p.delegate, "loads": p.loads, "cause": p.cause} for p in probes]))
"""


def _edge(index: int, v: ValueInfo) -> dict[str, Any]:
    q = v.quant
    fields = quant_fields(q.scale, q.zero_point, q.axis) if q else quant_fields(None, None, None)
    dims = list(v.dims)
    shape = [1 if i == 0 and isinstance(d, str) else d for i, d in enumerate(dims)]
    return {
        "index": index,
        "name": v.name,
        "shape": shape,
        "graph_shape": dims,
        "dtype": q.dtype if q is not None and v.float_edge else v.dtype,
        "graph_dtype": v.dtype,
        **fields,
    }


def _probe(path: Path, delegates: tuple[str, ...]) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-c", _PROBE_CODE, str(path), ",".join(delegates)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        cause = f"loading did not finish within {PROBE_TIMEOUT_S:g} s"
        return [{"delegate": d, "loads": False, "cause": cause} for d in delegates]
    if proc.returncode == 0:
        result: list[dict[str, Any]] = json.loads(proc.stdout)
        return result
    lines = proc.stderr.strip().splitlines()
    if proc.returncode < 0:
        cause = f"onnxruntime crashed loading this model (signal {-proc.returncode})"
    else:
        cause = lines[-1] if lines else f"the probe exited with status {proc.returncode}"
    return [{"delegate": d, "loads": False, "cause": cause} for d in delegates]


def build_onnx_report(path: str | Path, delegates: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The inspect report of an .onnx file. Raises on a file that is not an ONNX model."""
    p = Path(path)
    info, _ = read_onnx_file(p)
    probe = delegates or ONNX_PROBE
    report: dict[str, Any] = {
        "format": "onnx",
        "path": str(p),
        "size_bytes": info.size_bytes,
        "sha256": info.sha256,
        "ir_version": info.ir_version,
        "opsets": info.opsets,
        "producer": info.producer,
        "inputs": [_edge(i, v) for i, v in enumerate(info.inputs)],
        "outputs": [_edge(len(info.inputs) + i, v) for i, v in enumerate(info.outputs)],
        "qdq": info.qdq,
        "initializers": info.initializer_count,
        "weight_sparsity": sparsity_json(info.weight_sparsity, info.weights),
        "ops": info.op_counts,
    }
    try:
        backend = get_backend(ONNXRUNTIME)
    except BackendUnavailableError as exc:
        report["backend"] = None
        report["delegates"] = [{"delegate": d, "loads": False, "cause": str(exc)} for d in probe]
        return report
    report["backend"] = {"name": backend.name, "version": backend.version}
    report["delegates"] = _probe(p, probe)
    return report


def _quant_text(t: dict[str, Any]) -> str:
    if t["scale"] is None:
        return "not quantized"
    edge = f" (graph: {t['graph_dtype']} with Q/DQ)" if t["graph_dtype"] != t["dtype"] else ""
    if t["per_channel"]:
        return f"per-channel ({len(t['scale'])} scales, axis {t['quantized_dimension']}){edge}"
    return f"scale {t['scale']:.6g} zero_point {t['zero_point']}{edge}"


def format_onnx_report(report: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    opsets = ", ".join(f"{domain} {version}" for domain, version in report["opsets"].items())
    lines = [
        f"model       {report['path']}",
        f"format      ONNX (ir_version {report['ir_version']}, opset {opsets}"
        + (f", by {report['producer']})" if report["producer"] else ")"),
        f"size        {report['size_bytes']:,} bytes",
        f"sha256      {report['sha256']}",
    ]
    for kind in ("inputs", "outputs"):
        for i, t in enumerate(report[kind]):
            label = kind if i == 0 else ""
            lines.append(
                f"{label:<12}{t['index']:>3} {t['name']}  {t['dtype']} {t['shape']}  {_quant_text(t)}"
            )
    lines.append(
        f"quantized   {'int8 QDQ' if report['qdq'] else 'no (no QuantizeLinear/DequantizeLinear pairs)'}"
    )
    sp = report["weight_sparsity"]
    lines.append(f"sparsity    {sp['total']:.1%} of {sp['elements']:,} weights are zero")
    for w in sp["per_tensor"]:
        lines.append(f"              {w['sparsity']:6.1%}  {w['op']:<18} {w['tensor']} ({w['elements']:,})")
    ops = ", ".join(f"{name} x{count}" for name, count in report["ops"].items())
    lines.append(f"ops         {ops}")
    backend = report["backend"]
    lines.append(f"backend     {backend['name'] + ' ' + backend['version'] if backend else 'none'}")
    for i, d in enumerate(report["delegates"]):
        label = "providers" if i == 0 else ""
        state = "loads" if d["loads"] else f"no: {d['cause']}"
        lines.append(f"{label:<12}{d['delegate']:<9} {state}")
    return "\n".join(lines)
