"""Model-quality statistics on the real digits model and its real held-out set: the windows agree
with the results the daemon emitted; the rules fire when the same digits arrive rotated and stay
quiet on the held-out stream; memory stays bounded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.daemon import digits_model
from devkit.paths import MODELS
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video
from edge_runtime.monitor.config import QualityConfig
from edge_runtime.monitor.quality import BINS, Quality, Window, quantile
from edge_runtime.reporting.metrics import families

pytest.importorskip("cv2")
FPS = 100.0


class Collect:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def publish(self, result: dict[str, Any]) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


def digits_config(tmp_path: Path, video: Path, quality: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": {"id": "test", "state_dir": str(tmp_path / "state")},
        "mqtt": {"enabled": False},
        "http": {"enabled": False},
        "monitor": {"quality": quality},
        "sources": {"camera": {"type": "camera", "uri": str(video), "realtime": True}},
        "pipelines": [
            {
                "name": "digits",
                "trigger": "camera",
                "models": [digits_model()],
            }
        ],
    }


def run(
    tmp_path: Path, images: list[np.ndarray[Any, Any]], quality: dict[str, Any]
) -> tuple[Service, Collect, list[tuple[str, dict[str, Any]]]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    video = tmp_path / "digits.avi"
    write_digits_video(video, images, fps=FPS)
    sink = Collect()
    service = Service(validate(digits_config(tmp_path, video, quality), tmp_path), [sink], duration_s=60)
    events: list[tuple[str, dict[str, Any]]] = []
    service.monitor.event = lambda kind, message, fields: events.append((kind, fields))
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished", service.stop_reason
    return service, sink, events


RULES = {
    "short_window_s": 1.0,
    "long_window_s": 60.0,
    "for_s": 0.3,
    "min_results": 20,
    "min_mean_confidence": 0.95,
    "class_drop_percent": 80.0,
}


def heldout() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        return data["images"], data["labels"]


def test_the_heldout_stream_matches_its_results_and_fires_no_rule(tmp_path: Path) -> None:
    images, _ = heldout()
    service, sink, events = run(tmp_path, list(images), RULES)
    assert len(sink.results) >= 400
    assert [k for k, _ in events if k.startswith("monitor.")] == []
    assert service.health is not None
    doc = service.health.report(mark=False)
    long = doc["monitor"]["quality"]["digits"]["default"]["long"]
    scores = [r["result"]["top"][0]["score"] for r in sink.results]
    labels = Counter(r["result"]["top"][0]["label"] for r in sink.results)
    assert long["results"] == len(scores)
    assert long["confidence_mean"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert long["confidence_std"] == pytest.approx(np.std(scores), abs=1e-3)
    assert long["class_rates"] == {k: round(v / len(scores), 4) for k, v in sorted(labels.items())}
    assert long["low_confidence_share"] == round(sum(s < 0.5 for s in scores) / len(scores), 4)
    assert abs(long["confidence_quantiles"]["p50"] - float(np.median(scores))) <= 1 / BINS
    names = {m.name for m in families(doc)}
    assert {"edge_runtime_quality_confidence_mean", "edge_runtime_quality_class_rate"} <= names


def test_rotated_digits_fire_the_low_confidence_and_class_drop_rules(tmp_path: Path) -> None:
    images, _ = heldout()
    rotated = [np.ascontiguousarray(np.rot90(i)) for i in images]
    service, sink, events = run(tmp_path, list(images) + rotated + rotated, RULES)
    monitor = [(k, f) for k, f in events if k.startswith("monitor.")]
    assert ("monitor.low_confidence", True) in [(k, f["active"]) for k, f in monitor], monitor
    dropped = {f["class"] for k, f in monitor if k == "monitor.class_rate_drop" and f["active"]}
    first = Counter(
        r["result"]["top"][0]["label"] for r in sink.results if r["trigger"]["seq"] <= len(images)
    )
    second = Counter(
        r["result"]["top"][0]["label"] for r in sink.results if r["trigger"]["seq"] > len(images)
    )
    n1, n2 = sum(first.values()), sum(second.values())
    # the rule compares with the long window, which holds both halves: 80 % below their mean rate
    # is 0.2 * (r1 + r2) / 2, so a class whose rate fell below a tenth surely fired
    gone = {c for c, k in first.items() if k / n1 >= 0.05 and second[c] / n2 < 0.1 * k / n1}
    assert len(gone) >= 4 and gone <= dropped, (gone, monitor)  # the classes the rotation removes
    assert service.health is not None
    q = service.health.report(mark=False)["monitor"]["quality"]["digits"]["default"]
    assert q["low_mean_confidence"] is True
    assert q["short"]["confidence_mean"] < 0.95 < q["long"]["confidence_mean"] + 0.05
    assert len(sink.results) >= 1200


def test_windows_stay_bounded_and_quantiles_read_the_histogram() -> None:
    window = Window(60.0, 12)
    q = Quality(QualityConfig(short_window_s=60, long_window_s=3600), lambda *a: None)
    rng = np.random.default_rng(0)
    for i in range(20000):  # 20000 results over 10 hours
        t = i * 1.8
        window.bucket(t).count += 1
        q.observe(
            {
                "pipeline": "p",
                "result": {
                    "type": "classification",
                    "top": [{"label": str(i % 7), "score": float(rng.random())}],
                },
            },
            t,
        )
    assert len(window.buckets) <= 13
    hq = q.heads[("p", "")]
    assert len(hq.short.buckets) <= 13 and len(hq.long.buckets) <= 61
    hist = np.array([0] * 10 + [10] + [0] * 9)
    assert quantile(hist, 0.5) == pytest.approx(0.525)
    many = Quality(QualityConfig(), lambda *a: None)
    for i in range(5000):  # a 1000-class model: health shows the 20 most frequent
        many.observe(
            {
                "pipeline": "m",
                "result": {"type": "classification", "top": [{"label": str(i % 1000), "score": 0.9}]},
            },
            i * 0.01,
        )
    long = many.stats(50.0)["m"]["default"]["long"]
    assert long["classes"] == 1000 and len(long["class_rates"]) == 20
    s = hq.stats(20000 * 1.8)["long"]
    assert s["results"] == pytest.approx(2000, abs=40)
    assert s["confidence_quantiles"]["p50"] == pytest.approx(0.5, abs=0.05)


def test_the_daemon_reports_drift_against_the_manifest_reference(tmp_path: Path) -> None:
    """The bundled digits model's manifest carries a reference (tools/monitor_reference.py): the
    held-out stream through camera, pipeline and emit stays ok; then the rotated digits drift."""
    images, _ = heldout()
    rotated = [np.ascontiguousarray(np.rot90(i)) for i in images]
    quiet = {**RULES, "min_mean_confidence": 0.0}
    service, _, events = run(tmp_path / "a", list(images), quiet)
    assert service.health is not None
    report = service.health.report(mark=False)["monitor"]["drift"]["digits"]
    assert report["level"] == "ok" and report["psi"] < 0.1, report
    assert [f for k, f in events if k == "monitor.drift"] == []
    service, _, events = run(tmp_path / "b", list(images) + rotated, quiet)
    drift = [f for k, f in events if k == "monitor.drift"]
    assert drift and drift[-1]["level"] == "drift", drift
    assert service.health is not None
    doc = service.health.report(mark=False)
    assert doc["monitor"]["drift"]["digits"]["level"] == "drift"
    levels = [s.value for m in families(doc) if m.name == "edge_runtime_drift_level" for s in m.samples]
    assert levels == [2.0]
