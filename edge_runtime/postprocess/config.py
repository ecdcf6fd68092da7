"""Post-processing config: what a pipeline does with its model's outputs (``type =
"classification" | "detection" | "raw"``), pydantic models with every field described."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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
