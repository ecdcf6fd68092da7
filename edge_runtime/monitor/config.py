"""The ``[monitor]`` section: camera health and tamper checks (on by default: they cost well under
a millisecond per check, measured in ``docs/monitoring.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_runtime.monitor.capture import CaptureConfig

TamperState = Literal["dark", "bright", "covered", "blurred", "frozen", "moved"]
TAMPER_STATES: tuple[TamperState, ...] = ("dark", "bright", "covered", "blurred", "frozen", "moved")

# enter and leave thresholds that must keep their order (hysteresis): (enter, leave, +1: leave >= enter)
HYSTERESIS = (
    ("dark_enter", "dark_leave", 1),
    ("bright_enter", "bright_leave", -1),
    ("covered_enter", "covered_leave", 1),
    ("blur_enter", "blur_leave", 1),
    ("moved_enter", "moved_leave", 1),
)


def _hysteresis_problem(values: Mapping[str, Any]) -> str | None:
    for enter, leave, sign in HYSTERESIS:
        a, b = values[enter], values[leave]
        if sign * (b - a) < 0:
            return f"{leave} must be {'at least' if sign > 0 else 'at most'} {enter} (hysteresis)"
    return None


class TamperSourceConfig(BaseModel):
    """``[monitor.tamper.sources.<camera>]``: options of one camera; what is not set here is the
    global ``[monitor.tamper]`` value (the merged options are checked like the global ones)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(None, description="Check this camera at all.")
    states: list[TamperState] | None = Field(None, description="The states judged on this camera.")
    hold_s: float | None = Field(None, ge=0, le=3600, description="Hold time of this camera's states.")
    dark_enter: float | None = Field(None, ge=0, le=255, description="Too dark below this mean brightness.")
    dark_leave: float | None = Field(None, ge=0, le=255, description="No longer dark above this.")
    bright_enter: float | None = Field(None, ge=0, le=255, description="Too bright above this.")
    bright_leave: float | None = Field(None, ge=0, le=255, description="No longer too bright below this.")
    covered_enter: float | None = Field(None, ge=0, le=128, description="Covered below this deviation.")
    covered_leave: float | None = Field(None, ge=0, le=128, description="No longer covered above this.")
    blur_enter: float | None = Field(None, ge=0, le=100, description="Blurred below this sharpness.")
    blur_leave: float | None = Field(None, ge=0, le=100, description="No longer blurred above this.")
    frozen_s: float | None = Field(None, ge=0.1, le=86400, description="Frozen after this many seconds.")
    frozen_delta: float | None = Field(None, ge=0, le=255, description="Identical-frame tolerance.")
    moved_enter: float | None = Field(None, ge=-1, le=1, description="Moved below this correlation.")
    moved_leave: float | None = Field(None, ge=-1, le=1, description="View back above this correlation.")


class TamperConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="Check every camera for darkness, glare, blur, freeze, cover, moves."
    )
    states: list[TamperState] = Field(
        default_factory=lambda: list(TAMPER_STATES),
        description="The states judged; one left out is never entered (e.g. 'moved' on a PTZ camera).",
    )
    check_hz: float = Field(
        5.0, ge=0.1, le=60, description="Checks per second per camera (the newest frame at each check)."
    )
    hold_s: float = Field(
        2.0, ge=0, le=3600, description="A condition must hold this long before a state is entered or left."
    )
    dark_enter: float = Field(35.0, ge=0, le=255, description="Too dark below this mean brightness (0-255).")
    dark_leave: float = Field(50.0, ge=0, le=255, description="No longer dark above this mean brightness.")
    bright_enter: float = Field(225.0, ge=0, le=255, description="Too bright above this mean brightness.")
    bright_leave: float = Field(210.0, ge=0, le=255, description="No longer too bright below this.")
    covered_enter: float = Field(
        6.0, ge=0, le=128, description="Covered or blank below this brightness standard deviation."
    )
    covered_leave: float = Field(10.0, ge=0, le=128, description="No longer covered above this deviation.")
    blur_enter: float = Field(
        0.15,
        ge=0,
        le=100,
        description="Blurred below this sharpness (variance of the Laplacian over the variance, subsampled).",
    )
    blur_leave: float = Field(0.3, ge=0, le=100, description="No longer blurred above this sharpness.")
    frozen_s: float = Field(
        10.0, ge=0.1, le=86400, description="Frozen after identical frames for this many seconds."
    )
    frozen_delta: float = Field(
        0.1, ge=0, le=255, description="Frames differing by at most this mean absolute level are identical."
    )
    moved_enter: float = Field(
        0.5, ge=-1, le=1, description="View moved below this correlation with the reference view."
    )
    moved_leave: float = Field(0.7, ge=-1, le=1, description="View back above this correlation.")
    sources: dict[str, TamperSourceConfig] = Field(
        default_factory=dict,
        description="Per camera (by source name): options that replace the ones above for that camera only.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> TamperConfig:
        problem = _hysteresis_problem(self.model_dump())
        if problem:
            raise ValueError(problem)
        for name, override in self.sources.items():
            problem = _hysteresis_problem(self._merged(override))
            if problem:
                raise ValueError(f"sources.{name}: {problem}, with the global values for what it leaves out")
        return self

    def _merged(self, override: TamperSourceConfig) -> dict[str, Any]:
        values = self.model_dump(exclude={"sources"})
        values.update(override.model_dump(exclude_none=True))
        return values

    def for_source(self, name: str) -> TamperConfig:
        """The options of camera ``name``: the global ones with its ``sources`` entry applied."""
        override = self.sources.get(name)
        if override is None:
            return self
        return TamperConfig.model_validate(self._merged(override))


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Keep model-quality statistics of every pipeline's results.")
    short_window_s: float = Field(60.0, ge=1, le=86400, description="Span of the short window (12 buckets).")
    long_window_s: float = Field(
        3600.0, ge=1, le=7 * 86400, description="Span of the long window (60 buckets)."
    )
    low_confidence: float = Field(0.5, ge=0, le=1, description="Results below this top-1 confidence are low.")
    min_results: int = Field(
        20, ge=1, le=1_000_000, description="Results a window needs before rules judge it."
    )
    min_mean_confidence: float = Field(
        0.5, ge=0, le=1, description="monitor.low_confidence when the short window's mean is below this."
    )
    class_drop_percent: float = Field(
        80.0,
        gt=0,
        le=100,
        description="monitor.class_rate_drop when a class rate fell this much (short vs long).",
    )
    min_class_rate: float = Field(
        0.05, ge=0, le=1, description="Only classes at least this frequent in the long window are watched."
    )
    for_s: float = Field(300.0, ge=0, le=86400, description="A rule must hold this long to fire or clear.")


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True,
        description="Compare each pipeline's outputs with its model's reference (when the manifest has one).",
    )
    window: int = Field(500, ge=10, le=100_000, description="Recent results compared with the reference.")
    min_results: int = Field(100, ge=10, le=100_000, description="Results needed before a level is given.")
    input_every: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Input drift: histogram every Nth model input (when the reference has inputs).",
    )
    input_window: int = Field(
        200, ge=10, le=100_000, description="Input drift: sampled inputs compared with the reference."
    )
    input_min_samples: int = Field(
        50, ge=10, le=100_000, description="Input drift: sampled inputs needed before a level is given."
    )
    input_values: int = Field(
        256,
        ge=16,
        le=1_000_000,
        description="Input drift: at most about this many values per channel of a sampled input (strided).",
    )


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tamper: TamperConfig = Field(default_factory=TamperConfig, description="Camera health and tamper checks.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift against a reference (PSI).")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="Model-quality statistics and their rules."
    )
    capture: dict[str, CaptureConfig] = Field(
        default_factory=dict,
        description="Data capture for retraining, per pipeline name (off for pipelines without a table).",
    )
