"""Pipeline triggers: a fixed period, one source, or several camera sources (round-robin).

``trigger = "cam"`` and ``trigger = ["cam1", "cam2"]`` are shorthands for ``{ source = "cam" }``
and ``{ sources = ["cam1", "cam2"] }`` (whose ``source`` is the first of them).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EveryTrigger(Strict):
    every_s: float = Field(ge=0.001, le=86400, description="Run at a fixed period, in seconds.")


class SourceTrigger(Strict):
    source: str = Field(description="Run on each new frame or sample of this source.")
    sources: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Several camera sources served by this one pipeline (its first is `source`): the latest "
        "frame of each, taken round-robin; each result names its source in `trigger.source`.",
    )
    min_interval_s: float = Field(0.0, ge=0, le=86400, description="Skip news closer together than this.")
    batch: int = Field(
        1,
        ge=1,
        le=64,
        description="With several sources: run up to this many pending frames (at most one per source, "
        "round-robin) in one invoke of a model with a batch dimension; 1 = off. A model that cannot be "
        "resized to a batch runs them one by one (logged).",
    )

    @model_validator(mode="after")
    def _several(self) -> SourceTrigger:
        if self.batch > len(self.names):
            raise ValueError(f"trigger batch {self.batch} is more than its {len(self.names)} source(s)")
        if self.sources:
            if len(self.sources) < 2 or len(set(self.sources)) != len(self.sources):
                raise ValueError("trigger sources must be at least two different source names")
            if self.source != self.sources[0]:
                raise ValueError("trigger source must be the first of trigger sources")
        return self

    @property
    def names(self) -> list[str]:
        """Every source that triggers the pipeline."""
        return self.sources or [self.source]


def _trigger_entry(value: Any) -> Any:
    if isinstance(value, str):
        return {"source": value}
    if isinstance(value, list):  # trigger = ["cam1", "cam2"]
        return {"source": value[0] if value and isinstance(value[0], str) else "", "sources": value}
    if isinstance(value, dict) and "sources" in value and "source" not in value:
        names = value["sources"]
        first = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
        return {**value, "source": first}
    return value


def _trigger_kind(value: Any) -> str:
    data = value if isinstance(value, dict) else vars(value) if hasattr(value, "__dict__") else {}
    return "every" if "every_s" in data else "source"


TriggerConfig = Annotated[
    Annotated[SourceTrigger, Tag("source")] | Annotated[EveryTrigger, Tag("every")],
    Discriminator(_trigger_kind),
    BeforeValidator(_trigger_entry),
]
