"""Side-by-side verification of a float model and its int8 version on held-out samples.

Pure metrics (numpy in, frozen dataclasses out): top-1 agreement and accuracy against labels for
classification heads; matched boxes and mean IoU for YOLO-style detection heads; cosine
similarity and max abs error for raw outputs. :func:`outputs` runs a model over the samples,
quantizing float inputs for an int8 model and dequantizing its outputs; :func:`latency` measures
both models in alternating blocks, so that load on the machine hits both alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.optimize.data import Sample
from edge_runtime.postprocess import box_iou, decode_yolo
from edge_runtime.runtime.model import Model, TensorSpec
from edge_runtime.runtime.quant import dequantize, quantize

Outputs = list[list[npt.NDArray[np.float64]]]  # [sample][output position]


@dataclass(frozen=True)
class HeadResult:
    """How the int8 model agrees with the float one on one output."""

    output: str
    task: str
    agreement: float
    float_accuracy: float | None = None
    int8_accuracy: float | None = None
    labelled: int = 0
    mean_iou: float | None = None
    float_boxes: int | None = None
    matched_boxes: int | None = None
    cosine: float | None = None
    max_abs_error: float | None = None


@dataclass(frozen=True)
class Latency:
    """Invoke latency of one model on one backend and delegate, in ms."""

    model: str
    backend: str
    delegate: str
    threads: int
    runs: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def _feed(spec: TensorSpec, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    if spec.quant is not None:
        return quantize(x, spec.quant).reshape(spec.shape)
    return np.asarray(x, dtype=spec.dtype).reshape(spec.shape)


def _read(spec: TensorSpec, y: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    if spec.quant is not None:
        return dequantize(y, spec.quant).astype(np.float64)
    return np.asarray(y, dtype=np.float64)


def outputs(model: Model, samples: Sequence[Sample]) -> Outputs:
    """Every output of ``model`` for each sample, as real (dequantized) values."""
    found: Outputs = []
    for sample in samples:
        feeds = [_feed(spec, x) for spec, x in zip(model.inputs, sample.inputs, strict=True)]
        raw = model.invoke(feeds)
        found.append([_read(spec, y) for spec, y in zip(model.outputs, raw, strict=True)])
    return found


def classification(
    name: str,
    f: Sequence[npt.NDArray[np.float64]],
    q: Sequence[npt.NDArray[np.float64]],
    labels: Sequence[int | None],
) -> HeadResult:
    """Top-1 agreement of the two models, and each one's accuracy on the labelled samples."""
    top_f = np.array([int(np.argmax(a)) for a in f])
    top_q = np.array([int(np.argmax(a)) for a in q])
    known = np.array([lab is not None for lab in labels], dtype=bool)
    truth = np.array([lab if lab is not None else -1 for lab in labels])
    acc_f = float(np.mean(top_f[known] == truth[known])) if known.any() else None
    acc_q = float(np.mean(top_q[known] == truth[known])) if known.any() else None
    return HeadResult(name, "classification", float(np.mean(top_f == top_q)), acc_f, acc_q, int(known.sum()))


def raw(name: str, f: Sequence[npt.NDArray[np.float64]], q: Sequence[npt.NDArray[np.float64]]) -> HeadResult:
    """Mean cosine similarity (the agreement) and the largest absolute difference."""
    cosines = []
    for a, b in zip(f, q, strict=True):
        va, vb = a.ravel(), b.ravel()
        norm = float(np.linalg.norm(va) * np.linalg.norm(vb))
        cosines.append(float(va @ vb) / norm if norm > 0 else float(np.allclose(va, vb)))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(f, q, strict=True))
    cosine = float(np.mean(cosines))
    return HeadResult(name, "raw", cosine, cosine=cosine, max_abs_error=worst)


def detection(
    name: str,
    f: Sequence[npt.NDArray[np.float64]],
    q: Sequence[npt.NDArray[np.float64]],
    input_hw: tuple[int, int],
    min_score: float = 0.4,
    iou: float = 0.45,
) -> HeadResult:
    """YOLO-style heads ``[1, N, 5 + C]``: boxes of both models matched one to one (same class,
    IoU >= 0.5); agreement = 2 x matched / (float boxes + int8 boxes), and the matched boxes' mean IoU."""
    h, w = input_hw
    matched, total_f, total_q, ious = 0, 0, 0, []
    for a, b in zip(f, q, strict=True):
        kwargs: dict[str, Any] = {"input_w": w, "input_h": h, "min_score": min_score, "iou": iou}
        df = decode_yolo(a, max_detections=100, **kwargs)
        dq = decode_yolo(b, max_detections=100, **kwargs)
        total_f += len(df)
        total_q += len(dq)
        used: set[int] = set()
        for det in df:
            candidates = [j for j, d in enumerate(dq) if j not in used and d.index == det.index]
            if not candidates:
                continue
            overlaps = box_iou(det.box, [dq[j].box for j in candidates])
            best = int(np.argmax(overlaps))
            if overlaps[best] >= 0.5:
                used.add(candidates[best])
                matched += 1
                ious.append(float(overlaps[best]))
    denominator = total_f + total_q
    agreement = 2.0 * matched / denominator if denominator else 1.0
    mean_iou = float(np.mean(ious)) if ious else None
    return HeadResult(
        name, "detection", agreement, mean_iou=mean_iou, float_boxes=total_f, matched_boxes=matched
    )


def head_task(spec: TensorSpec, choice: str) -> str:
    """``auto``: a ``[1, C]`` output (C >= 2) is a classification head, anything else raw."""
    if choice != "auto":
        return choice
    dims = [d for d in spec.shape if d != 1]
    return "classification" if len(dims) == 1 and dims[0] >= 2 else "raw"


def latency(models: Sequence[Model], runs: int, rounds: int = 10, warmup: int = 10) -> list[Latency]:
    """Each model invoked ``runs`` times in ``rounds`` alternating blocks (after ``warmup``)."""
    rng = np.random.default_rng(0)
    for model in models:
        for spec in model.inputs:
            dtype = np.dtype(spec.dtype)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                data = rng.integers(info.min, info.max, size=spec.shape, endpoint=True, dtype=dtype)
            else:
                data = rng.standard_normal(spec.shape).astype(dtype)
            model.set_input(spec.position, data)
        for _ in range(warmup):
            model.run()
    times: list[list[float]] = [[] for _ in models]
    block = max(1, runs // rounds)
    for _ in range(rounds):
        for i, model in enumerate(models):
            for _ in range(block):
                t0 = time.perf_counter()
                model.run()
                times[i].append((time.perf_counter() - t0) * 1000)
    return [
        Latency(
            str(m.path),
            m.backend.name,
            m.delegate,
            int(m.threads or 0),
            len(t),
            float(np.percentile(t, 50)),
            float(np.percentile(t, 99)),
            float(np.mean(t)),
        )
        for m, t in zip(models, times, strict=True)
    ]
