"""Model-quality statistics per pipeline and output head over two sliding windows.

Each result adds its top-1 confidence (classification heads) or its detections (detection heads) to
the newest time bucket of a short and a long window (default 1 min in 12 buckets, 1 h in 60).
A bucket holds a count, the sum and sum of squares of the confidence, a 20-bin confidence histogram,
the low-confidence count, per-class counts (at most ``MAX_CLASSES`` classes) and the box count:
memory is bounded by buckets x (bins + classes), whatever the result rate. Quantiles are read from
the merged histogram (to a bin's width, 0.05, interpolated inside the bin).

Rules, evaluated at most once a second (ten times per short window when that is shorter), each
with the tamper checks' hysteresis:

- ``monitor.low_confidence``: the short window's mean confidence is below ``min_mean_confidence``
  for ``for_s`` seconds (and back above it for ``for_s`` to clear);
- ``monitor.class_rate_drop``: a class whose long-window rate is at least ``min_class_rate`` has a
  short-window rate ``class_drop_percent`` % lower, for ``for_s`` seconds.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.monitor.config import QualityConfig
from edge_runtime.monitor.tamper import Hysteresis

BINS = 20
MAX_CLASSES = 1000  # more labels than this are counted under "other"
HEALTH_CLASSES = 20  # class rates shown in health and Prometheus (the most frequent)
Event = Callable[[str, str, dict[str, Any]], None]


@dataclass
class Bucket:
    start: float
    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    low: int = 0
    boxes: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * BINS)
    classes: Counter[str] = field(default_factory=Counter)


class Window:
    """A sliding window of ``span_s`` seconds in ``buckets`` time buckets."""

    def __init__(self, span_s: float, buckets: int) -> None:
        self.span_s = span_s
        self.bucket_s = span_s / buckets
        self.buckets: deque[Bucket] = deque(maxlen=buckets + 1)

    def bucket(self, t: float) -> Bucket:
        if not self.buckets or t >= self.buckets[-1].start + self.bucket_s:
            start = t - (t % self.bucket_s)
            self.buckets.append(Bucket(start))
        return self.buckets[-1]

    def live(self, t: float) -> list[Bucket]:
        return [b for b in self.buckets if b.start + self.bucket_s > t - self.span_s]

    def summary(self, t: float) -> dict[str, Any]:
        live = self.live(t)
        n = sum(b.count for b in live)
        if n == 0:
            return {"results": 0}
        total = sum(b.total for b in live)
        squares = sum(b.squares for b in live)
        mean = total / n
        hist = np.sum([b.hist for b in live], axis=0)
        classes: Counter[str] = Counter()
        for b in live:
            classes.update(b.classes)
        return {
            "results": n,
            "confidence_mean": round(mean, 4),
            "confidence_std": round(max(0.0, squares / n - mean * mean) ** 0.5, 4),
            "confidence_quantiles": {f"p{q}": round(quantile(hist, q / 100), 4) for q in (5, 50, 95)},
            "low_confidence_share": round(sum(b.low for b in live) / n, 4),
            "class_rates": {k: round(v / n, 4) for k, v in sorted(classes.items())},
            "boxes_per_result": round(sum(b.boxes for b in live) / n, 4),
        }


def quantile(hist: np.ndarray[Any, Any], q: float) -> float:
    """The ``q`` quantile of values in [0, 1] counted in ``len(hist)`` equal bins."""
    total = float(hist.sum())
    if total <= 0:
        return 0.0
    cum = np.cumsum(hist)
    target = q * total
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(hist) - 1)
    before = float(cum[i - 1]) if i > 0 else 0.0
    inside = (target - before) / float(hist[i]) if hist[i] else 0.0
    return (i + min(1.0, max(0.0, inside))) / len(hist)


def observations(result: Mapping[str, Any]) -> dict[str, tuple[float | None, list[str], int]]:
    """Per head of one ``result`` object: (top-1 confidence, classes counted, boxes)."""
    if "type" in result:
        heads: dict[str, Any] = {"": result}
    else:
        heads = {k: v for k, v in result.items() if isinstance(v, Mapping) and "type" in v}
    found: dict[str, tuple[float | None, list[str], int]] = {}
    for name, head in heads.items():
        if head["type"] == "classification" and head.get("top"):
            top = head["top"][0]
            found[name] = (float(top["score"]), [str(top["label"])], 0)
        elif head["type"] == "detection":
            dets = head.get("detections") or []
            best = max((float(d["score"]) for d in dets), default=None)
            found[name] = (best, [str(d["label"]) for d in dets], len(dets))
    return found


def _top_classes(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with its ``HEALTH_CLASSES`` most frequent class rates (the health document is
    bounded; the rules see them all) and ``classes``, how many there were."""
    rates = summary.get("class_rates")
    if isinstance(rates, dict):
        summary["classes"] = len(rates)
        if len(rates) > HEALTH_CLASSES:
            top = sorted(rates.items(), key=lambda kv: (-kv[1], kv[0]))[:HEALTH_CLASSES]
            summary["class_rates"] = dict(sorted(top))
    return summary


