"""Prometheus families of the health document's ``monitor`` section (camera tamper, model quality;
``edge_runtime.monitor``), kept apart from :mod:`.metrics` to keep that module small."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Families(Protocol):
    """What :class:`edge_runtime.reporting.metrics._Families` offers."""

    def gauge(self, name: str, doc: str, value: Any, **labels: str) -> None: ...

    def counter(self, name: str, doc: str, value: Any, **labels: str) -> None: ...

    def histogram(
        self, name: str, doc: str, buckets: list[tuple[str, float]], total: float, **labels: str
    ) -> None: ...


def monitor_families(f: Families, monitor: Mapping[str, Any]) -> None:
    """The ``monitor`` section of the health document (``edge_runtime.monitor``)."""
    for name, cam in (monitor.get("tamper") or {}).items():
        for state, active in (cam.get("states") or {}).items():
            f.gauge(
                "source_tamper",
                "1 while the camera is in this tamper state.",
                active,
                source=name,
                state=state,
            )
        f.gauge(
            "source_brightness",
            "Mean brightness of the last checked frame (0-255).",
            cam.get("brightness"),
            source=name,
        )
        f.gauge(
            "source_contrast",
            "Brightness standard deviation of the last checked frame.",
            cam.get("contrast"),
            source=name,
        )
        f.gauge(
            "source_sharpness",
            "Sharpness of the last checked frame (Laplacian variance / variance).",
            cam.get("sharpness"),
            source=name,
        )
        f.gauge(
            "source_view_correlation",
            "Correlation of the view with its reference (1 = unmoved).",
            cam.get("view_correlation"),
            source=name,
        )
        f.gauge(
            "source_frozen_seconds",
            "Seconds the camera has shown the same frame.",
            cam.get("frozen_s"),
            source=name,
        )
        f.counter("monitor_checks", "Frames checked for tamper.", cam.get("checks"), source=name)
        f.counter(
            "monitor_skipped_frames",
            "Frames the tamper checks did not look at.",
            cam.get("skipped"),
            source=name,
        )
        for stat in ("mean", "max"):
            ms = cam.get(f"check_ms_{stat}")
            f.gauge(
                f"monitor_check_{stat}_seconds",
                f"{stat.capitalize()} time of one tamper check since start.",
                None if ms is None else float(ms) / 1000.0,
                source=name,
            )
    f.counter("monitor_behind", "Monitor rounds that overran their period.", monitor.get("behind"))
    for pipeline, heads in (monitor.get("quality") or {}).items():
        for head, q in heads.items():
            for window in ("short", "long"):
                w = q.get(window) or {}
                labels = {"pipeline": pipeline, "head": head, "window": window}
                f.gauge("quality_results", "Results in the window.", w.get("results"), **labels)
                f.gauge(
                    "quality_confidence_mean", "Mean top-1 confidence.", w.get("confidence_mean"), **labels
                )
                f.gauge(
                    "quality_confidence_std",
                    "Std of the top-1 confidence.",
                    w.get("confidence_std"),
                    **labels,
                )
                f.gauge(
                    "quality_low_confidence_share",
                    "Share of results below the low-confidence threshold.",
                    w.get("low_confidence_share"),
                    **labels,
                )
                f.gauge(
                    "quality_boxes_per_result", "Detections per result.", w.get("boxes_per_result"), **labels
                )
                f.gauge("quality_classes", "Distinct classes seen in the window.", w.get("classes"), **labels)
                for qname, value in (w.get("confidence_quantiles") or {}).items():
                    quantile = str(float(qname.removeprefix("p")) / 100)
                    f.gauge(
                        "quality_confidence_quantile",
                        "Top-1 confidence quantiles (20-bin histogram).",
                        value,
                        **labels,
                        quantile=quantile,
                    )
                for cls, rate in (w.get("class_rates") or {}).items():
                    f.gauge(
                        "quality_class_rate",
                        "Share of results (or boxes) of this class.",
                        rate,
                        **labels,
                        cls=cls,
                    )
            f.gauge(
                "quality_low_mean_confidence",
                "1 while the low-confidence rule is active.",
                q.get("low_mean_confidence"),
                pipeline=pipeline,
                head=head,
            )
            f.gauge(
                "quality_class_rate_drops",
                "Classes whose rate dropped (rule active).",
                len(q.get("class_rate_drops") or []),
                pipeline=pipeline,
                head=head,
            )
    levels = {"ok": 0, "watch": 1, "drift": 2}
    for pipeline, report in (monitor.get("drift") or {}).items():
        parts = [("", report), *((f"{h}.", r) for h, r in (report.get("heads") or {}).items())]
        for prefix, part in parts:
            for kind in sorted(k for k in part if k.startswith("psi_")):
                f.gauge(
                    "drift_psi",
                    "Population stability index of the outputs against the model's reference.",
                    part.get(kind),
                    pipeline=pipeline,
                    kind=prefix + kind.removeprefix("psi_"),
                )
        f.gauge(
            "drift_results", "Results in the live drift window.", report.get("results"), pipeline=pipeline
        )
        f.gauge(
            "drift_level",
            "Drift level: 0 ok, 1 watch, 2 drift (absent until enough results).",
            levels.get(str(report.get("level"))),
            pipeline=pipeline,
        )
        inputs = report.get("input") or {}
        for name, part in (inputs.get("inputs") or {}).items():
            f.gauge(
                "input_drift_psi",
                "PSI of the sampled model input against the reference (worst channel or statistic).",
                part.get("psi"),
                pipeline=pipeline,
                input=name,
            )
        f.gauge(
            "input_drift_level",
            "Input drift level: 0 ok, 1 watch, 2 drift (absent until enough sampled inputs).",
            levels.get(str(inputs.get("level"))),
            pipeline=pipeline,
        )
    for pipeline, stages in (monitor.get("latency_histograms") or {}).items():
        for stage, h in stages.items():
            buckets = [(str(le), float(n)) for le, n in h["buckets"]]
            f.histogram(
                "pipeline_latency_histogram_seconds",
                "Latency per stage since start (cumulative buckets; aggregate across devices with rate()).",
                buckets,
                float(h["sum_s"]),
                pipeline=pipeline,
                stage=stage,
            )
    _capture_families(f, monitor)


def _capture_families(f: Families, monitor: Mapping[str, Any]) -> None:
    """``monitor.capture``: data capture per pipeline."""
    for pipeline, c in (monitor.get("capture") or {}).items():
        f.gauge("capture_samples", "Captured samples on disk.", c.get("samples"), pipeline=pipeline)
        f.gauge("capture_bytes", "Bytes of captured samples on disk.", c.get("bytes"), pipeline=pipeline)
        f.gauge("capture_quota_bytes", "The capture disk quota.", c.get("quota_bytes"), pipeline=pipeline)
        for key, doc in (
            ("stored", "Samples captured and written."),
            ("evicted", "Samples removed (the oldest first) to stay in the quota."),
            ("dropped_behind", "Samples dropped because the capture thread was behind."),
            ("dropped_budget", "Samples dropped by the per-minute/hour/day budgets."),
            ("dropped_quota", "Samples dropped as larger than the whole quota."),
            ("errors", "Samples that could not be written."),
        ):
            f.counter(f"capture_{key}", doc, c.get(key), pipeline=pipeline)
