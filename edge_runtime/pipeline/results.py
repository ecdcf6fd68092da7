"""The result of one inference: ensembles combined, cascades classified, the result document.

The document is the contract of DESIGN.md (``v``, ``device``, ``pipeline``, ``seq``, ``ts``,
``frame_ts``, ``model``, ``latency_ms``, ``result``), plus ``trigger`` (which frame or sample
made it). Its JSON Schema is ``edge_runtime/reporting/result.schema.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.config import CascadeConfig, EnsembleConfig
from edge_runtime.pipeline.runner import CROP_SOURCE, ModelRunner
from edge_runtime.postprocess import combine_mean, combine_vote
from edge_runtime.sources.base import Frame


@dataclass
class Triggered:
    """One firing of a pipeline's trigger: when (capture time of the frame or sample), by what."""

    t_mono: float
    t_wall: float
    source: str
    seq: int
    frame: Frame | None


def combine(
    ensemble: EnsembleConfig, runners: Sequence[ModelRunner], outputs: Sequence[list[npt.NDArray[Any]]]
) -> dict[str, Any]:
    """The ensemble's classification: members' probabilities by weighted mean or vote."""
    probs = [r.heads[""].probabilities(o) for r, o in zip(runners, outputs, strict=True)]
    weights = [r.config.weight for r in runners]
    method = combine_mean if ensemble.combine == "mean" else combine_vote
    result = runners[0].heads[""].classification_result(method(probs, weights))
    result["combine"] = ensemble.combine
    result["members"] = [
        {**r.info, "weight": r.config.weight, "top": r.heads[""].classification_result(p)["top"]}
        for r, p in zip(runners, probs, strict=True)
    ]
    return result


def classify_crops(
    cascade: CascadeConfig, classifier: ModelRunner, result: dict[str, Any], frame: Frame | None
) -> float:
    """Classify each detection's crop of ``frame`` (``det["class"]``); returns the classifier's
    invoke time in ms."""
    if frame is None:
        return 0.0
    pad = cascade.padding
    h, w = frame.image.shape[:2]
    spent = 0.0
    for det in result.get("detections", [])[: cascade.max_crops]:
        x1, y1, x2, y2 = (v / frame.scale for v in det["box"])  # boxes are in camera pixels
        bw, bh = x2 - x1, y2 - y1
        xa, ya = max(0, int(x1 - pad * bw)), max(0, int(y1 - pad * bh))
        xb, yb = min(w, int(np.ceil(x2 + pad * bw))), min(h, int(np.ceil(y2 + pad * bh)))
        if xb - xa < 2 or yb - ya < 2:
            continue
        crop = np.ascontiguousarray(frame.image[ya:yb, xa:xb])
        with classifier.model.lock:  # the classifier may be shared with another pipeline
            classifier.fill({CROP_SOURCE: crop}, frame.t_mono)
            t0 = time.perf_counter()
            outs = classifier.invoke()
            spent += (time.perf_counter() - t0) * 1000
        det["class"] = classifier.post(outs, None)
    return spent


def document(
    *,
    device: str,
    pipeline: str,
    seq: int,
    trig: Triggered,
    model: dict[str, Any],
    latency: dict[str, float],
    result: dict[str, Any],
) -> dict[str, Any]:
    """One result as published."""
    return {
        "v": 1,
        "device": device,
        "pipeline": pipeline,
        "seq": seq,
        "ts": round(time.time(), 3),
        "frame_ts": round(trig.t_wall, 3),
        "trigger": {"source": trig.source, "seq": trig.seq},
        "model": model,
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "result": result,
    }
