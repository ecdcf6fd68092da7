"""ModelRunner and Pipeline built directly, on the real digits and fused models, real video files
and a real replayed sensor stream: no daemon around them.

The runner: held-out digits through its image builder and head, staging slots equal to direct
inputs, captured inputs are copies. The pipeline: results numbered in order from a file camera, an
``every_s`` trigger over a replayed stream firing at its period, and the hooks updates use
(``serving``, ``runner_for``, ``swap_model``, ``watch``) on a running pipeline.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.config import Config, validate
from edge_runtime.demo import write_digits_video, write_vibration_csv
from edge_runtime.pipeline import ModelRunner, Pipeline
from edge_runtime.sources import build_source
from edge_runtime.sources.base import Source
from edge_runtime.sources.camera import CameraConfig
from edge_runtime.sources.replay import ReplayConfig

DIGITS_INPUT = {"kind": "image", "source": "camera", "resize": "crop", "color": "gray", "std": 255.0}


def heldout(n: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        return data["images"][:n], data["labels"][:n]


def config(tmp_path: Path, pipelines: list[dict[str, Any]], sources: dict[str, Any]) -> Config:
    return validate(
        {
            "device": {"id": "units", "state_dir": str(tmp_path / "state")},
            "mqtt": {"enabled": False},
            "sources": sources,
            "pipelines": pipelines,
        },
        tmp_path,
    )


def digits_model(**extra: Any) -> dict[str, Any]:
    return {
        "path": str(MODELS / "digits_int8.tflite"),
        "inputs": [DIGITS_INPUT],
        "postprocess": {"type": "classification", "top_k": 1, "labels": str(MODELS / "digits_labels.txt")},
        **extra,
    }


def camera_config(tmp_path: Path, n: int, realtime: bool = False) -> dict[str, Any]:
    images, _ = heldout(n)
    write_digits_video(tmp_path / "digits.avi", list(images), fps=30.0)
    return {"camera": {"type": "camera", "uri": str(tmp_path / "digits.avi"), "realtime": realtime}}


def frame_of(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A 160x128 BGR frame with the 8x8 digit in its centre crop, as the demo video draws it."""
    from edge_runtime.demo import digit_frame

    frame: npt.NDArray[np.uint8] = digit_frame(image, (160, 128))
    return frame


def test_model_runner_classifies_held_out_digits(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, [{"name": "p", "trigger": "camera", "models": [digits_model()]}], camera_config(tmp_path, 2)
    )
    runner = ModelRunner(cfg.pipelines[0].models[0], cfg, {}, "test")
    images, labels = heldout(200)
    correct = 0
    for image, label in zip(images, labels, strict=True):
        runner.fill({"camera": frame_of(image)}, time.monotonic())
        result = runner.post(runner.invoke(), None)
        correct += result["top"][0]["index"] == int(label)
    assert correct / len(labels) >= 0.985, f"{correct}/200 (the manifest says 0.9978 over 450)"
    assert runner.info["name"] and len(runner.info["sha256"]) == 64


def test_staging_slots_give_the_same_outputs_and_captures_are_copies(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, [{"name": "p", "trigger": "camera", "models": [digits_model()]}], camera_config(tmp_path, 2)
    )
    runner = ModelRunner(cfg.pipelines[0].models[0], cfg, {}, "test")
    images, _ = heldout(3)
    frames = [frame_of(i) for i in images]
    direct = []
    for frame in frames:
        runner.fill({"camera": frame}, 0.0)
        direct.append(runner.invoke()[0].copy())
    for slot, frame in enumerate(frames[:2]):
        runner.fill({"camera": frame}, 0.0, slot=slot)
    for slot in (1, 0):  # loaded in another order than built
        runner.load(slot)
        assert np.array_equal(runner.invoke()[0], direct[slot])

    captured: list[list[npt.NDArray[Any]] | None] = []
    waiter = threading.Thread(target=lambda: captured.append(runner.capture_inputs(5.0)))
    waiter.start()
    assert wait_until(runner._capture_request.is_set, 5)
    runner.fill({"camera": frames[2]}, 0.0)
    waiter.join(5)
    (inputs,) = captured
    assert inputs is not None and len(inputs) == 1
    kept = inputs[0].copy()
    runner.fill({"camera": frames[0]}, 0.0)
    assert np.array_equal(inputs[0], kept), "the captured input is a copy, not a view of the model's"


class Collect:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, result: dict[str, Any]) -> None:
        with self.lock:
            self.results.append(result)


def run_sources(sources: dict[str, Source]) -> None:
    for source in sources.values():
        source.start()


def stop_all(pipeline: Pipeline, sources: dict[str, Source]) -> None:
    pipeline.stop(10)
    for source in sources.values():
        source.stop(5)


