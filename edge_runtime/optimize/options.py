"""What ``edge-runtime optimize`` was asked to do (checked by :mod:`.run`, read by :mod:`.report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    """What ``edge-runtime optimize`` was asked to do."""

    model: Path
    calibration: Path
    out: Path
    config: Path | None = None
    pipeline: str | None = None
    labels: Path | None = None
    engine: str = "auto"
    io: str = "int8"
    task: str = "auto"
    min_agreement: float = 0.98
    force: bool = False
    prune: float | None = None
    calibration_share: float = 0.5
    max_samples: int = 500
    threads: int = 1
    runs: int = 200
    delegates: tuple[str, ...] = ("cpu",)
    backends: tuple[str, ...] = ("litert",)
    timeout_s: float = 600.0
