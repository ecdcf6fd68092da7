"""The pipeline's three stages inside a real service: order and numbering under back-pressure,
and a stage thread that keeps crashing taking the daemon down with status 1."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video


class Sink:
    """Collects results; sleeps ``delay`` s in each (a slow consumer) or raises at result ``fail_at``."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.results: list[dict[str, Any]] = []
        self.delay = delay
        self.fail_at = fail_at

    def publish(self, result: dict[str, Any]) -> None:
        if self.fail_at is not None and len(self.results) + 1 >= self.fail_at:
            raise RuntimeError("sink broke")
        time.sleep(self.delay)
        self.results.append(result)

    def close(self) -> None:
        pass


def _service(tmp_path: Path, sink: Sink, n: int, realtime: bool) -> Service:
    with np.load(MODELS / "digits_heldout.npz") as data:
        images = data["images"][:n]
    write_digits_video(tmp_path / "digits.avi", list(images), fps=30.0)
    config = validate(
        {
            "device": {"id": "stages", "state_dir": str(tmp_path / "state")},
            "mqtt": {"enabled": False},
            "sources": {
                "camera": {"type": "camera", "uri": str(tmp_path / "digits.avi"), "realtime": realtime}
            },
            "pipelines": [
                {
                    "name": "digits",
                    "trigger": "camera",
                    "models": [
                        {
                            "path": str(MODELS / "digits_int8.tflite"),
                            "inputs": [
                                {
                                    "kind": "image",
                                    "source": "camera",
                                    "resize": "crop",
                                    "color": "gray",
                                    "std": 255.0,
                                }
                            ],
                            "postprocess": {"type": "classification", "top_k": 1},
                        }
                    ],
                }
            ],
        },
        tmp_path,
    )
    return Service(config, [sink], duration_s=120)


def test_a_slow_consumer_slows_the_stages_down_and_loses_nothing(tmp_path: Path) -> None:
    sink = Sink(delay=0.02)  # much slower than the model: the hand-off queues fill up
    service = _service(tmp_path, sink, 60, realtime=False)
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished"
    assert [r["seq"] for r in sink.results] == list(range(1, 61)), "every frame once, numbered in order"
    assert [r["trigger"]["seq"] for r in sink.results] == list(range(1, 61))
    pipeline = service.pipelines[0]
    assert pipeline.results == pipeline.handed_over == 60
    for r in sink.results:
        latency = r["latency_ms"]
        assert latency["total"] >= latency["pre"] + latency["invoke"] + latency["post"] - 0.01


def test_a_result_thread_that_keeps_crashing_stops_the_daemon_with_status_1(tmp_path: Path) -> None:
    """Each crash is restarted (the result in hand is lost, the next one handled); a thread that
    crashes more than the supervisor allows is given up: the watchdog is no longer fed and the
    daemon exits with status 1 for the service manager to restart it."""
    sink = Sink(fail_at=5)
    service = _service(tmp_path, sink, 300, realtime=True)
    runner = threading.Thread(target=service.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        assert wait_until(service.stop_event.is_set, 60), "the daemon goes on with a crashing result stage"
        assert "thread results-digits cannot be restarted" in service.stop_reason
        assert [r["seq"] for r in sink.results] == [1, 2, 3, 4]
    finally:
        service.stop("test over")
        runner.join(30)
    assert not runner.is_alive()
    assert service.exit_code == 1
