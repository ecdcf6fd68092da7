"""Latency histograms of every pipeline, from the results' ``latency_ms`` (cumulative since the
monitor started, like a Prometheus histogram: they can be summed across devices, which the quantile
gauges of the health document cannot)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping
from typing import Any

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGES = ("pre", "invoke", "post", "total")
MAX_PIPELINES = 64


class LatencyHistograms:
    """Per pipeline and stage: bucket counts (upper bounds ``BUCKETS_S``, then +Inf), sum, count."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], list[float]] = {}  # counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, doc: Mapping[str, Any]) -> None:
        latency = doc.get("latency_ms")
        if not isinstance(latency, Mapping):
            return
        pipeline = str(doc.get("pipeline", ""))
        with self._lock:
            for stage in STAGES:
                ms = latency.get(stage)
                if not isinstance(ms, int | float):
                    continue
                key = (pipeline, stage)
                row = self._data.get(key)
                if row is None:
                    if len(self._data) >= MAX_PIPELINES * len(STAGES):
                        continue
                    row = self._data[key] = [0.0] * (len(BUCKETS_S) + 2)
                seconds = float(ms) / 1000.0
                row[bisect.bisect_left(BUCKETS_S, seconds)] += 1
                row[-1] += seconds

    def stats(self) -> dict[str, Any]:
        """``{pipeline: {stage: {"buckets": [[le, cumulative count], ...], "sum_s", "count"}}}``."""
        out: dict[str, Any] = {}
        with self._lock:
            rows = {k: list(v) for k, v in self._data.items()}
        for (pipeline, stage), row in rows.items():
            cumulative, buckets = 0.0, []
            for le, n in zip((*BUCKETS_S, float("inf")), row[:-1], strict=True):
                cumulative += n
                buckets.append(["+Inf" if le == float("inf") else le, int(cumulative)])
            out.setdefault(pipeline, {})[stage] = {
                "buckets": buckets,
                "sum_s": round(row[-1], 6),
                "count": int(cumulative),
            }
        return out
