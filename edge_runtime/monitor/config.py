"""The ``[monitor]`` section: camera health and tamper checks (on by default: they cost well under
a millisecond per check, measured in ``docs/monitoring.md``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_runtime.monitor.capture import CaptureConfig


class TamperConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="Check every camera for darkness, glare, blur, freeze, cover, moves."
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

    @model_validator(mode="after")
    def _hysteresis(self) -> TamperConfig:
        pairs = (
            ("dark_enter", "dark_leave", 1),
            ("bright_enter", "bright_leave", -1),
            ("covered_enter", "covered_leave", 1),
            ("blur_enter", "blur_leave", 1),
            ("moved_enter", "moved_leave", 1),
        )
        for enter, leave, sign in pairs:
            a, b = getattr(self, enter), getattr(self, leave)
            if sign * (b - a) < 0:
                raise ValueError(
                    f"{leave} must be {'at least' if sign > 0 else 'at most'} {enter} (hysteresis)"
                )
        return self


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
