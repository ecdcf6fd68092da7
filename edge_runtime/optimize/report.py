"""The optimize report (one side-by-side table, or JSON) and what is written: model + manifest.

The manifest (``OUT.json`` beside ``OUT.tflite``) records the model's sha256, its source's
sha256, the engine, the calibration and verification figures and the labels, so that ``tools``
can sign and roll the model out with the existing OTA path and probation can compare against it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime import __version__
from edge_runtime.optimize.data import Dataset
from edge_runtime.optimize.engines import Attempt
from edge_runtime.optimize.rewrite import PrunedTensor
from edge_runtime.optimize.verify import HeadResult, Latency
from edge_runtime.runtime.coverage import Coverage
from edge_runtime.runtime.modelfile import FLOAT_TYPES, ModelInfo

if TYPE_CHECKING:
    from edge_runtime.optimize.options import Options


@dataclass(frozen=True)
class ModelFacts:
    """Size, hash, integer-ness and the ops that touch float tensors."""

    path: str
    size_bytes: int
    sha256: str
    fully_integer: bool
    float_ops: dict[str, int]
    ops: int
    weight_sparsity: float


def model_facts(path: Path, info: ModelInfo) -> ModelFacts:
    float_ops: Counter[str] = Counter()
    for op in info.operators:
        used = [info.tensors[i] for i in (*op.inputs, *op.outputs) if 0 <= i < len(info.tensors)]
        if any(t.dtype in FLOAT_TYPES for t in used):
            float_ops[op.name] += 1
    return ModelFacts(
        str(path),
        info.size_bytes,
        info.sha256,
        info.fully_integer,
        dict(float_ops.most_common()),
        len(info.operators),
        info.weight_sparsity,
    )


@dataclass(frozen=True)
class PruneResult:
    """Magnitude pruning before quantization, and what it cost against the unpruned float model."""

    fraction: float
    tensors: tuple[PrunedTensor, ...]
    heads: tuple[HeadResult, ...]

    @property
    def sparsity(self) -> float:
        total = sum(t.elements for t in self.tensors)
        return sum(t.zeros_after for t in self.tensors) / total if total else 0.0


@dataclass
class Report:
    """Everything one run found; built up by :func:`edge_runtime.optimize.run.optimize`."""

    options: Options
    dataset: Dataset
    calibration_samples: int
    verification_samples: int
    float_facts: ModelFacts
    int8_facts: ModelFacts | None = None
    engine: str = ""
    attempts: tuple[Attempt, ...] = ()
    heads: tuple[HeadResult, ...] = ()
    latency: tuple[Latency, ...] = ()
    delegates_unavailable: tuple[str, ...] = ()
    coverage: Mapping[str, tuple[Coverage, Coverage]] = field(default_factory=dict)
    pruning: PruneResult | None = None
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.written)

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "ok": self.ok,
            "written": list(self.written),
            "refusals": list(self.refusals),
            "notes": list(self.notes),
            "model": str(o.model),
            "out": str(o.out),
            "engine": self.engine,
            "io": o.io,
            "attempts": [
                {"engine": a.engine, "ok": a.ok, "seconds": round(a.seconds, 3), "error": a.error}
                for a in self.attempts
            ],
            "calibration": {
                "kind": self.dataset.kind,
                "source": self.dataset.source,
                "samples": self.calibration_samples,
                "skipped": list(self.dataset.skipped),
            },
            "verification": {"samples": self.verification_samples, "heads": [asdict(h) for h in self.heads]},
            "float": asdict(self.float_facts),
            "int8": asdict(self.int8_facts) if self.int8_facts else None,
            "latency": [asdict(r) for r in self.latency],
            "delegates_unavailable": list(self.delegates_unavailable),
            "coverage": {k: {"float": asdict(f), "int8": asdict(q)} for k, (f, q) in self.coverage.items()},
            "pruning": None
            if self.pruning is None
            else {
                "fraction": self.pruning.fraction,
                "sparsity": round(self.pruning.sparsity, 4),
                "tensors": [asdict(t) for t in self.pruning.tensors],
                "heads": [asdict(h) for h in self.pruning.heads],
            },
            "min_agreement": o.min_agreement,
            "forced": o.force and bool(self.refusals) and self.ok,
        }


FLOAT_COLUMN = 44  # longer float cells are cut in the table (--json has them whole)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _ops(ops: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in ops.items()) or "none"


def _head_rows(h: HeadResult) -> list[tuple[str, str, str]]:
    if h.task == "classification":
        rows = []
        if h.labelled:
            rows.append(
                (f"{h.output}: accuracy (n={h.labelled})", _pct(h.float_accuracy), _pct(h.int8_accuracy))
            )
        return [*rows, (f"{h.output}: top-1 agreement", "", _pct(h.agreement))]
    if h.task == "detection":
        return [
            (f"{h.output}: boxes (float / matched)", str(h.float_boxes), str(h.matched_boxes)),
            (f"{h.output}: agreement, mean IoU", "", f"{_pct(h.agreement)}, {h.mean_iou or 0:.3f}"),
        ]
    return [(f"{h.output}: cosine, max abs error", "", f"{h.cosine:.5f}, {h.max_abs_error:.4g}")]


def _latency_rows(latency: Sequence[Latency]) -> list[tuple[str, str, str]]:
    """Float and int8 side by side, per backend and delegate measured for both."""
    rows: list[tuple[str, str, str]] = []
    pairs: dict[tuple[str, str], list[Latency]] = {}
    for r in latency:
        pairs.setdefault((r.backend, r.delegate), []).append(r)
    for (backend, delegate), pair in pairs.items():
        if len(pair) == 2:
            a, b = pair
            ratio = a.p50_ms / b.p50_ms if b.p50_ms > 0 else float("inf")
            rows.append(
                (
                    f"latency {backend}/{delegate} p50 / p99",
                    f"{a.p50_ms:.3f} / {a.p99_ms:.3f} ms",
                    f"{b.p50_ms:.3f} / {b.p99_ms:.3f} ms ({ratio:.2f}x as fast)",
                )
            )
    return rows


def format_table(report: Report) -> str:
    """One side-by-side table: float | int8, then the engines, the verdict."""
    rows: list[tuple[str, str, str]] = []
    f, q = report.float_facts, report.int8_facts
    rows.append(("file", Path(f.path).name, Path(q.path).name if q else "-"))
    rows.append(
        (
            "size",
            f"{f.size_bytes:,} B",
            f"{q.size_bytes:,} B ({q.size_bytes / f.size_bytes:.2f}x)" if q else "-",
        )
    )
    rows.append(("sha256", f.sha256[:16], q.sha256[:16] if q else "-"))
    rows.append(
        (
            "fully integer",
            "yes" if f.fully_integer else "no",
            ("yes" if q.fully_integer else "no") if q else "-",
        )
    )
    rows.append(
        ("ops touching float", f"{sum(f.float_ops.values())}/{f.ops}", _ops(q.float_ops) if q else "-")
    )
    rows.append(("weight sparsity", _pct(f.weight_sparsity), _pct(q.weight_sparsity) if q else "-"))
    for h in report.heads:
        rows += _head_rows(h)
    rows += _latency_rows(report.latency)
    for cause in report.delegates_unavailable:
        where, _, why = cause.partition(": ")
        rows.append((f"latency {where}", "not available", why))
    for key, (cf, cq) in report.coverage.items():
        rows.append((f"{key} takes ({cq.method})", cf.text(), cq.text()))
    if report.pruning is not None:
        p = report.pruning
        rows.append((f"pruned {p.fraction:g}: sparsity", "", _pct(p.sparsity)))
        for h in p.heads:
            if h.labelled:
                rows.append((f"pruned {h.output}: accuracy", _pct(h.float_accuracy), _pct(h.int8_accuracy)))
            rows.append((f"pruned {h.output}: agreement", "", _pct(h.agreement)))
    data = report.dataset
    rows.append(
        (
            "data",
            f"{data.kind} {data.source}",
            f"{report.calibration_samples} calibration / "
            f"{report.verification_samples} held out"
            + (f", {len(data.skipped)} skipped" if data.skipped else ""),
        )
    )
    for attempt in report.attempts:
        result = "ok" if attempt.ok else f"failed: {attempt.error}"
        rows.append((f"engine {attempt.engine}", f"{attempt.seconds:.1f} s", result))
    rows = [(a, b if len(b) <= FLOAT_COLUMN else b[: FLOAT_COLUMN - 3] + "...", c) for a, b, c in rows]
    width = max(len(r[0]) for r in rows)
    col = max(len(r[1]) for r in rows)
    lines = [f"{'':<{width}}  {'float':<{col}}  int8", f"{'-' * width}  {'-' * col}  {'-' * 4}"]
    lines += [f"{a:<{width}}  {b:<{col}}  {c}" for a, b, c in rows]
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.written:
        verdict = "written: " + ", ".join(report.written)
        if report.refusals:
            verdict += " (--force, despite: " + "; ".join(report.refusals) + ")"
    else:
        verdict = (
            "refused: "
            + "; ".join(report.refusals)
            + ("" if report.int8_facts is None else " (--force writes it anyway)")
        )
    lines.append(verdict)
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def manifest_path(out: Path) -> Path:
    return out.with_suffix(".json")


def write_outputs(options: Options, report: Report, model: bytes, labels: tuple[str, ...]) -> tuple[str, ...]:
    """Write the int8 model and its manifest beside it; returns the paths written."""
    data = report.to_dict()
    manifest = {
        "schema": 1,
        "generated_by": f"edge-runtime {__version__} optimize",
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "file": options.out.name,
        "sha256": report.int8_facts.sha256 if report.int8_facts else "",
        "size_bytes": len(model),
        "source": {
            "file": str(options.model),
            "sha256": report.float_facts.sha256,
            "size_bytes": report.float_facts.size_bytes,
        },
        "engine": report.engine,
        "io": options.io,
        "labels": {"file": str(options.labels), "names": list(labels)} if options.labels else None,
        "calibration": data["calibration"],
        "verification": data["verification"],
        "latency": data["latency"],
        "pruning": data["pruning"],
        "refusals_overridden": list(report.refusals) if options.force else [],
        "drift_reference": None,
    }
    _atomic_write(options.out, model)
    target = manifest_path(options.out)
    _atomic_write(target, (json.dumps(manifest, indent=2) + "\n").encode())
    return (str(options.out), str(target))
