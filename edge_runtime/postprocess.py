"""Model outputs -> JSON-ready results, pure numpy: classification top-k, detection, raw; ensembles.

The config models (``type = "classification" | "detection" | "raw"``) describe what a pipeline
does with its model's outputs; :class:`Postprocessor` binds one to the model's output specs,
checks at construction that the outputs exist and have plausible shapes, and turns each list of
output arrays into the ``result`` object of a published result. Quantized outputs are dequantized
with their own parameters (``scale * (q - zero_point)``). Detection decoding lives in
:mod:`edge_runtime.detection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.detection import Detection, decode_ssd, decode_yolo, label_for
from edge_runtime.errors import PipelineError
from edge_runtime.geometry import ImageTransform
from edge_runtime.runtime.quant import dequantize, preserves_order

if TYPE_CHECKING:
    from edge_runtime.runtime.model import TensorSpec

FloatArray = npt.NDArray[np.float64]
OutputRef = Annotated[int, Field(ge=0, le=1023)] | str

_LABELS_DOC = "Class names: a list, or the path of a labels file with one name per line."


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventRule(_Model):
    """Marks a result as an event when its top class (or any detection) matches."""

    labels: list[str] | None = Field(
        default=None, description="Labels that raise an event; none means any label."
    )
    min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="Lowest score that raises an event.")

    def matching(self, found: Sequence[tuple[str, float]]) -> list[str]:
        """The distinct labels among ``(label, score)`` pairs that satisfy this rule, in order."""
        hits: list[str] = []
        for label, score in found:
            wanted = self.labels is None or label in self.labels
            if wanted and score >= self.min_score and label not in hits:
                hits.append(label)
        return hits


class ClassificationConfig(_Model):
    """Top-k classes of one class-score output."""

    type: Literal["classification"] = Field(
        default="classification", description="Top-k classification of one output."
    )
    output: OutputRef = Field(default=0, description="The class-score output, by position or tensor name.")
    top_k: int = Field(default=3, ge=1, le=10_000, description="How many classes to report, best first.")
    min_score: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Classes below this score are left out."
    )
    labels: list[str] | str | None = Field(default=None, description=_LABELS_DOC)
    softmax: bool = Field(default=False, description="Apply softmax first (the model outputs logits).")
    event: EventRule | None = Field(default=None, description="When a result counts as an event.")


class SsdOutputs(_Model):
    """Where the four TFLite_Detection_PostProcess outputs are, by position or tensor name."""

    boxes: OutputRef = Field(default=0, description="Boxes [1, N, 4] (ymin, xmin, ymax, xmax, normalised).")
    classes: OutputRef = Field(default=1, description="Class ids [1, N].")
    scores: OutputRef = Field(default=2, description="Scores [1, N].")
    count: OutputRef = Field(default=3, description="Number of valid detections [1].")


class DetectionConfig(_Model):
    """Boxes, classes and scores of an SSD (4-output) or YOLO-style (1-output) detector."""

    type: Literal["detection"] = Field(default="detection", description="Object detection.")
    format: Literal["ssd", "yolo"] = Field(
        description="ssd: the 4 outputs of TFLite_Detection_PostProcess; yolo: one [1, N, 5 + C] output."
    )
    output: OutputRef = Field(default=0, description="yolo: the [1, N, 5 + C] output, by position or name.")
    outputs: SsdOutputs = Field(
        default=SsdOutputs(), description="ssd: the boxes, classes, scores and count outputs."
    )
    min_score: float = Field(
        default=0.4, ge=0.0, le=1.0, description="Detections below this score are dropped."
    )
    iou: float = Field(
        default=0.45, ge=0.0, le=1.0, description="yolo: IoU above which NMS suppresses a box."
    )
    max_detections: int = Field(
        default=50, ge=1, le=10_000, description="Most detections reported, best first."
    )
    labels: list[str] | str | None = Field(default=None, description=_LABELS_DOC)
    class_offset: int = Field(
        default=0,
        ge=-1_000_000,
        le=1_000_000,
        description="ssd: added to each class id before the label lookup (1 if labels start with ???).",
    )
    event: EventRule | None = Field(default=None, description="When a result counts as an event.")


class RawConfig(_Model):
    """Outputs reported as they are, dequantized."""

    type: Literal["raw"] = Field(default="raw", description="Dequantized output arrays as nested lists.")
    outputs: list[OutputRef] | None = Field(default=None, description="Outputs to report; none means all.")


PostprocessConfig = Annotated[ClassificationConfig | DetectionConfig | RawConfig, Field(discriminator="type")]


def parse_labels(text: str) -> list[str]:
    """Labels from a labels file's text: one per line, blank lines ignored. Lines that all start
    with an id (``0  person``, the pycoral format) are placed at that id; gaps become the id."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    pairs = [line.split(maxsplit=1) for line in lines]
    if pairs and all(len(p) == 2 and p[0].isdigit() for p in pairs):
        by_id = {int(p[0]): p[1].strip() for p in pairs}
        return [by_id.get(i, str(i)) for i in range(max(by_id) + 1)]
    return lines


