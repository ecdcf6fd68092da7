"""Data capture for retraining: the per-pipeline config, the rules and the budgets (pure).

A result is a candidate when any configured rule matches it (:func:`reasons`): ``low_confidence``,
``near_threshold``, ``classes``, ``random``, ``drift`` (the pipeline's drift level is active) or
``command`` (a ``capture.now`` armed it). A candidate is stored only when :class:`Budget` allows it:
at most ``per_minute`` captures in any 60 s, ``per_hour`` in any 3600 s and ``per_day`` in any
86400 s (sliding windows over the capture times, with an injectable clock; seeded at start from
the samples already on disk, so a restart does not reset them). The disk side is
:mod:`.capture_store`, the thread :mod:`.capture_worker`.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


class CaptureConfig(BaseModel):
    """``[monitor.capture.<pipeline>]``: what of one pipeline's results to keep for retraining."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Capture this pipeline's results by the rules below.")
    low_confidence: float | None = Field(
        None, ge=0, le=1, description="Capture when a score (top-1, or any detection) is below this."
    )
    near_threshold: float | None = Field(
        None, ge=0, le=1, description="Capture when a score is within near_margin of this value."
    )
    near_margin: float = Field(0.05, ge=0, le=1, description="The margin of near_threshold.")
    classes: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Capture when the top-1 label (or any detection's label) is one of these.",
    )
    random: float = Field(0.0, ge=0, le=1, description="Capture this share of all results at random.")
    drift: bool = Field(False, description="Capture while the pipeline's drift level is watch or drift.")
    per_minute: int = Field(10, ge=0, le=10_000, description="At most this many captures in any 60 s.")
    per_hour: int = Field(100, ge=0, le=100_000, description="At most this many captures in any hour.")
    per_day: int = Field(1000, ge=0, le=100_000, description="At most this many captures in any 24 h.")
    quota_bytes: int = Field(
        100 * 1024 * 1024,
        ge=16 * 1024,
        le=1 << 40,
        description="Bytes of samples kept on disk for this pipeline; the oldest go first.",
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of captured frames.")


def scores_and_labels(result: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """The scores and labels a rule looks at: the top-1 of a classification, every detection of a
    detection result (heads of a multi-head result together)."""
    body = result.get("result")
    if not isinstance(body, Mapping):
        return [], []
    parts = [body] if "type" in body else [v for v in body.values() if isinstance(v, Mapping)]
    scores: list[float] = []
    labels: list[str] = []
    for part in parts:
        if part.get("type") == "classification":
            top = part.get("top") or []
            items = top[:1]
        else:
            items = part.get("detections") or []
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("score"), int | float):
                scores.append(float(item["score"]))
                labels.append(str(item.get("label", "")))
    return scores, labels


def reasons(
    config: CaptureConfig,
    result: Mapping[str, Any],
    *,
    drift_active: bool = False,
    commanded: bool = False,
    draw: Callable[[], float] = random.random,
) -> list[str]:
    """The rules ``result`` matches (empty: not a candidate)."""
    found = ["command"] if commanded else []
    if not config.enabled:
        return found
    scores, labels = scores_and_labels(result)
    if config.low_confidence is not None and any(s < config.low_confidence for s in scores):
        found.append("low_confidence")
    near = config.near_threshold
    if near is not None and any(abs(s - near) <= config.near_margin for s in scores):
        found.append("near_threshold")
    if config.classes and any(label in config.classes for label in labels):
        found.append("class")
    if config.drift and drift_active:
        found.append("drift")
    if config.random > 0 and draw() < config.random:
        found.append("random")
    return found


class Budget:
    """Captures per minute, hour and day over sliding windows (exact: a capture is taken or not
    under the lock; :meth:`give_back` returns one that was not stored)."""

    def __init__(self, config: CaptureConfig, clock: Callable[[], float] = time.time) -> None:
        self.limits = ((MINUTE, config.per_minute), (HOUR, config.per_hour), (DAY, config.per_day))
        self.clock = clock
        self._times: dict[float, deque[float]] = {span: deque() for span, _ in self.limits}
        self._lock = threading.Lock()

    def seed(self, times: Iterable[float]) -> None:
        """Count captures made before (their wall-clock times), e.g. the samples on disk."""
        now = self.clock()
        with self._lock:
            for t in sorted(times):
                for span, _ in self.limits:
                    if now - span < t <= now:
                        self._times[span].append(t)

    def _trim(self, now: float) -> None:
        for span, _ in self.limits:
            q = self._times[span]
            while q and q[0] <= now - span:
                q.popleft()

    def take(self) -> float | None:
        """The capture time when one more capture fits every window, else None."""
        with self._lock:
            now = self.clock()
            self._trim(now)
            if any(len(self._times[span]) >= limit for span, limit in self.limits):
                return None
            for span, _ in self.limits:
                self._times[span].append(now)
            return now

    def give_back(self, t: float) -> None:
        """Forget the capture taken at ``t`` (it was dropped before it was stored)."""
        with self._lock:
            for q in self._times.values():
                with contextlib.suppress(ValueError):
                    q.remove(t)

    def used(self) -> dict[str, int]:
        with self._lock:
            self._trim(self.clock())
            names = {MINUTE: "minute", HOUR: "hour", DAY: "day"}
            return {names[span]: len(self._times[span]) for span, _ in self.limits}
