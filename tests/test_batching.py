"""Batched inference of a pipeline with several cameras (``trigger = { sources = [...], batch = N }``):
real video files, the bundled digits models (LiteRT and ONNX Runtime) and a third-party model whose
outputs have no batch dimension."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.paths import MODELS
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video
from edge_runtime.errors import ConfigError
from edge_runtime.runtime.model import Model

DIGITS = str(MODELS / "digits_int8.tflite")
DIGITS_ONNX = str(MODELS / "digits_int8.onnx")
CONSTANT = Path(__file__).parent / "data" / "constant_digits_int8.tflite"  # another digits model
FACE = Path(__file__).parent / "data" / "third_party" / "face_detection_short_range.tflite"
CAMERAS = ("a", "b", "c", "d")
FRAMES = 40  # per camera


class Sink:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def publish(self, result: dict[str, Any]) -> None:
        with self.lock:
            self.results.append(result)

    def close(self) -> None:
        pass


def _videos(tmp_path: Path) -> dict[str, np.ndarray]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        images, labels = data["images"], data["labels"]
    out = {}
    for i, name in enumerate(CAMERAS):
        part = slice(i * FRAMES, (i + 1) * FRAMES)
        write_digits_video(tmp_path / f"{name}.avi", list(images[part]), fps=30.0)
        out[name] = labels[part]
    return out


def _config(tmp_path: Path, trigger: dict[str, Any], model: dict[str, Any], share: bool = False) -> Any:
    return validate(
        {
            "device": {"id": "batch", "state_dir": str(tmp_path / "state")},
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
            "runtime": {"share_models": share},
            "sources": {
                n: {"type": "camera", "uri": str(tmp_path / f"{n}.avi"), "realtime": False} for n in CAMERAS
            },
            "pipelines": [{"name": "all", "trigger": trigger, "models": [model]}],
        },
        tmp_path,
    )


def _digits(path: str = DIGITS) -> dict[str, Any]:
    return {
        "path": path,
        "inputs": [{"kind": "image", "source": "a", "resize": "crop", "color": "gray", "std": 255.0}],
        "postprocess": {"type": "classification", "top_k": 10},
    }


def _face_model() -> dict[str, Any]:
    return {
        "path": str(FACE),
        "inputs": [
            {"kind": "image", "source": "a", "resize": "stretch", "color": "rgb", "std": 127.5, "mean": 127.5}
        ],
        "postprocess": {"type": "raw"},
    }


def _run(tmp_path: Path, batch: int, model: dict[str, Any], share: bool = False) -> tuple[Service, Sink]:
    config = _config(tmp_path, {"sources": list(CAMERAS), "batch": batch}, model, share)
    sink = Sink()
    service = Service(config, [sink], duration_s=120)
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished"
    return service, sink


def _scores(results: list[dict[str, Any]]) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for r in results:
        top = sorted(r["result"]["top"], key=lambda t: t["index"])
        out[(r["trigger"]["source"], r["trigger"]["seq"])] = np.array([t["score"] for t in top])
    return out


def _check_every_frame_once_in_order(sink: Sink) -> None:
    assert [r["seq"] for r in sink.results] == list(range(1, len(CAMERAS) * FRAMES + 1))
    for name in CAMERAS:
        seqs = [r["trigger"]["seq"] for r in sink.results if r["trigger"]["source"] == name]
        assert seqs == list(range(1, FRAMES + 1)), f"{name}: lost or reordered: {seqs}"


@pytest.mark.parametrize("model", [DIGITS, DIGITS_ONNX], ids=["litert", "onnxruntime"])
def test_a_batch_gives_each_frame_what_one_at_a_time_gives(tmp_path: Path, model: str) -> None:
    labels = _videos(tmp_path)
    outcomes = []
    for batch in (1, 4):
        directory = tmp_path / f"batch{batch}"
        directory.mkdir()
        for name in CAMERAS:
            (directory / f"{name}.avi").hardlink_to(tmp_path / f"{name}.avi")
        service, sink = _run(directory, batch, _digits(model))
        _check_every_frame_once_in_order(sink)
        pipeline = service.pipelines[0]
        assert pipeline.batch == batch
        if batch > 1:
            sizes = pipeline.serving().batch_sizes
            assert sum(k * v for k, v in sizes.items()) == len(CAMERAS) * FRAMES
            assert max(sizes) > 1, f"no batch of more than one frame was run: {sizes}"
        right = [
            int(max(r["result"]["top"], key=lambda t: t["score"])["index"])
            == int(labels[r["trigger"]["source"]][r["trigger"]["seq"] - 1])
            for r in sink.results
        ]
        assert sum(right) / len(right) >= 0.95, "results of the wrong frames"
        outcomes.append(_scores(sink.results))
    one, four = outcomes
    assert one.keys() == four.keys()
    # the same frame through a batch: the same scores within one int8 step of the output (1/256)
    worst = max(float(np.max(np.abs(one[k] - four[k]))) for k in one)
    assert worst <= 1 / 256 + 1e-6, f"a batched score differs by {worst}"


def test_a_model_swap_with_batching_on_happens_between_two_invokes(tmp_path: Path) -> None:
    _videos(tmp_path)
    config = _config(tmp_path, {"sources": list(CAMERAS), "batch": 4}, _digits(), share=True)
    sink = Sink()
    service = Service(config, [sink], duration_s=120)
    swapped = threading.Event()
    built = service._build_runtime

    def build_then_swap_later(cfg: Any) -> Any:
        sources, pipelines = built(cfg)
        pipeline = pipelines[0]
        runner = pipeline.runner_for(CONSTANT, "2", model=pipeline.load_candidate(CONSTANT, "2"))

        def swap() -> None:
            while len(sink.results) < 30 and not service.stop_event.is_set():
                service.stop_event.wait(0.001)
            pipeline.swap_model(runner)
            swapped.set()

        threading.Thread(target=swap, daemon=True).start()
        return sources, pipelines

    service._build_runtime = build_then_swap_later  # type: ignore[method-assign,assignment]
    service.run(install_signals=False)
    assert swapped.is_set()
    _check_every_frame_once_in_order(sink)
    versions = [r["model"]["version"] for r in sink.results]
    first_new = versions.index("2")
    assert 30 <= first_new < len(versions) - 1, "the swap came during the run"
    assert set(versions[:first_new]) == {""} and set(versions[first_new:]) == {"2"}, "one switch, never back"
    # each result's scores are exactly what its model gives that frame (one model per whole run
    # here): no invoke mixed the two models, whatever rows of a batch the swap fell between
    expected = {}
    for version, path in (("", DIGITS), ("2", str(CONSTANT))):
        directory = tmp_path / f"v{version or 1}"
        directory.mkdir()
        for name in CAMERAS:
            (directory / f"{name}.avi").hardlink_to(tmp_path / f"{name}.avi")
        expected[version] = _scores(_run(directory, 1, _digits(path))[1].results)
    got = _scores(sink.results)
    for r in sink.results:
        key = (r["trigger"]["source"], r["trigger"]["seq"])
        assert np.array_equal(got[key], expected[r["model"]["version"]][key]), (
            f"{key}: not its model's scores"
        )
    assert any(not np.array_equal(expected[""][k], expected["2"][k]) for k in got), (
        "the two models differ on these frames"
    )


def test_a_model_without_a_batch_dimension_runs_one_frame_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _videos(tmp_path)
    model = _face_model()
    with caplog.at_level(logging.WARNING):
        service, sink = _run(tmp_path, 4, model)
    assert service.pipelines[0].batch == 1
    assert "batch 4 is off" in caplog.text and "have no batch of 4" in caplog.text
    _check_every_frame_once_in_order(sink)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"trigger": {"sources": ["a", "b"], "batch": 3}}, "batch 3 is more than its 2 source"),
        ({"trigger": {"source": "a", "batch": 2}}, "batch 2 is more than its 1 source"),
        ({"trigger": {"sources": ["a", "b"], "batch": 0}}, "greater than or equal to 1"),
        (
            {
                "trigger": {"sources": ["a", "b"], "batch": 2},
                "models": [_digits(), _digits()],
                "ensemble": {"combine": "mean"},
            },
            "trigger batch runs one model",
        ),
    ],
)
def test_impossible_batches_are_refused(tmp_path: Path, pipeline: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(
            {
                "mqtt": {"enabled": False},
                "sources": {n: {"type": "camera", "uri": str(tmp_path / f"{n}.avi")} for n in ("a", "b")},
                "pipelines": [{"name": "p", "models": [_digits()], **pipeline}],
            },
            tmp_path,
        )


def test_rows_of_a_model_that_cannot_batch_run_one_by_one_with_each_frames_own_result(tmp_path: Path) -> None:
    # what a pipeline meets when a model swapped in cannot take the batch: the rows staged for it
    # are invoked one at a time, each giving exactly what the model gives that frame alone
    from devkit.media import scene
    from edge_runtime.pipeline.batch import PreparedBatch, invoke_batch, split
    from edge_runtime.pipeline.results import Triggered
    from edge_runtime.pipeline.runner import ModelRunner
    from edge_runtime.sources.base import Frame

    config = _config(tmp_path, {"sources": list(CAMERAS), "batch": 3}, _face_model())
    runner = ModelRunner(config.pipelines[0].models[0], config, {}, "test")
    assert "have no batch of 3" in runner.model.batch_error(3)
    frames = [{"a": Frame(image=scene(seed), seq=1, t_mono=0.0, t_wall=0.0)} for seed in range(3)]
    trigs = [Triggered(0.0, 0.0, name, 1, f["a"]) for name, f in zip(CAMERAS, frames, strict=False)]
    transforms = runner.fill_rows(frames, [0.0] * 3, slot=0, capacity=3)
    released: list[int] = []
    done = invoke_batch(PreparedBatch(trigs, frames, runner, transforms, 0, 0.0, 0.0), released.append, "p")
    assert released == [0], "the slot is given back once, after the last row was loaded"
    alone = Model(FACE, threads=1)
    for row, f in enumerate(frames):
        image = runner.images[0][1].build(f["a"].image).copy()  # the same preprocessing
        expected = alone.invoke([image])
        for got, want in zip(split(done.outputs, row), expected, strict=True):
            assert np.array_equal(got, want), f"row {row}: not that frame's own output"
    outputs = [np.asarray(o) for o in done.outputs]
    assert not np.array_equal(outputs[0][0], outputs[0][1]), "different frames, different outputs"