def read_labels(path: str | Path) -> list[str]:
    """Read a labels file (see :func:`parse_labels`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read labels file: {exc}") from exc
    labels = parse_labels(text)
    if not labels:
        raise PipelineError(f"{path}: labels file is empty")
    return labels


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


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.position} {s.name!r} {s.describe()}" for s in specs) or "none"


class Postprocessor:
    """One pipeline's post-processing, bound to its model's output specs.

    ``labels`` overrides the config's labels (a path in the config is read here if the config
    loader has not replaced it by a list). ``input_size`` (width, height) is the model's input
    image size, used for detection when :meth:`process` gets no transform. ``model`` names the
    model in error messages.
    """

    def __init__(
        self,
        config: ClassificationConfig | DetectionConfig | RawConfig,
        outputs: Sequence[TensorSpec],
        labels: Sequence[str] | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        model: str = "model",
    ) -> None:
        self.config = config
        self.specs = tuple(outputs)
        self.model = model
        self.input_size = input_size
        if labels is None and not isinstance(config, RawConfig):
            labels = read_labels(config.labels) if isinstance(config.labels, str) else config.labels
        self.labels: tuple[str, ...] | None = tuple(labels) if labels is not None else None
        self.num_classes: int | None = None
        self.used: tuple[TensorSpec, ...]
        self._rank_codes = False  # rank raw 8-bit class scores, dequantize only the top k (process)
        if isinstance(config, ClassificationConfig):
            self.used = (self._bind_classification(config.output),)
            quant = self.used[0].quant
            self._rank_codes = not config.softmax and quant is not None and preserves_order(quant)
        elif isinstance(config, DetectionConfig) and config.format == "yolo":
            self.used = (self._bind_yolo(config.output),)
        elif isinstance(config, DetectionConfig):
            self.used = self._bind_ssd(config.outputs)
        else:
            refs = config.outputs if config.outputs is not None else list(range(len(self.specs)))
            self.used = tuple(self._find(r, "raw") for r in refs)
        if self.num_classes is not None and self.labels is not None and len(self.labels) != self.num_classes:
            raise PipelineError(
                f"{self._where(self.used[0])} has {self.num_classes} classes "
                f"but {len(self.labels)} labels are given"
            )
        event = None if isinstance(config, RawConfig) else config.event
        if event is not None and event.labels is not None:
            known = self.labels
            if known is None and self.num_classes is not None:
                known = tuple(str(i) for i in range(self.num_classes))
            unknown = [x for x in event.labels if known is not None and x not in known]
            if unknown:
                raise PipelineError(f"{model}: event labels {unknown} are not among the model's labels")

    def _bind_classification(self, ref: OutputRef) -> TensorSpec:
        spec = self._find(ref, "class scores")
        if not spec.shape or any(d != 1 for d in spec.shape[:-1]):
            raise PipelineError(
                f"{self._where(spec)}: classification needs one non-batch dimension, got {spec.describe()}"
            )
        self.num_classes = spec.shape[-1]
        return spec

    def _bind_yolo(self, ref: OutputRef) -> TensorSpec:
        spec = self._find(ref, "yolo")
        shape = spec.shape[1:] if len(spec.shape) == 3 and spec.shape[0] == 1 else spec.shape
        if len(shape) != 2 or shape[-1] < 6:
            raise PipelineError(
                f"{self._where(spec)}: yolo needs [1, N, 5 + C] with C >= 1, got {spec.describe()}"
            )
        self.num_classes = shape[-1] - 5
        return spec

    def _bind_ssd(self, refs: SsdOutputs) -> tuple[TensorSpec, ...]:
        boxes, classes, scores, count = used = (
            self._find(refs.boxes, "boxes"),
            self._find(refs.classes, "classes"),
            self._find(refs.scores, "scores"),
            self._find(refs.count, "count"),
        )
        if not boxes.shape or boxes.shape[-1] != 4:
            raise PipelineError(f"{self._where(boxes)}: ssd boxes must be [1, N, 4], got {boxes.describe()}")
        n = int(np.prod(boxes.shape[:-1]))
        for spec in (classes, scores):
            if int(np.prod(spec.shape)) != n:
                raise PipelineError(
                    f"{self._where(spec)}: expected [1, {n}] like the boxes, got {spec.describe()}"
                )
        if int(np.prod(count.shape)) != 1:
            raise PipelineError(
                f"{self._where(count)}: ssd count must hold one value, got {count.describe()}"
            )
        return used

    def _where(self, spec: TensorSpec) -> str:
        return f"{self.model}: output {spec.position} {spec.name!r}"

    def _find(self, ref: OutputRef, role: str) -> TensorSpec:
        for spec in self.specs:
            if (spec.position == ref) if isinstance(ref, int) else (spec.name == ref):
                return spec
        raise PipelineError(
            f"{self.model}: {role} output {ref!r} not found; the model's outputs are {_describe(self.specs)}"
        )

    def _array(self, outputs: Sequence[npt.NDArray[Any]], spec: TensorSpec) -> FloatArray:
        if len(outputs) != len(self.specs):
            raise PipelineError(f"{self.model}: expected {len(self.specs)} outputs, got {len(outputs)}")
        array = np.asarray(outputs[spec.position])
        if spec.quant is not None and np.issubdtype(array.dtype, np.integer):
            return dequantize(array, spec.quant).astype(np.float64)
        return array.astype(np.float64)

    def probabilities(self, outputs: Sequence[npt.NDArray[Any]]) -> FloatArray:
        """Classification: the dequantized (and, if configured, softmaxed) 1-D class scores."""
        if not isinstance(self.config, ClassificationConfig):
            raise PipelineError(f"{self.model}: probabilities() needs a classification config")
        scores = self._array(outputs, self.used[0]).reshape(-1)
        return softmax(scores) if self.config.softmax else scores

    def classification_result(self, probs: npt.ArrayLike) -> dict[str, Any]:
        """The ``result`` object for a class-score vector (one model's, or an ensemble's)."""
        if not isinstance(self.config, ClassificationConfig):
            raise PipelineError(f"{self.model}: classification_result() needs a classification config")
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self.num_classes is not None and p.size != self.num_classes:
            raise PipelineError(f"{self.model}: expected {self.num_classes} class scores, got {p.size}")
        c = classify(p, self.labels, self.config.top_k, self.config.min_score)
        best = int(np.argmax(p))
        return self._classification_result(c, best, float(p[best]))

    def _classification_result(self, c: Classification, best: int, best_score: float) -> dict[str, Any]:
        hits = self._event([(label_for(best, self.labels), best_score)])
        top = [label.to_dict() for label in c.top]
        return {"type": "classification", "top": top, "event": bool(hits), "event_labels": hits}

    def _classification_from_codes(self, outputs: Sequence[npt.NDArray[Any]]) -> dict[str, Any] | None:
        """:meth:`classification_result` of :meth:`probabilities` for 8-bit scores whose codes rank
        like their real values (``_rank_codes``), dequantizing only the top k; the same result,
        in a fraction of the time for 1000 classes. None when the outputs do not fit: the full path
        then runs (and reports what is wrong)."""
        cfg, spec = self.config, self.used[0]
        if not isinstance(cfg, ClassificationConfig) or spec.quant is None or len(outputs) != len(self.specs):
            return None
        codes = np.asarray(outputs[spec.position])
        if codes.dtype != np.dtype(spec.quant.dtype) or codes.size != self.num_classes or not codes.size:
            return None
        codes = codes.reshape(-1)
        order = top_k_order(codes, cfg.top_k)
        scores = dequantize(codes[order], spec.quant).astype(np.float64)
        c = _classification(order, scores, self.labels, cfg.min_score)
        return self._classification_result(c, int(order[0]), float(scores[0]))

    def _event(self, found: Sequence[tuple[str, float]]) -> list[str]:
        rule = None if isinstance(self.config, RawConfig) else self.config.event
        return rule.matching(found) if rule is not None else []

    def detections(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> list[Detection]:
        """Detection: decoded detections, boxes in source pixels (input pixels without a transform)."""
        cfg = self.config
        if not isinstance(cfg, DetectionConfig):
            raise PipelineError(f"{self.model}: detections() needs a detection config")
        if transform is not None:
            w, h = transform.dst_w, transform.dst_h
        elif self.input_size is not None:
            w, h = self.input_size
        else:
            raise PipelineError(f"{self.model}: detection needs the input size or an image transform")
        arrays = [self._array(outputs, s) for s in self.used]
        if cfg.format == "yolo":
            return decode_yolo(
                arrays[0], input_w=w, input_h=h, min_score=cfg.min_score, iou=cfg.iou,
                max_detections=cfg.max_detections, labels=self.labels, transform=transform,
            )  # fmt: skip
        boxes, classes, scores, count = arrays
        return decode_ssd(
            boxes, classes, scores, count, input_w=w, input_h=h, min_score=cfg.min_score,
            max_detections=cfg.max_detections, class_offset=cfg.class_offset,
            labels=self.labels, transform=transform,
        )  # fmt: skip

    def process(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> dict[str, Any]:
        """The JSON-ready ``result`` object for one inference's outputs (in output order)."""
        if isinstance(self.config, ClassificationConfig):
            fast = self._classification_from_codes(outputs) if self._rank_codes else None
            return fast if fast is not None else self.classification_result(self.probabilities(outputs))
        if isinstance(self.config, DetectionConfig):
            found = self.detections(outputs, transform)
            hits = self._event([(d.label, d.score) for d in found])
            return {
                "type": "detection",
                "detections": [d.to_dict() for d in found],
                "count": len(found),
                "event": bool(hits),
                "event_labels": hits,
            }
        raw = {s.name: np.round(self._array(outputs, s), 6).tolist() for s in self.used}
        return {"type": "raw", "outputs": raw}
