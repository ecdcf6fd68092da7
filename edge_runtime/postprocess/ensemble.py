"""Ensembles, pure numpy: the members' class-probability vectors combined by weighted mean or
weighted vote."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import PipelineError

FloatArray = npt.NDArray[np.float64]


def _stack(
    prob_list: Sequence[npt.ArrayLike], weights: Sequence[float] | None
) -> tuple[FloatArray, FloatArray]:
    arrays = [np.asarray(p, dtype=np.float64) for p in prob_list]
    if not arrays:
        raise PipelineError("an ensemble needs at least one probability vector")
    shapes = [a.shape for a in arrays]
    if any(s != shapes[0] for s in shapes) or arrays[0].ndim != 1:
        raise PipelineError(
            f"ensemble members must all output the same 1-D class vector, got shapes {shapes}"
        )
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(arrays),):
        raise PipelineError(f"{len(arrays)} ensemble members but {w.size} weights")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise PipelineError(f"ensemble weights must be non-negative with a positive sum, got {w.tolist()}")
    return np.stack(arrays), w / w.sum()


def combine_mean(prob_list: Sequence[npt.ArrayLike], weights: Sequence[float] | None = None) -> FloatArray:
    """Weighted average of the members' probability vectors (weights normalised to sum to 1;
    none means equal weights). Vectors must have the same shape."""
    stacked, w = _stack(prob_list, weights)
    out: FloatArray = w @ stacked
    return out


def combine_vote(prob_list: Sequence[npt.ArrayLike], weights: Sequence[float] | None = None) -> FloatArray:
    """Weighted majority vote of the members' argmax classes, as a vote-share vector.

    Each member gives its normalised weight to its best class, so the shares sum to 1. Ties are
    broken by the weighted mean probability: each entry gets that mean times a tiny step (at most
    1e-6, and less than half the smallest gap between distinct shares) added, which orders tied
    classes (and classes without votes) without ever reordering different shares.
    """
    stacked, w = _stack(prob_list, weights)
    shares = np.zeros(stacked.shape[1])
    np.add.at(shares, np.argmax(stacked, axis=1), w)
    shares = np.round(shares, 12)  # 0.1 + 0.2 ties with 0.3
    distinct = np.unique(shares)
    step = min(1e-6, float(np.min(np.diff(distinct))) / 2) if distinct.size > 1 else 1e-6
    mean = np.clip(w @ stacked, 0.0, 1.0)
    out: FloatArray = shares + step * mean
    return out