def test_a_pipeline_numbers_every_frame_of_a_file_in_order(tmp_path: Path) -> None:
    n = 40
    cfg = config(
        tmp_path, [{"name": "p", "trigger": "camera", "models": [digits_model()]}], camera_config(tmp_path, n)
    )
    sources = {"camera": build_source("camera", cfg.sources["camera"])}
    emit = Collect()
    pipeline = Pipeline(cfg.pipelines[0], cfg, sources, emit, device="units", seq_start=100)
    run_sources(sources)
    pipeline.start()
    try:
        assert wait_until(lambda: pipeline.finished, 60), "the file did not end the pipeline"
    finally:
        stop_all(pipeline, sources)
    _, labels = heldout(n)
    assert [r["seq"] for r in emit.results] == list(range(101, 101 + n))
    assert [r["trigger"]["seq"] for r in emit.results] == list(range(1, n + 1))
    tops = [r["result"]["top"][0]["index"] for r in emit.results]
    assert sum(t == int(lab) for t, lab in zip(tops, labels, strict=True)) >= n - 1
    assert pipeline.stats()["results"] == n and pipeline.stats()["errors"] == 0


def test_an_every_s_trigger_fires_at_its_period_over_a_replayed_stream(tmp_path: Path) -> None:
    write_vibration_csv(tmp_path / "vib.csv", [(0.0, "idle"), (2.0, "running")], 6.0)
    image = {"kind": "image", "source": "camera", "input": "image", "resize": "crop", "color": "gray"}
    window = {"kind": "window", "source": "vib", "input": "vibration", "channels": ["ax", "ay", "az"]}
    fused = {
        "path": str(MODELS / "fused_int8.tflite"),
        "inputs": [{**image, "std": 255.0}, {**window, "window_s": 0.64, "samples": 64, "max_age_s": 0.5}],
        "postprocess": {
            "state": {"type": "classification", "output": 0},
            "digit": {"type": "classification", "output": 1},
        },
    }
    sources_cfg = {
        **camera_config(tmp_path, 30, realtime=True),
        "vib": {"type": "replay", "path": str(tmp_path / "vib.csv"), "format": "csv", "loop": True},
    }
    sources_cfg["camera"]["loop"] = True
    cfg = config(tmp_path, [{"name": "p", "trigger": {"every_s": 0.25}, "models": [fused]}], sources_cfg)
    sources: dict[str, Source] = {
        "camera": build_source("camera", cfg.sources["camera"]),
        "vib": build_source("vib", cfg.sources["vib"]),
    }
    emit = Collect()
    pipeline = Pipeline(cfg.pipelines[0], cfg, sources, emit, device="units")
    run_sources(sources)
    pipeline.start()
    try:
        assert wait_until(lambda: len(emit.results) >= 12, 30), f"{len(emit.results)} results"
    finally:
        stop_all(pipeline, sources)
    triggers = [r["frame_ts"] for r in emit.results]
    gaps = np.diff(triggers[2:])  # the first ones may wait for the window to fill
    assert 0.22 <= float(np.median(gaps)) <= 0.30, f"median period {np.median(gaps):.3f} s, configured 0.25"
    assert all(r["trigger"]["source"] == "every" for r in emit.results)
    assert {"state", "digit", "event"} <= set(emit.results[-1]["result"])


def test_the_update_hooks_swap_the_model_between_two_inferences(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        [{"name": "p", "trigger": "camera", "models": [digits_model(version="1")]}],
        {**camera_config(tmp_path, 30, realtime=True)},
    )
    sources = {"camera": build_source("camera", cfg.sources["camera"].model_copy(update={"loop": True}))}
    emit = Collect()
    pipeline = Pipeline(cfg.pipelines[0], cfg, sources, emit, device="units")
    observed: list[tuple[int, float]] = []
    run_sources(sources)
    pipeline.start()
    try:
        assert wait_until(lambda: len(emit.results) >= 3, 30)
        old = pipeline.serving()
        candidate = pipeline.load_candidate(MODELS / "digits_int8.tflite", "2")
        runner = pipeline.runner_for(MODELS / "digits_int8.tflite", "2", model=candidate)
        pipeline.watch(lambda outputs, ms: observed.append((len(outputs), ms)))
        assert pipeline.swap_model(runner) is old
        assert pipeline.serving() is runner
        assert wait_until(lambda: len(observed) >= 3, 30), "the observer is not called"
        assert wait_until(lambda: emit.results[-1]["model"]["version"] == "2", 30)
        pipeline.watch(None)
        assert pipeline.invoke_p95() is not None
    finally:
        stop_all(pipeline, sources)
    versions = [r["model"]["version"] for r in emit.results]
    first_new = versions.index("2")
    assert set(versions[:first_new]) == {"1"} and set(versions[first_new:]) == {"2"}, (
        "swapped once, between two"
    )
    assert [r["seq"] for r in emit.results] == list(range(1, len(emit.results) + 1))
    assert all(n == 1 and ms > 0 for n, ms in observed)


def test_sources_offer_the_protocols_the_pipeline_reads(tmp_path: Path) -> None:
    """A camera is a frame source, a replay a sensor source (no attribute probing)."""
    from edge_runtime.sources.base import FrameSource, SensorSource

    cam = build_source("camera", CameraConfig(**camera_config(tmp_path, 2)["camera"]))
    write_vibration_csv(tmp_path / "v.csv", [(0.0, "idle")], 1.0)
    rep = build_source("vib", ReplayConfig(path=str(tmp_path / "v.csv"), format="csv"))
    assert isinstance(cam, FrameSource) and not isinstance(cam, SensorSource)
    assert isinstance(rep, SensorSource) and not isinstance(rep, FrameSource)
