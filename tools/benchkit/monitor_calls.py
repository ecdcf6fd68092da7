"""Parts 1 and 3 of ``tools/bench.py --monitoring`` (:mod:`benchkit.monitoring`): the per-call
costs of the monitor's pieces and the memory a :class:`Monitor` holds, measured in this process."""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchkit.common import MODEL_PATHS

LABELS = [str(i) for i in range(10)]


# -- 1. per-call costs --------------------------------------------------------------------------


def result_doc(i: int, sha256: str = "") -> dict[str, Any]:
    """A classification result document as the daemon emits it (10 classes, top-1 cycling)."""
    label = LABELS[i % len(LABELS)]
    return {
        "v": 1,
        "device": "bench",
        "pipeline": "bench",
        "seq": i,
        "ts": 0.0,
        "frame_ts": 0.0,
        "model": {"name": "digits_int8", "sha256": sha256, "version": "1"},
        "latency_ms": {"pre": 0.4, "invoke": 0.1, "post": 0.05, "total": 0.6},
        "result": {
            "type": "classification",
            "top": [{"index": int(label), "label": label, "score": 0.75 + 0.02 * (i % 10)}],
            "event": False,
            "event_labels": [],
        },
    }


def _digits_reference() -> dict[str, Any]:
    from edge_runtime.monitor.drift import manifest_reference

    ref = manifest_reference(MODEL_PATHS["digits"])
    if ref is None:
        raise RuntimeError(f"{MODEL_PATHS['digits']}: no monitor_reference in its manifest")
    return ref


def _digits_inputs(count: int) -> list[npt.NDArray[Any]]:
    """Digits inputs as the pipeline feeds them (int8, [1, 8, 8, 1]), from the held-out set."""
    from edge_runtime.monitor.inputdrift import as_fed
    from edge_runtime.runtime.model import Model

    model = Model(MODEL_PATHS["digits"])
    spec = model.inputs[0]
    with np.load(MODEL_PATHS["digits"].parent / "digits_heldout.npz") as data:
        images = np.asarray(data["images"][:count], dtype=np.float64) / 255.0
    fed = as_fed(images.reshape((len(images), *spec.shape[1:])), spec)
    return [fed[i : i + 1] for i in range(len(fed))]


def _mobilenet_case() -> tuple[list[dict[str, Any]], list[npt.NDArray[Any]]] | None:
    """A 224x224x3 input reference (from real scenes: mobilenet has no held-out set) and inputs."""
    import cv2

    from devkit.media import scene
    from edge_runtime.monitor.inputdrift import as_fed, input_reference
    from edge_runtime.runtime.model import Model

    path = MODEL_PATHS["mobilenet"]
    if not path.is_file():
        return None
    spec = Model(path).inputs[0]
    frames = np.stack([cv2.resize(scene(s), (224, 224)) for s in range(8)]) / 127.5 - 1.0
    fed = as_fed(frames, spec)
    return [input_reference(fed, name="image", position=0)], [fed[i : i + 1] for i in range(len(fed))]


