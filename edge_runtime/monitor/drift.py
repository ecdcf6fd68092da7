"""Drift of a model's outputs against a reference: the population stability index.

A reference (written from a held-out set by ``tools/monitor_reference.py``) holds the model's
top-1 class rates and, per class, a 10-bin histogram of the top-1 confidence. The live side keeps
the last ``window`` results as (class, bin) pairs (a bounded deque) and compares:

- ``psi_class_rates``: PSI between the live and the reference top-1 class rates;
- ``psi_confidence``: PSI between the live and the reference top-1 confidence histograms, pooled
  over classes (per-class histograms need far more results than a window holds for rare classes:
  with k cells and n results the PSI of pure sampling noise is about (k - 1) / n).

``PSI = sum((a - e) * ln(a / e))`` over the cells, both sides normalised and floored at 1e-4.
Why PSI: it is the symmetric form of the Kullback-Leibler divergence, has conventional levels that
operators know (below 0.1 stable, 0.1-0.25 watch, above 0.25 drift), needs no parameters and costs
one pass over k cells (10 classes + 10 bins: a few microseconds), computed at health time, never per
result. The level is the worse of the two.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.runtime.model import Model
from edge_runtime.runtime.quant import dequantize, quantize

BINS = 10
FLOOR = 1e-4
WATCH, DRIFT = 0.1, 0.25


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """The population stability index of ``actual`` against ``expected`` (counts or shares)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty distributions over the same cells")
    e = np.maximum(e / e.sum(), FLOOR)
    a = np.maximum(a / a.sum(), FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def level(value: float) -> str:
    return "ok" if value < WATCH else "watch" if value < DRIFT else "drift"


def conf_bin(confidence: float) -> int:
    return min(BINS - 1, max(0, int(confidence * BINS)))


def reference(scores: npt.NDArray[np.floating[Any]], labels: Sequence[str]) -> dict[str, Any]:
    """The reference of a model's class scores on a held-out set (rows: samples)."""
    p = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if p.shape[1] != len(labels):
        raise ValueError(f"{p.shape[1]} class scores, {len(labels)} labels")
    top = p.argmax(axis=1)
    conf = p[np.arange(len(p)), top]
    hist = np.zeros((len(labels), BINS), dtype=np.int64)
    for c, s in zip(top, conf, strict=True):
        hist[c, conf_bin(float(s))] += 1
    counts = hist.sum(axis=1)
    return {
        "v": 1,
        "kind": "top1",
        "samples": len(p),
        "labels": list(labels),
        "class_rates": [round(float(n) / len(p), 6) for n in counts],
        "confidence_hist": hist.tolist(),
    }


def load_reference(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return checked(doc, str(path))


def checked(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` if it is a usable reference, else ValueError."""
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("kind") != "top1":
        raise ValueError(f"{where}: not a version 1 top1 reference")
    labels, rates, hist = doc.get("labels"), doc.get("class_rates"), doc.get("confidence_hist")
    if not isinstance(labels, list) or not isinstance(rates, list) or not isinstance(hist, list):
        raise ValueError(f"{where}: a reference needs labels, class_rates and confidence_hist")
    if not (len(labels) == len(rates) == len(hist)) or any(len(row) != BINS for row in hist):
        raise ValueError(f"{where}: labels, class_rates and confidence_hist do not match")
    return doc


def manifest_reference(model_path: Path) -> dict[str, Any] | None:
    """The ``monitor_reference`` of ``model_path``'s entry in the ``manifest.json`` beside it
    (bundled models and models installed by an update carry one), or None."""
    manifest = model_path.parent / "manifest.json"
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in (doc.get("models") or {}).values():
        if isinstance(entry, dict) and entry.get("file") == model_path.name and "monitor_reference" in entry:
            return checked(entry["monitor_reference"], f"{manifest}: {model_path.name}")
    return None


class LiveDrift:
    """The last ``window`` results of one head against its reference."""

    def __init__(self, ref: dict[str, Any], window: int = 500, min_results: int = 100) -> None:
        self.ref = ref
        self.index = {label: i for i, label in enumerate(ref["labels"])}
        self.recent: deque[tuple[int, int]] = deque(maxlen=window)
        self.min_results = min_results
        self.unknown = 0
        self._lock = threading.Lock()

    def add(self, label: str, confidence: float) -> None:
        i = self.index.get(label)
        if i is None:
            self.unknown += 1
            return
        with self._lock:
            self.recent.append((i, conf_bin(confidence)))

    def report(self) -> dict[str, Any]:
        with self._lock:
            pairs = list(self.recent)
        if len(pairs) < self.min_results:
            return {"results": len(pairs), "level": "unknown"}
        k = len(self.index)
        classes = np.bincount([c for c, _ in pairs], minlength=k)
        bins = np.bincount([b for _, b in pairs], minlength=BINS)
        ref_bins = np.asarray(self.ref["confidence_hist"]).sum(axis=0)
        p_class = psi(self.ref["class_rates"], classes)
        p_conf = psi(ref_bins, bins)
        worst = max(p_class, p_conf)
        return {
            "results": len(pairs),
            "psi_class_rates": round(p_class, 4),
            "psi_confidence": round(p_conf, 4),
            "psi": round(worst, 4),
            "level": level(worst) if math.isfinite(worst) else "drift",
        }


def model_scores(model: Model, images: npt.NDArray[Any], std: float = 255.0) -> npt.NDArray[np.float32]:
    """Output 0 of ``model`` for every image, dequantized (rows: samples)."""
    spec_in, spec_out = model.inputs[0], model.outputs[0]
    rows = []
    for image in images:
        x = (np.asarray(image, dtype=np.float32) / std).reshape(spec_in.shape)
        q = quantize(x, spec_in.quant).astype(spec_in.dtype) if spec_in.quant is not None else x
        out = model.invoke([q])[0]
        rows.append(dequantize(out, spec_out.quant) if spec_out.quant is not None else out.astype(np.float32))
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
