"""A pipeline's counters as its health entry (MQTT health, ``/api/status``): results, drops,
latency, models and, for a pipeline with several camera sources, the same per source."""

from __future__ import annotations

from typing import Any, Protocol

from edge_runtime.pipeline.fanin import RoundRobin
from edge_runtime.pipeline.runner import ModelRunner
from edge_runtime.pipeline.trigger import SingleTrigger
from edge_runtime.stats import LatencyWindow, RateMeter


class Pipeline(Protocol):
    """What is counted (:class:`edge_runtime.pipeline.pipeline.Pipeline`)."""

    results: int
    triggers: int
    skipped: int
    rate_limited: int
    paused_skips: int
    errors: int
    last_error: str
    batch: int
    single: SingleTrigger
    fan_in: RoundRobin | None
    fps_in: RateMeter
    fps_out: RateMeter
    latency: dict[str, LatencyWindow]
    runners: list[ModelRunner]
    source_results: dict[str, int]
    source_skipped: dict[str, int]

    @property
    def results_per_write(self) -> float | None: ...

    @property
    def finished(self) -> bool: ...

    @property
    def paused(self) -> bool: ...


def pipeline_stats(p: Pipeline) -> dict[str, Any]:
    """A pipeline's entry in the health report and the HTTP status."""
    return {
        "results": p.results,
        "triggers": p.triggers,
        "skipped_stale": p.skipped,
        "dropped_frames": p.single.dropped + (p.fan_in.dropped if p.fan_in else 0),
        "batch": p.batch,
        "sources": per_source(p),
        "rate_limited": p.rate_limited,
        "paused_skips": p.paused_skips,
        "results_per_write": p.results_per_write,  # mean results per outbox transaction
        "errors": p.errors,
        "last_error": p.last_error,
        "fps_in": p.fps_in.rate(),
        "fps_out": p.fps_out.rate(),
        "last_trigger_age_s": p.fps_in.last_age(),
        "last_result_age_s": p.fps_out.last_age(),
        "finished": p.finished,
        "paused": p.paused,
        "latency_ms": {k: v.percentiles() for k, v in p.latency.items()},
        "models": [
            {**r.info, "delegate": r.model.delegate, "placement": r.model.placement} for r in p.runners
        ],
    }


def per_source(p: Pipeline) -> dict[str, dict[str, int]]:
    """Per trigger source of a fan-in pipeline: frames taken, results, frames dropped (replaced
    before they were taken) and skipped (rate-limited, paused or stale)."""
    fan_in = p.fan_in
    if fan_in is None:
        return {}
    return {
        name: {
            "frames": fan_in.taken.get(name, 0),
            "results": p.source_results.get(name, 0),
            "dropped": fan_in.dropped_by.get(name, 0),
            "skipped": p.source_skipped.get(name, 0),
        }
        for name in fan_in.names
    }
