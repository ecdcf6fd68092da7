"""Model outputs -> JSON-ready results, pure numpy: one head per type (:mod:`.heads`:
classification, detection, raw), their config (:mod:`.config`), labels, classification and
detection decoding, and ensembles. Callers import from here."""

from edge_runtime.postprocess.classification import Classification, Label, classify, softmax, top_k_order
from edge_runtime.postprocess.config import (
    ClassificationConfig,
    DetectionConfig,
    EventRule,
    OutputRef,
    PostprocessConfig,
    RawConfig,
    SsdOutputs,
)
from edge_runtime.postprocess.detection import Detection, box_iou, decode_ssd, decode_yolo, nms
from edge_runtime.postprocess.ensemble import combine_mean, combine_vote
from edge_runtime.postprocess.heads import HEADS, ClassificationHead, DetectionHead, Head, RawHead, make_head
from edge_runtime.postprocess.labels import label_for, parse_labels, read_labels

__all__ = [
    "HEADS",
    "Classification",
    "ClassificationConfig",
    "ClassificationHead",
    "Detection",
    "DetectionConfig",
    "DetectionHead",
    "EventRule",
    "Head",
    "Label",
    "OutputRef",
    "PostprocessConfig",
    "RawConfig",
    "RawHead",
    "SsdOutputs",
    "box_iou",
    "classify",
    "combine_mean",
    "combine_vote",
    "decode_ssd",
    "decode_yolo",
    "label_for",
    "make_head",
    "nms",
    "parse_labels",
    "read_labels",
    "softmax",
    "top_k_order",
]
