"""Object detection post-processing, pure numpy: box IoU, greedy NMS, YOLO-style and SSD decoding.

Decoders take float arrays (already dequantized) and return :class:`Detection` objects whose boxes
are in SOURCE frame pixels: boxes are decoded in the model's input pixels, clipped to the input,
then mapped back with :meth:`ImageTransform.boxes_to_source` (which undoes a letterbox or crop).
Without a transform the source frame is the input image itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import PipelineError
from edge_runtime.geometry import ImageTransform
from edge_runtime.postprocess.labels import label_for

FloatArray = npt.NDArray[np.float64]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` is x1, y1, x2, y2 in source pixels, ``box_norm`` the same box
    divided by the source width and height (0..1)."""

    index: int
    label: str
    score: float
    box: Box
    box_norm: Box

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: score and ``box_norm`` rounded to 4 decimals, ``box`` to 1."""
        return {
            "label": self.label,
            "index": self.index,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
            "box_norm": [round(v, 4) for v in self.box_norm],
        }


def box_iou(box: npt.ArrayLike, boxes: npt.ArrayLike) -> FloatArray:
    """IoU of one x1, y1, x2, y2 box with each of ``boxes`` ``[N, 4]``; 0 where the union is empty."""
    a = np.asarray(box, dtype=np.float64).reshape(4)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0.0, None)
    inter = iw * ih
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a + area_b - inter
    out: FloatArray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


def nms(
    boxes_xyxy: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    max_out: int,
    *,
    classes: npt.ArrayLike | None = None,
    class_aware: bool = False,
) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Boxes are visited by descending score (ties in input order); each kept box suppresses every
    remaining box whose IoU with it is above ``iou_threshold`` (with ``class_aware``, only boxes of
    its own class in ``classes``). At most ``max_out`` indices are returned.
    """
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != b.shape[0]:
        raise PipelineError(f"nms: {b.shape[0]} boxes but {s.shape[0]} scores")
    cls: npt.NDArray[Any] | None = None
    if class_aware:
        if classes is None:
            raise PipelineError("nms: class_aware needs the class of every box")
        cls = np.asarray(classes).reshape(-1)
        if cls.shape[0] != b.shape[0]:
            raise PipelineError(f"nms: {b.shape[0]} boxes but {cls.shape[0]} classes")
    suppressed = np.zeros(b.shape[0], dtype=bool)
    keep: list[int] = []
    for i in np.argsort(-s, kind="stable"):
        if len(keep) >= max_out:
            break
        if suppressed[i]:
            continue
        keep.append(int(i))
        overlap = box_iou(b[i], b) > iou_threshold
        if cls is not None:
            overlap &= cls == cls[i]
        suppressed |= overlap
    return np.asarray(keep, dtype=np.intp)


def _to_detections(
    boxes_input: FloatArray,
    scores: FloatArray,
    classes: npt.NDArray[np.int64],
    *,
    input_w: int,
    input_h: int,
    labels: Sequence[str] | None,
    transform: ImageTransform | None,
) -> list[Detection]:
    if transform is not None:
        src = transform.boxes_to_source(boxes_input)
        src_w, src_h = transform.src_w, transform.src_h
    else:
        src, src_w, src_h = boxes_input, input_w, input_h
    norm = src / np.array([src_w, src_h, src_w, src_h], dtype=np.float64)
    return [
        Detection(
            index=int(c),
            label=label_for(int(c), labels),
            score=float(s),
            box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            box_norm=(float(n[0]), float(n[1]), float(n[2]), float(n[3])),
        )
        for b, n, s, c in zip(src, norm, scores, classes, strict=True)
    ]


def decode_yolo(
    output: npt.ArrayLike,
    *,
    input_w: int,
    input_h: int,
    min_score: float,
    iou: float,
    max_detections: int,
    labels: Sequence[str] | None = None,
    transform: ImageTransform | None = None,
) -> list[Detection]:
    """Decode a YOLO-style output ``[1, N, 5 + C]`` or ``[N, 5 + C]``.

    Each row is ``cx, cy, w, h`` (normalised 0..1 of the input size), objectness, then C class
    probabilities, all already in 0..1. The score of a row is objectness times its best class
    probability; rows below ``min_score`` are dropped, boxes are clipped to the input and
    suppressed per class (class-aware NMS at ``iou``), best first, at most ``max_detections``.
    """
    out = np.asarray(output, dtype=np.float64)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 2 or out.shape[1] < 6:
        raise PipelineError(f"yolo output must be [1, N, 5 + C] with C >= 1, got {list(np.shape(output))}")
    class_probs = out[:, 5:]
    classes = np.argmax(class_probs, axis=1).astype(np.int64)
    scores = out[:, 4] * class_probs[np.arange(out.shape[0]), classes]
    rows = np.flatnonzero(scores >= min_score)
    cx, cy, w, h = (out[rows, k] for k in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).reshape(-1, 4)
    boxes = np.clip(boxes, 0.0, 1.0) * np.array([input_w, input_h, input_w, input_h], dtype=np.float64)
    keep = nms(boxes, scores[rows], iou, max_detections, classes=classes[rows], class_aware=True)
    return _to_detections(
        boxes[keep], scores[rows][keep], classes[rows][keep],
        input_w=input_w, input_h=input_h, labels=labels, transform=transform,
    )  # fmt: skip


def decode_ssd(
    boxes: npt.ArrayLike,
    classes: npt.ArrayLike,
    scores: npt.ArrayLike,
    count: npt.ArrayLike,
    *,
    input_w: int,
    input_h: int,
    min_score: float,
    max_detections: int,
    class_offset: int = 0,
    labels: Sequence[str] | None = None,
    transform: ImageTransform | None = None,
) -> list[Detection]:
    """Decode the 4-output layout of ``TFLite_Detection_PostProcess`` (NMS already done in the model).

    ``boxes`` ``[1, N, 4]`` as ymin, xmin, ymax, xmax normalised 0..1; ``classes`` and ``scores``
    ``[1, N]``; ``count`` ``[1]``, the number of valid rows. ``class_offset`` is added to each model
    class id to give the label index (1 when the labels file starts with a background entry such
    as ``???``); a class that ends up below 0 is the background and is dropped.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    c = np.asarray(classes, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not b.shape[0] == c.shape[0] == s.shape[0]:
        raise PipelineError(
            f"ssd outputs disagree: {b.shape[0]} boxes, {c.shape[0]} classes, {s.shape[0]} scores"
        )
    n = max(0, min(int(np.asarray(count, dtype=np.float64).reshape(-1)[0]), b.shape[0]))
    index = np.rint(c[:n]).astype(np.int64) + class_offset
    rows = np.flatnonzero((s[:n] >= min_score) & (index >= 0))
    rows = rows[np.argsort(-s[rows], kind="stable")][:max_detections]
    yx = np.clip(b[rows], 0.0, 1.0)
    pixels = yx[:, [1, 0, 3, 2]] * np.array([input_w, input_h, input_w, input_h], dtype=np.float64)
    return _to_detections(
        pixels, s[rows], index[rows], input_w=input_w, input_h=input_h, labels=labels, transform=transform
    )
