"""``edge-runtime bench``: invoke latency of one model, in the spirit of TFLite's benchmark_model.

Load time, first invoke, then mean and p50/p90/p99 over ``runs`` invokes after ``warmup``, with the
delegate actually used. :func:`bench_backends` runs each backend in its own process (the TFLite
backends need different numpy versions, so they may live in different environments) and
collects the results side by side; onnxruntime runs the .onnx twin of a .tflite model (and the
TFLite backends the .tflite twin of an .onnx one) when one lies next to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.runtime.backend import BACKEND_NAMES, ONNXRUNTIME
from edge_runtime.runtime.model import Model, TensorSpec


@dataclass(frozen=True)
class BenchResult:
    model: str
    backend: str
    backend_version: str
    delegate: str
    placement: str
    threads: int | None
    runs: int
    warmup: int
    load_ms: float
    first_invoke_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    python: str = field(default_factory=lambda: sys.executable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_input(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """Random data of the right shape and dtype (invoke time does not depend on the values)."""
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=spec.shape, endpoint=True, dtype=dtype)
    return rng.standard_normal(spec.shape).astype(dtype)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def bench_model(
    path: str | Path,
    *,
    threads: int | None = None,
    delegate: str | None = None,
    runs: int = 100,
    warmup: int = 10,
    backend: str = "auto",
) -> BenchResult:
    """Benchmark one model in this process."""
    delegates = [delegate] if delegate else ["cpu"]
    if delegate and delegate != "cpu":
        delegates.append("cpu")
    started = time.perf_counter()
    model = Model(path, delegates=delegates, threads=threads, backend=backend)
    load_ms = (time.perf_counter() - started) * 1000
    rng = np.random.default_rng(0)
    for spec in model.inputs:
        model.set_input(spec.position, random_input(spec, rng))
    t0 = time.perf_counter()
    model.run()
    first_ms = (time.perf_counter() - t0) * 1000
    for _ in range(warmup):
        model.run()
    times: list[float] = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        model.run()
        times.append((time.perf_counter() - t0) * 1000)
    return BenchResult(
        model=str(path),
        backend=model.backend.name,
        backend_version=model.backend.version,
        delegate=model.delegate,
        placement=model.placement,
        threads=threads,
        runs=len(times),
        warmup=warmup,
        load_ms=load_ms,
        first_invoke_ms=first_ms,
        mean_ms=float(np.mean(times)),
        p50_ms=percentile(times, 50),
        p90_ms=percentile(times, 90),
        p99_ms=percentile(times, 99),
        min_ms=float(np.min(times)),
    )


@dataclass(frozen=True)
class BackendRow:
    backend: str
    result: BenchResult | None
    error: str = ""


def _run_child(python: str, backend: str, args: list[str]) -> tuple[BenchResult | None, str]:
    cmd = [python, "-m", "edge_runtime", "bench", *args, "--backend", backend, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit {proc.returncode}"
    data = json.loads(proc.stdout)
    return BenchResult(**data), ""


def _has_backend(python: str, backend: str) -> tuple[bool, str]:
    code = f"import sys\nfrom edge_runtime.runtime.backend import get_backend\nget_backend({backend!r})\n"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode == 0:
        return True, ""
    lines = proc.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit {proc.returncode}"


def twin_path(path: Path, backend: str) -> Path | None:
    """The file ``backend`` runs for ``path``: itself, or its twin in the other format (the same
    name with .onnx or .tflite next to it), or None when there is none."""
    wanted = ".onnx" if backend == ONNXRUNTIME else ".tflite"
    if path.suffix.lower() == wanted:
        return path
    twin = path.with_suffix(wanted)
    return twin if twin.is_file() else None


def bench_backends(
    path: str | Path,
    *,
    pythons: Sequence[str] = (),
    threads: int | None = None,
    delegate: str | None = None,
    runs: int = 100,
    warmup: int = 10,
) -> list[BackendRow]:
    """Every backend, each in a fresh process of the first Python that has it installed, on the
    model file in its format (``path`` or its twin, see :func:`twin_path`)."""
    args = ["--runs", str(runs), "--warmup", str(warmup)]
    if threads:
        args += ["--threads", str(threads)]
    if delegate:
        args += ["--delegate", delegate]
    candidates = [sys.executable, *pythons]
    rows: list[BackendRow] = []
    for backend in BACKEND_NAMES:
        model = twin_path(Path(path), backend)
        if model is None:
            twin = Path(path).with_suffix(".onnx" if backend == ONNXRUNTIME else ".tflite")
            rows.append(BackendRow(backend, None, f"no twin of {Path(path).name} in its format ({twin})"))
            continue
        reasons: list[str] = []
        for python in candidates:
            ok, reason = _has_backend(python, backend)
            if not ok:
                reasons.append(f"{python}: {reason}")
                continue
            result, error = _run_child(python, backend, [str(model), *args])
            rows.append(BackendRow(backend, result, error))
            break
        else:
            rows.append(BackendRow(backend, None, "; ".join(reasons)))
    return rows


def format_rows(rows: Sequence[BackendRow]) -> str:
    header = (
        f"{'backend':<16}{'version':<10}{'delegate':<10}{'threads':>7}{'load ms':>10}"
        f"{'first ms':>10}{'mean ms':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
    )
    lines = [header]
    for row in rows:
        r = row.result
        if r is None:
            lines.append(f"{row.backend:<16}unavailable: {row.error}")
            continue
        lines.append(
            f"{r.backend:<16}{r.backend_version:<10}{r.delegate:<10}{r.threads or '-':>7}"
            f"{r.load_ms:>10.1f}{r.first_invoke_ms:>10.2f}{r.mean_ms:>10.3f}{r.p50_ms:>10.3f}"
            f"{r.p90_ms:>10.3f}{r.p99_ms:>10.3f}"
        )
    models = {row.result.model for row in rows if row.result}
    if len(models) > 1:
        lines.extend(f"model: {row.backend} ran {row.result.model}" for row in rows if row.result)
    fallbacks = [row.result.placement for row in rows if row.result and "failed" in row.result.placement]
    lines.extend(f"note: {p}" for p in fallbacks)
    return "\n".join(lines)