class HeadQuality:
    """The windows and rule states of one pipeline head."""

    def __init__(self, config: QualityConfig) -> None:
        self.cfg = config
        self.short = Window(config.short_window_s, 12)
        self.long = Window(config.long_window_s, 60)
        self.low_mean = Hysteresis(config.for_s)
        self.drops: dict[str, Hysteresis] = {}

    def add(self, confidence: float | None, classes: list[str], boxes: int, t: float) -> None:
        for window in (self.short, self.long):
            b = window.bucket(t)
            b.count += 1
            b.boxes += boxes
            for cls in classes:
                b.classes[cls if cls in b.classes or len(b.classes) < MAX_CLASSES else "other"] += 1
            if confidence is not None:
                c = min(1.0, max(0.0, confidence))
                b.total += c
                b.squares += c * c
                b.hist[min(BINS - 1, int(c * BINS))] += 1
                b.low += c < self.cfg.low_confidence

    def rules(self, t: float) -> list[tuple[str, str, bool, dict[str, Any]]]:
        """Rule changes at ``t``: (event kind, message, active, fields)."""
        cfg = self.cfg
        short, long = self.short.summary(t), self.long.summary(t)
        changes: list[tuple[str, str, bool, dict[str, Any]]] = []
        if short["results"] >= cfg.min_results and "confidence_mean" in short:
            mean = short["confidence_mean"]
            if self.low_mean.update(mean < cfg.min_mean_confidence, mean >= cfg.min_mean_confidence, t):
                verb = "below" if self.low_mean.active else "back above"
                changes.append(
                    (
                        "monitor.low_confidence",
                        f"mean confidence {mean:.3f} {verb} {cfg.min_mean_confidence}",
                        self.low_mean.active,
                        {"mean_confidence": mean},
                    )
                )
        if short["results"] >= cfg.min_results and long["results"] >= cfg.min_results:
            rates, base = short["class_rates"], long["class_rates"]
            keep = 1 - cfg.class_drop_percent / 100
            for cls, long_rate in base.items():
                if long_rate < cfg.min_class_rate and cls not in self.drops:
                    continue
                rate = rates.get(cls, 0.0)
                h = self.drops.setdefault(cls, Hysteresis(cfg.for_s))
                if h.update(rate < long_rate * keep, rate >= long_rate * keep, t):
                    verb = "dropped" if h.active else "recovered"
                    changes.append(
                        (
                            "monitor.class_rate_drop",
                            f"class {cls} rate {verb}: {rate:.3f} against {long_rate:.3f}",
                            h.active,
                            {"class": cls, "rate": rate, "long_rate": long_rate},
                        )
                    )
        return changes

    def stats(self, t: float) -> dict[str, Any]:
        return {
            "short": _top_classes(self.short.summary(t)),
            "long": _top_classes(self.long.summary(t)),
            "low_mean_confidence": self.low_mean.active,
            "class_rate_drops": sorted(c for c, h in self.drops.items() if h.active),
        }


class Quality:
    """Quality statistics of every pipeline's heads, fed with the result documents."""

    def __init__(self, config: QualityConfig, event: Event) -> None:
        self.cfg = config
        self.event = event
        self.heads: dict[tuple[str, str], HeadQuality] = {}
        self._next_rules: float | None = None
        self._lock = threading.Lock()

    def observe(self, doc: Mapping[str, Any], t: float) -> None:
        """Add one result document (``pipeline``, ``result``) seen at ``t`` (monotonic seconds)."""
        with self._lock:
            self._observe(doc, t)

    def _observe(self, doc: Mapping[str, Any], t: float) -> None:
        pipeline = str(doc.get("pipeline", ""))
        for head, (conf, classes, boxes) in observations(doc.get("result") or {}).items():
            key = (pipeline, head)
            hq = self.heads.get(key)
            if hq is None:
                if len(self.heads) >= 64:
                    continue
                hq = self.heads[key] = HeadQuality(self.cfg)
            hq.add(conf, classes, boxes, t)
        if self._next_rules is None or t >= self._next_rules:
            self._next_rules = t + min(1.0, self.cfg.short_window_s / 10)
            self.evaluate(t)

    def evaluate(self, t: float) -> None:
        for (pipeline, head), hq in self.heads.items():
            for kind, message, active, fields in hq.rules(t):
                where = f"pipeline {pipeline}" + (f" head {head}" if head else "")
                self.event(
                    kind,
                    f"{where}: {message}",
                    {"pipeline": pipeline, "head": head, "active": active, **fields},
                )

    def stats(self, t: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for (pipeline, head), hq in self.heads.items():
                out.setdefault(pipeline, {})[head or "default"] = hq.stats(t)
        return out