class _Capture:
    """A pipeline as the capture sees it (:class:`~edge_runtime.monitor.capture_worker.Hooked`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capture: Callable[..., None] | None = None


def micro(repeats: int = 7, calls: int = 300) -> tuple[dict[str, float], dict[str, list[float]], list[str]]:
    """µs per call of each case: ``repeats`` rounds, each timing ``calls`` calls of every case in
    turn; per case the median round. Returns (medians, every round, notes)."""
    from devkit.media import noisy, scene
    from edge_runtime.monitor.capture import CaptureConfig
    from edge_runtime.monitor.capture_worker import Capturer
    from edge_runtime.monitor.config import MonitorConfig, QualityConfig, TamperConfig
    from edge_runtime.monitor.drift import output_drift
    from edge_runtime.monitor.inputdrift import LiveInputDrift
    from edge_runtime.monitor.quality import Quality
    from edge_runtime.monitor.service import Monitor, Reference
    from edge_runtime.monitor.tamper import TamperDetector

    notes: list[str] = []
    rng = np.random.default_rng(5)
    frames = [noisy(scene(1), rng) for _ in range(8)]
    docs = [result_doc(i) for i in range(100)]
    ref = _digits_reference()
    digits_in = _digits_inputs(64)

    def quiet(kind: str, message: str, data: dict[str, Any]) -> None:
        return None

    detector = TamperDetector(TamperConfig())
    quality = Quality(QualityConfig(), quiet)
    drift = output_drift(ref)
    live_digits = LiveInputDrift(ref["inputs"], every=1)
    monitor = Monitor(quiet)
    monitor.start(
        MonitorConfig.model_validate({"tamper": {"enabled": False}}),
        {},
        {"bench": Reference(ref, "0" * 64)},
    )
    clock = [0.0]

    def tamper(j: int) -> None:
        clock[0] += 0.2
        detector.update(frames[j % 8], clock[0])

    def quality_observe(j: int) -> None:
        clock[0] += 0.001
        quality.observe(docs[j % 100], clock[0])

    def drift_observe(j: int) -> None:
        drift.observe(docs[j % 100]["result"])

    def input_digits(j: int) -> None:
        if live_digits.due():
            live_digits.add(0, digits_in[j % len(digits_in)])

    def monitor_observe(j: int) -> None:
        monitor.observe(docs[j % 100])

    cases: dict[str, Callable[[int], None]] = {
        "tamper check 640x480": tamper,
        "quality observe": quality_observe,
        "output drift observe": drift_observe,
        "input drift sample, digits 8x8x1": input_digits,
    }
    mobile = _mobilenet_case()
    if mobile is None:
        notes.append(f"{MODEL_PATHS['mobilenet']} not found: no 224x224x3 input drift row")
    else:
        live_mobile = LiveInputDrift(mobile[0], every=1)
        mobile_in = mobile[1]

        def input_mobile(j: int) -> None:
            if live_mobile.due():
                live_mobile.add(0, mobile_in[j % len(mobile_in)])

        cases["input drift sample, 224x224x3"] = input_mobile

    with tempfile.TemporaryDirectory(prefix="edge-bench-capture-") as state:
        capturer = Capturer()
        hooked = _Capture("bench")
        # a rule that no result of the docs matches (their scores are 0.75 and up)
        capturer.start({"bench": CaptureConfig(low_confidence=0.1)}, [hooked], Path(state))
        try:

            def capture_offer(j: int) -> None:
                capturer.offer(docs[j % 100], {}, [])

            cases["capture offer, no rule matches"] = capture_offer
            cases["Monitor.observe (latency, quality, drift)"] = monitor_observe
            for run in cases.values():  # warm up (first calls allocate)
                for j in range(50):
                    run(j)
            rounds: dict[str, list[float]] = {name: [] for name in cases}
            perf = time.perf_counter
            for r in range(repeats):
                for name, run in cases.items():
                    n = calls if name != "tamper check 640x480" else max(1, calls // 3)
                    t0 = perf()
                    for j in range(r * n, (r + 1) * n):
                        run(j)
                    rounds[name].append((perf() - t0) / n * 1e6)
        finally:
            capturer.stop()
            monitor.stop()
        offered = capturer.pipelines["bench"].candidates
        if offered:
            notes.append(f"capture offer: {offered} results matched a rule (expected none)")
    return {k: statistics.median(v) for k, v in rounds.items()}, rounds, notes


# -- 3. memory ----------------------------------------------------------------------------------


class _StubCamera:
    """A camera for :class:`Monitor` (a :class:`~edge_runtime.sources.base.FrameSource`): each
    ``peek`` returns the next of a few 640x480 frames."""

    def __init__(self, images: list[npt.NDArray[np.uint8]]) -> None:
        self.images = images
        self.seq = 0

    def _next(self) -> Any:
        from edge_runtime.sources.base import Frame

        self.seq += 1
        return Frame(self.images[self.seq % len(self.images)], self.seq, time.monotonic(), time.time())

    def get(self, after_seq: int = 0, timeout: float = 1.0) -> Any:
        return self._next()

    def latest(self) -> Any:
        return self._next()

    def peek(self) -> Any:
        return self._next()


def memory(results: int = 20000, span_s: float = 4000.0) -> dict[str, float]:
    """KB a :class:`Monitor` holds (tracemalloc): one camera after tamper checks, one 10-class
    pipeline after ``results`` results over ``span_s`` seconds (the quality windows), its output-
    drift window (500) and input-drift window (200 digits inputs) full. The inputs and frames
    are made before the baseline: only what the monitor keeps is counted."""
    from devkit.media import noisy, scene
    from edge_runtime.monitor.config import MonitorConfig
    from edge_runtime.monitor.service import Monitor, Reference

    rng = np.random.default_rng(7)
    images = [noisy(scene(1), rng) for _ in range(4)]
    ref = _digits_reference()
    digits_in = _digits_inputs(64)
    docs = [result_doc(i) for i in range(100)]
    config = MonitorConfig.model_validate({"tamper": {"check_hz": 0.1}, "drift": {"input_every": 1}})

    def quiet(kind: str, message: str, data: dict[str, Any]) -> None:
        return None

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        monitor = Monitor(quiet)
        monitor.start(config, {"camera": _StubCamera(images)}, {"bench": Reference(ref, "0" * 64)})
        monitor.stop()  # the checks below are made here, not by the thread
        for _ in range(20):
            monitor.check_once()
        t0 = time.monotonic()
        quality = monitor.quality
        assert quality is not None
        for i in range(results):
            quality.observe(docs[i % 100], t0 + i * span_s / results)
        for i in range(600):
            monitor.observe(docs[i % 100])
        live_in = monitor.input_drift["bench"]
        for i in range(250):
            live_in.add(0, digits_in[i % len(digits_in)])
        monitor.stats()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del monitor
    return {"monitor_kb": total / 1024}
