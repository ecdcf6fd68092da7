"""Drift of a model's outputs against a reference: the population stability index.

A reference (written from a held-out set by ``tools/monitor_reference.py``, stored as the
``monitor_reference`` of the model's manifest entry) is of one kind:

- ``top1``: top-1 class rates and, per class, a 10-bin histogram of the top-1 confidence;
  :class:`LiveDrift` compares the last ``window`` results' class rates (``psi_class_rates``) and
  confidence histogram pooled over classes (``psi_confidence``: per-class histograms need far more
  results than a window holds; with k cells and n results the PSI of pure noise is about (k-1)/n);
- ``heads``: one ``top1`` reference per classification head of a multi-head model (:class:`LiveHeadsDrift`);
- ``detection``: class rates of the boxes, their score histogram, boxes per frame
  (:class:`LiveDetectionDrift`).

Any kind may carry ``inputs``, the histograms of the model's inputs (:mod:`.inputdrift`). PSI and
its levels are in :mod:`.psi`; the level is the worst of the figures. Reports are computed when
health asks (at most once a second for events), never per result.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.monitor.inputdrift import checked_inputs
from edge_runtime.monitor.psi import level, psi
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.quant import dequantize, quantize

BINS = 10
BOX_CELLS = 6  # boxes per frame: 0, 1, 2, 3, 4, 5 or more
KINDS = ("top1", "heads", "detection")


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


def box_cell(boxes: int) -> int:
    return min(BOX_CELLS - 1, boxes)


def detection_reference(
    frames: Sequence[Sequence[tuple[int, float]]], labels: Sequence[str]
) -> dict[str, Any]:
    """The reference of a detector on a held-out set: per frame, its boxes as (class index, score)."""
    classes = np.zeros(len(labels), dtype=np.int64)
    scores = np.zeros(BINS, dtype=np.int64)
    boxes = np.zeros(BOX_CELLS, dtype=np.int64)
    for frame in frames:
        boxes[box_cell(len(frame))] += 1
        for c, score in frame:
            classes[c] += 1
            scores[conf_bin(score)] += 1
    total = max(1, int(classes.sum()))
    return {
        "v": 1,
        "kind": "detection",
        "samples": len(frames),
        "labels": list(labels),
        "class_rates": [round(float(n) / total, 6) for n in classes],
        "score_hist": scores.tolist(),
        "boxes_hist": boxes.tolist(),
    }


def load_reference(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return checked(doc, str(path))


def checked(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` if it is a usable reference, else ValueError. Kinds: ``top1`` (one classification
    head), ``heads`` (``heads``: one ``top1`` reference per named head), ``detection``; any kind
    may carry ``inputs`` (:mod:`.inputdrift`)."""
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("kind") not in KINDS:
        raise ValueError(f"{where}: not a version 1 reference of kind {', '.join(KINDS)}")
    if doc["kind"] == "heads":
        heads = doc.get("heads")
        if not isinstance(heads, dict) or not heads:
            raise ValueError(f"{where}: a heads reference needs heads")
        for name, head in heads.items():
            _checked_top1(
                {"v": 1, "kind": "top1", **head} if isinstance(head, dict) else head, f"{where}: {name}"
            )
    elif doc["kind"] == "detection":
        labels, rates = doc.get("labels"), doc.get("class_rates")
        scores, boxes = doc.get("score_hist"), doc.get("boxes_hist")
        if not (
            isinstance(labels, list)
            and isinstance(rates, list)
            and len(labels) == len(rates)
            and isinstance(scores, list)
            and len(scores) == BINS
            and isinstance(boxes, list)
            and len(boxes) == BOX_CELLS
        ):
            raise ValueError(
                f"{where}: a detection reference needs labels, class_rates, score_hist, boxes_hist"
            )
    else:
        _checked_top1(doc, where)
    if "inputs" in doc:
        checked_inputs(doc["inputs"], where)
    return doc


