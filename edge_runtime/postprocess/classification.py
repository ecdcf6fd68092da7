"""Classification, pure numpy: softmax, top-k with labels, top-k on raw 8-bit codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import PipelineError
from edge_runtime.postprocess.labels import label_for

FloatArray = npt.NDArray[np.float64]


def softmax(logits: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Numerically stable softmax along ``axis``."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    out: FloatArray = e / np.sum(e, axis=axis, keepdims=True)
    return out


@dataclass(frozen=True)
class Label:
    """One class of a classification: its index, name and score."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": round(self.score, 4)}


@dataclass(frozen=True)
class Classification:
    """The best classes, best first (ties in index order)."""

    top: tuple[Label, ...]


def classify(
    probs: npt.ArrayLike, labels: Sequence[str] | None = None, top_k: int = 3, min_score: float = 0.0
) -> Classification:
    """The ``top_k`` best classes of a 1-D score vector whose score is at least ``min_score``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1:
        raise PipelineError(f"classify needs a 1-D score vector, got shape {list(p.shape)}")
    order = np.argsort(-p, kind="stable")[:top_k]
    return _classification(order, p[order], labels, min_score)


def _classification(
    order: npt.NDArray[np.intp], scores: FloatArray, labels: Sequence[str] | None, min_score: float
) -> Classification:
    """Classes ``order`` with their ``scores``, best first, those below ``min_score`` left out."""
    pairs = zip(order.tolist(), scores.tolist(), strict=True)
    return Classification(tuple(Label(i, label_for(i, labels), s) for i, s in pairs if s >= min_score))


def top_k_order(codes: npt.NDArray[np.integer], k: int) -> npt.NDArray[np.intp]:
    """The first ``k`` of ``np.argsort(-codes, kind="stable")`` for 1-D integer codes: largest first,
    ties in index order. ``~`` reverses the order of integers without overflow, and a stable sort of
    8- and 16-bit integers is a radix sort (for 1000 int8 scores faster than a partition)."""
    if k == 1 and codes.size:
        return np.array([np.argmax(codes)], dtype=np.intp)  # the first of the largest
    order: npt.NDArray[np.intp] = np.argsort(~codes, kind="stable")[:k]
    return order
