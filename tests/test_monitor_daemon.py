"""Tamper monitoring in the running daemon: a real camera file, the real digits model; the
``source.tamper`` events, the health section and the Prometheus families."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.daemon import digits_model
from devkit.media import noisy, scene, write_video
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.reporting.metrics import families

cv2 = pytest.importorskip("cv2")


class Collect:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def publish(self, result: dict[str, Any]) -> None:
        with self._lock:
            self.results.append(result)

    def close(self) -> None:
        pass


def config(tmp_path: Path, video: Path, monitor: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": {"id": "test", "state_dir": str(tmp_path / "state")},
        "mqtt": {"enabled": False},
        "http": {"enabled": False},
        "monitor": monitor,
        "sources": {"camera": {"type": "camera", "uri": str(video), "realtime": True}},
        "pipelines": [
            {
                "name": "digits",
                "trigger": "camera",
                "models": [digits_model()],
            }
        ],
    }


def test_the_daemon_reports_a_covered_camera_in_events_health_and_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = scene(1)
    frames = [noisy(base, rng) for _ in range(20)]
    frames += [noisy(np.full_like(base, 6), rng, 1.5) for _ in range(30)]
    frames += [noisy(base, rng) for _ in range(20)]
    video = write_video(tmp_path / "cover.avi", frames, 20.0)
    monitor = {"tamper": {"hold_s": 0.3, "check_hz": 20}}
    sink = Collect()
    service = Service(validate(config(tmp_path, video, monitor), tmp_path), [sink], duration_s=60)
    events: list[tuple[str, dict[str, Any]]] = []
    service.monitor.event = lambda kind, message, fields: events.append((kind, fields))
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished", service.stop_reason
    assert len(sink.results) >= 60
    tamper = [(f["source"], f["state"], f["active"]) for kind, f in events if kind == "source.tamper"]
    assert ("camera", "covered", True) in tamper and ("camera", "covered", False) in tamper, tamper
    assert service.health is not None
    doc = service.health.report(mark=False)
    cam = doc["monitor"]["tamper"]["camera"]
    # checked often enough to enter and leave `covered` (above), never more often than there were
    # frames: each frame is checked once or counted as skipped (how many a loaded machine skips varies)
    assert not any(cam["states"].values()), cam
    assert cam["checks"] >= 10 and cam["checks"] + cam["skipped"] <= len(frames), cam
    metrics = {m.name: m for m in families(doc)}
    samples = {(s.labels.get("state"), s.value) for s in metrics["edge_runtime_source_tamper"].samples}
    assert ("covered", 0.0) in samples and len(samples) == 6
    assert metrics["edge_runtime_monitor_checks"].samples[0].value == cam["checks"]


@pytest.mark.parametrize("off", ["tamper", "quality"])
def test_each_part_can_be_turned_off(tmp_path: Path, off: str) -> None:
    rng = np.random.default_rng(2)
    video = write_video(tmp_path / "plain.avi", [noisy(scene(1), rng) for _ in range(10)], 20.0)
    monitor = {off: {"enabled": False}}
    service = Service(validate(config(tmp_path, video, monitor), tmp_path), [Collect()], duration_s=60)
    service.run(install_signals=False)
    assert service.health is not None
    doc = service.health.report(mark=False)["monitor"]
    if off == "tamper":
        assert doc["tamper"] == {} and doc["quality"]["digits"]["default"]["long"]["results"] == 10
    else:
        assert doc["quality"] is None and doc["tamper"]["camera"]["checks"] >= 1


def test_latency_histograms_count_every_result_and_render_for_prometheus(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    rng = np.random.default_rng(4)
    video = write_video(tmp_path / "plain.avi", [noisy(scene(1), rng) for _ in range(40)], 40.0)
    sink = Collect()
    data = config(tmp_path, video, {})
    data["sources"]["camera"]["realtime"] = False  # lock-step: every frame gives a result
    service = Service(validate(data, tmp_path), [sink], duration_s=60)
    service.run(install_signals=False)
    assert service.health is not None
    doc = service.health.report(mark=False)
    total = doc["monitor"]["latency_histograms"]["digits"]["total"]
    assert total["count"] == len(sink.results) == 40
    assert total["sum_s"] == pytest.approx(
        sum(r["latency_ms"]["total"] for r in sink.results) / 1000, rel=1e-3
    )
    counts = [n for _, n in total["buckets"]]
    assert counts == sorted(counts) and total["buckets"][-1] == ["+Inf", 40]

    class Fixed:
        def collect(self) -> Any:
            return families(doc)

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    name = "edge_runtime_pipeline_latency_histogram_seconds"
    assert f'{name}_bucket{{le="+Inf",pipeline="digits",stage="total"}} 40.0' in text
    assert (
        'edge_runtime_pipeline_latency_histogram_seconds_count{pipeline="digits",stage="invoke"} 40.0' in text
    )
