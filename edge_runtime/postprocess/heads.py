"""Output heads: one class per post-processing type, bound to a model's output specs.

A head checks at construction that the outputs it needs exist and have plausible shapes (and
that the labels fit), then turns each list of output arrays into the ``result`` object of a
published result. Quantized outputs are dequantized with their own parameters
(``scale * (q - zero_point)``). The registry is explicit (:data:`HEADS`, keyed by the config's
``type``); :func:`make_head` builds the head a config asks for.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import PipelineError
from edge_runtime.geometry import ImageTransform
from edge_runtime.postprocess.classification import (
    Classification,
    _classification,
    classify,
    softmax,
    top_k_order,
)
from edge_runtime.postprocess.config import (
    ClassificationConfig,
    DetectionConfig,
    EventRule,
    OutputRef,
    RawConfig,
    SsdOutputs,
)
from edge_runtime.postprocess.detection import Detection, decode_ssd, decode_yolo
from edge_runtime.postprocess.labels import label_for, read_labels
from edge_runtime.runtime.quant import dequantize, preserves_order

if TYPE_CHECKING:
    from edge_runtime.runtime.model import TensorSpec

FloatArray = npt.NDArray[np.float64]
C = TypeVar("C", ClassificationConfig, DetectionConfig, RawConfig)


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.position} {s.name!r} {s.describe()}" for s in specs) or "none"


class Head(abc.ABC, Generic[C]):
    """One pipeline's post-processing of one model's outputs.

    ``labels`` overrides the config's labels (a path in the config is read here if the config
    loader has not replaced it by a list). ``input_size`` (width, height) is the model's input
    image size, used for detection when :meth:`process` gets no transform. ``model`` names the
    model in error messages.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        config: C,
        outputs: Sequence[TensorSpec],
        labels: Sequence[str] | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        model: str = "model",
    ) -> None:
        self.config: C = config
        self.specs = tuple(outputs)
        self.model = model
        self.input_size = input_size
        config_labels = getattr(config, "labels", None)
        if labels is None and config_labels is not None:
            labels = read_labels(config_labels) if isinstance(config_labels, str) else config_labels
        self.labels: tuple[str, ...] | None = tuple(labels) if labels is not None else None
        self.num_classes: int | None = None
        self.used: tuple[TensorSpec, ...] = self._bind()
        if self.num_classes is not None and self.labels is not None and len(self.labels) != self.num_classes:
            raise PipelineError(
                f"{self._where(self.used[0])} has {self.num_classes} classes "
                f"but {len(self.labels)} labels are given"
            )
        rule = self._rule()
        if rule is not None and rule.labels is not None:
            known = self.labels
            if known is None and self.num_classes is not None:
                known = tuple(str(i) for i in range(self.num_classes))
            unknown = [x for x in rule.labels if known is not None and x not in known]
            if unknown:
                raise PipelineError(f"{model}: event labels {unknown} are not among the model's labels")

    @abc.abstractmethod
    def _bind(self) -> tuple[TensorSpec, ...]:
        """The outputs this head reads, checked; sets :attr:`num_classes` when it knows it."""

    @abc.abstractmethod
    def process(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> dict[str, Any]:
        """The JSON-ready ``result`` object for one inference's outputs (in output order)."""

    def _rule(self) -> EventRule | None:
        return None

    # -- what only some heads answer (ensembles and cascades ask) -----------------------------------

    def probabilities(self, outputs: Sequence[npt.NDArray[Any]]) -> FloatArray:
        raise PipelineError(f"{self.model}: probabilities() needs a classification config")

    def classification_result(self, probs: npt.ArrayLike) -> dict[str, Any]:
        raise PipelineError(f"{self.model}: classification_result() needs a classification config")

    def detections(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> list[Detection]:
        raise PipelineError(f"{self.model}: detections() needs a detection config")

    # -- shared -----------------------------------------------------------------------------------

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

    def _event(self, found: Sequence[tuple[str, float]]) -> list[str]:
        rule = self._rule()
        return rule.matching(found) if rule is not None else []


class ClassificationHead(Head[ClassificationConfig]):
    """Top-k classes of one class-score output."""

    kind = "classification"

    def _bind(self) -> tuple[TensorSpec, ...]:
        spec = self._find(self.config.output, "class scores")
        if not spec.shape or any(d != 1 for d in spec.shape[:-1]):
            raise PipelineError(
                f"{self._where(spec)}: classification needs one non-batch dimension, got {spec.describe()}"
            )
        self.num_classes = spec.shape[-1]
        # rank raw 8-bit class scores and dequantize only the top k when codes rank like values
        self._rank_codes = not self.config.softmax and spec.quant is not None and preserves_order(spec.quant)
        return (spec,)

    def _rule(self) -> EventRule | None:
        return self.config.event

    def probabilities(self, outputs: Sequence[npt.NDArray[Any]]) -> FloatArray:
        """The dequantized (and, if configured, softmaxed) 1-D class scores."""
        scores = self._array(outputs, self.used[0]).reshape(-1)
        return softmax(scores) if self.config.softmax else scores

    def classification_result(self, probs: npt.ArrayLike) -> dict[str, Any]:
        """The ``result`` object for a class-score vector (one model's, or an ensemble's)."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self.num_classes is not None and p.size != self.num_classes:
            raise PipelineError(f"{self.model}: expected {self.num_classes} class scores, got {p.size}")
        c = classify(p, self.labels, self.config.top_k, self.config.min_score)
        best = int(np.argmax(p))
        return self._result(c, best, float(p[best]))

    def _result(self, c: Classification, best: int, best_score: float) -> dict[str, Any]:
        hits = self._event([(label_for(best, self.labels), best_score)])
        top = [label.to_dict() for label in c.top]
        return {"type": "classification", "top": top, "event": bool(hits), "event_labels": hits}

    def _from_codes(self, outputs: Sequence[npt.NDArray[Any]]) -> dict[str, Any] | None:
        """:meth:`classification_result` of :meth:`probabilities` for 8-bit scores whose codes rank
        like their real values, dequantizing only the top k; the same result, in a fraction of the
        time for 1000 classes. None when the outputs do not fit: the full path then runs (and
        reports what is wrong)."""
        spec = self.used[0]
        if spec.quant is None or len(outputs) != len(self.specs):
            return None
        codes = np.asarray(outputs[spec.position])
        if codes.dtype != np.dtype(spec.quant.dtype) or codes.size != self.num_classes or not codes.size:
            return None
        codes = codes.reshape(-1)
        order = top_k_order(codes, self.config.top_k)
        scores = dequantize(codes[order], spec.quant).astype(np.float64)
        c = _classification(order, scores, self.labels, self.config.min_score)
        return self._result(c, int(order[0]), float(scores[0]))

    def process(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> dict[str, Any]:
        fast = self._from_codes(outputs) if self._rank_codes else None
        return fast if fast is not None else self.classification_result(self.probabilities(outputs))


class DetectionHead(Head[DetectionConfig]):
    """Boxes, classes and scores of an SSD (4-output) or YOLO-style (1-output) detector."""

    kind = "detection"

    def _bind(self) -> tuple[TensorSpec, ...]:
        if self.config.format == "yolo":
            return (self._bind_yolo(self.config.output),)
        return self._bind_ssd(self.config.outputs)

    def _rule(self) -> EventRule | None:
        return self.config.event

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

    def detections(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> list[Detection]:
        """Decoded detections, boxes in source pixels (input pixels without a transform)."""
        cfg = self.config
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
        found = self.detections(outputs, transform)
        hits = self._event([(d.label, d.score) for d in found])
        return {
            "type": "detection",
            "detections": [d.to_dict() for d in found],
            "count": len(found),
            "event": bool(hits),
            "event_labels": hits,
        }


class RawHead(Head[RawConfig]):
    """Outputs reported as they are, dequantized."""

    kind = "raw"

    def _bind(self) -> tuple[TensorSpec, ...]:
        refs = self.config.outputs if self.config.outputs is not None else list(range(len(self.specs)))
        return tuple(self._find(r, "raw") for r in refs)

    def process(
        self, outputs: Sequence[npt.NDArray[Any]], transform: ImageTransform | None = None
    ) -> dict[str, Any]:
        raw = {s.name: np.round(self._array(outputs, s), 6).tolist() for s in self.used}
        return {"type": "raw", "outputs": raw}


HEADS: dict[str, type[Head[Any]]] = {
    ClassificationHead.kind: ClassificationHead,
    DetectionHead.kind: DetectionHead,
    RawHead.kind: RawHead,
}
"""The post-processing types, by the config's ``type``."""


def make_head(
    config: ClassificationConfig | DetectionConfig | RawConfig,
    outputs: Sequence[TensorSpec],
    labels: Sequence[str] | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    model: str = "model",
) -> Head[Any]:
    """The head for ``config``, bound to ``outputs`` (raises PipelineError when they do not fit)."""
    return HEADS[config.type](config, outputs, labels, input_size=input_size, model=model)