def _checked_top1(doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: not a top1 reference")
    labels, rates, hist = doc.get("labels"), doc.get("class_rates"), doc.get("confidence_hist")
    if not isinstance(labels, list) or not isinstance(rates, list) or not isinstance(hist, list):
        raise ValueError(f"{where}: a reference needs labels, class_rates and confidence_hist")
    if not (len(labels) == len(rates) == len(hist)) or any(len(row) != BINS for row in hist):
        raise ValueError(f"{where}: labels, class_rates and confidence_hist do not match")


def manifest_reference(model_path: Path) -> dict[str, Any] | None:
    """The ``monitor_reference`` of ``model_path``'s entry in a ``manifest*.json`` beside it
    (``manifest.json``, then the others by name, e.g. ``manifest_onnx.json`` of the ONNX twins;
    bundled models and models installed by an update carry one), or None."""
    for manifest in sorted(
        model_path.parent.glob("manifest*.json"), key=lambda p: (p.name != "manifest.json", p.name)
    ):
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        models = doc.get("models") if isinstance(doc, dict) else None
        for entry in (models or {}).values() if isinstance(models, dict) else ():
            if (
                isinstance(entry, dict)
                and entry.get("file") == model_path.name
                and "monitor_reference" in entry
            ):
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

    def observe(self, body: Mapping[str, Any]) -> None:
        """A classification result's body (its top-1)."""
        top = body.get("top") if body.get("type") == "classification" else None
        if top:
            self.add(str(top[0]["label"]), float(top[0]["score"]))

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


class LiveHeadsDrift:
    """One :class:`LiveDrift` per classification head of a multi-head result; the level is the worst."""

    def __init__(self, ref: dict[str, Any], window: int = 500, min_results: int = 100) -> None:
        self.heads = {name: LiveDrift(head, window, min_results) for name, head in ref["heads"].items()}

    def observe(self, body: Mapping[str, Any]) -> None:
        for name, live in self.heads.items():
            head = body.get(name)
            if isinstance(head, Mapping):
                live.observe(head)

    def report(self) -> dict[str, Any]:
        heads = {name: live.report() for name, live in self.heads.items()}
        judged = [r for r in heads.values() if r["level"] != "unknown"]
        if len(judged) < len(heads):
            return {"results": min(r["results"] for r in heads.values()), "level": "unknown", "heads": heads}
        worst = max(r["psi"] for r in judged)
        return {
            "results": min(r["results"] for r in judged),
            "psi": worst,
            "level": level(worst),
            "heads": heads,
        }


class LiveDetectionDrift:
    """The last ``window`` frames of a detector: class rates of the boxes, score histogram, boxes
    per frame, each against the reference (PSI); the level is the worst."""

    def __init__(self, ref: dict[str, Any], window: int = 500, min_results: int = 100) -> None:
        self.ref = ref
        self.index = {label: i for i, label in enumerate(ref["labels"])}
        self.recent: deque[tuple[tuple[int, int], ...]] = deque(maxlen=window)
        self.min_results = min_results
        self.unknown = 0
        self._lock = threading.Lock()

    def observe(self, body: Mapping[str, Any]) -> None:
        if body.get("type") != "detection":
            return
        boxes = []
        for d in body.get("detections") or ():
            i = self.index.get(str(d.get("label")))
            if i is None:
                self.unknown += 1
                continue
            boxes.append((i, conf_bin(float(d.get("score", 0.0)))))
        with self._lock:
            self.recent.append(tuple(boxes))

    def report(self) -> dict[str, Any]:
        with self._lock:
            frames = list(self.recent)
        if len(frames) < self.min_results:
            return {"results": len(frames), "level": "unknown"}
        pairs = [box for frame in frames for box in frame]
        out: dict[str, Any] = {"results": len(frames)}
        out["psi_boxes"] = round(
            psi(self.ref["boxes_hist"], np.bincount([box_cell(len(f)) for f in frames], minlength=BOX_CELLS)),
            4,
        )
        values = [out["psi_boxes"]]
        if pairs and sum(self.ref["class_rates"]) > 0:
            classes = np.bincount([c for c, _ in pairs], minlength=len(self.index))
            out["psi_class_rates"] = round(psi(self.ref["class_rates"], classes), 4)
            out["psi_score"] = round(
                psi(self.ref["score_hist"], np.bincount([b for _, b in pairs], minlength=BINS)), 4
            )
            values += [out["psi_class_rates"], out["psi_score"]]
        worst = max(values)
        out["psi"] = worst
        out["level"] = level(worst)
        return out


OutputDrift = LiveDrift | LiveHeadsDrift | LiveDetectionDrift


def output_drift(ref: dict[str, Any], window: int = 500, min_results: int = 100) -> OutputDrift:
    """The live side of ``ref`` (by its kind); fed whole result bodies with ``observe``."""
    kinds: dict[str, type[LiveDrift] | type[LiveHeadsDrift] | type[LiveDetectionDrift]] = {
        "top1": LiveDrift,
        "heads": LiveHeadsDrift,
        "detection": LiveDetectionDrift,
    }
    return kinds[ref["kind"]](ref, window, min_results)


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
