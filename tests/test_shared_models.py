"""Shared models (``runtime.share_models``) and one pipeline fed by several cameras
(``trigger = [...]``): real video files, the real bundled digits model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.paths import MODELS
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video
from edge_runtime.errors import ConfigError

DIGITS = str(MODELS / "digits_int8.tflite")
DIGITS_V2 = Path(__file__).parent / "data" / "digits_v2_int8.tflite"


class Sink:
    """Collects results; sleeps ``delay`` s in each (a consumer slower than the cameras)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.results: list[dict[str, Any]] = []
        self.delay = delay

    def publish(self, result: dict[str, Any]) -> None:
        time.sleep(self.delay)
        self.results.append(result)

    def close(self) -> None:
        pass


def _heldout() -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        return data["images"], data["labels"]


def _model(source: str, path: str = DIGITS) -> dict[str, Any]:
    return {
        "path": path,
        "inputs": [{"kind": "image", "source": source, "resize": "crop", "color": "gray", "std": 255.0}],
        "postprocess": {"type": "classification", "top_k": 1},
    }


def _camera(path: Path, realtime: bool) -> dict[str, Any]:
    return {"type": "camera", "uri": str(path), "realtime": realtime}


def _config(tmp_path: Path, sources: dict[str, Any], pipelines: list[dict[str, Any]], share: bool) -> Any:
    return validate(
        {
            "device": {"id": "shared", "state_dir": str(tmp_path / "state")},
            "mqtt": {"enabled": False},
            "runtime": {"share_models": share},
            "sources": sources,
            "pipelines": pipelines,
        },
        tmp_path,
    )


def _accuracy(results: list[dict[str, Any]], labels: np.ndarray) -> float:
    right = [int(r["result"]["top"][0]["label"]) == int(labels[r["trigger"]["seq"] - 1]) for r in results]
    return sum(right) / len(results)


def _two_pipelines(tmp_path: Path, share: bool, n: int = 80) -> tuple[Service, Sink, list[np.ndarray]]:
    images, labels = _heldout()
    parts = [(images[:n], labels[:n]), (images[n : 2 * n], labels[n : 2 * n])]
    for i, (imgs, _) in enumerate(parts):
        write_digits_video(tmp_path / f"cam{i}.avi", list(imgs), fps=30.0)
    config = _config(
        tmp_path,
        {f"cam{i}": _camera(tmp_path / f"cam{i}.avi", realtime=False) for i in range(2)},
        [{"name": f"p{i}", "trigger": f"cam{i}", "models": [_model(f"cam{i}")]} for i in range(2)],
        share,
    )
    sink = Sink()
    return Service(config, [sink], duration_s=120), sink, [lab for _, lab in parts]


def _check_every_frame_classified(sink: Sink, labels: list[np.ndarray], n: int) -> None:
    for i in range(2):
        results = [r for r in sink.results if r["pipeline"] == f"p{i}"]
        assert [r["seq"] for r in results] == list(range(1, n + 1)), "every frame once, in order"
        assert _accuracy(results, labels[i]) >= 0.95


def test_two_pipelines_on_one_model_file_load_it_once_and_both_classify_correctly(tmp_path: Path) -> None:
    service, sink, labels = _two_pipelines(tmp_path, share=True)
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished"
    assert service.models.loads == 1, "one load for both pipelines"
    first, second = (p.serving().model for p in service.pipelines)
    assert first is second
    _check_every_frame_classified(sink, labels, 80)


def test_without_share_models_each_pipeline_loads_its_own(tmp_path: Path) -> None:
    service, sink, labels = _two_pipelines(tmp_path, share=False)
    service.run(install_signals=False)
    assert service.models.loads == 0
    first, second = (p.serving().model for p in service.pipelines)
    assert first is not second
    _check_every_frame_classified(sink, labels, 80)


def test_a_swap_replaces_the_shared_model_for_the_updated_pipeline_only(tmp_path: Path) -> None:
    service, sink, labels = _two_pipelines(tmp_path, share=True)
    built = service._build_runtime

    def build_then_swap(config: Any) -> Any:
        sources, pipelines = built(config)
        updated = pipelines[0]
        runner = updated.runner_for(DIGITS_V2, "2", model=updated.load_candidate(DIGITS_V2, "2"))
        updated.swap_model(runner)
        return sources, pipelines

    service._build_runtime = build_then_swap  # type: ignore[method-assign]
    service.run(install_signals=False)
    p0, p1 = service.pipelines
    assert p0.serving().model is not p1.serving().model
    assert p0.serving().model.path.name == "digits_v2_int8.tflite"
    assert p1.serving().model.path.name == "digits_int8.tflite"
    shas = {r["pipeline"]: {r["model"]["sha256"]} for r in sink.results}
    assert shas["p0"] == {p0.serving().model.sha256} != shas["p1"] == {p1.serving().model.sha256}
    assert {r["model"]["version"] for r in sink.results if r["pipeline"] == "p0"} == {"2"}
    _check_every_frame_classified(sink, labels, 80)


def test_one_pipeline_serves_a_fast_and_a_slow_camera_fairly_in_order(tmp_path: Path) -> None:
    images, labels = _heldout()
    fast_labels, slow_labels = labels[:200], labels[200:300]
    write_digits_video(tmp_path / "fast.avi", list(images[:200]), fps=30.0)
    write_digits_video(tmp_path / "slow.avi", list(images[200:300]), fps=12.0)
    config = _config(
        tmp_path,
        {"fast": _camera(tmp_path / "fast.avi", True), "slow": _camera(tmp_path / "slow.avi", True)},
        [
            {
                "name": "both",
                "trigger": ["fast", "slow"],
                "models": [_model("fast")],
                "max_results": 50,
            }
        ],
        share=True,
    )
    sink = Sink(delay=0.06)  # about 16 results/s for 42 frames/s offered: saturated
    service = Service(config, [sink], duration_s=60)
    service.run(install_signals=False)
    results = sink.results
    assert [r["seq"] for r in results] == list(range(1, 51)), "seq per pipeline stays contiguous"
    by_source = {name: [r for r in results if r["trigger"]["source"] == name] for name in ("fast", "slow")}
    counts = sorted(len(v) for v in by_source.values())
    assert counts[0] > 0 and counts[1] / counts[0] <= 1.2, f"unfair share: {counts}"
    for name, expected in (("fast", fast_labels), ("slow", slow_labels)):
        seqs = [r["trigger"]["seq"] for r in by_source[name]]
        assert seqs == sorted(set(seqs)), f"{name}: frames reordered or repeated: {seqs}"
        assert _accuracy(by_source[name], expected) >= 0.95, f"{name}: results of the wrong frames"
    pipeline = service.pipelines[0]
    assert pipeline.source_results == {"fast": len(by_source["fast"]), "slow": len(by_source["slow"])}
    assert pipeline.stats()["dropped_frames"] > 0, "the fast camera's frames in between were replaced"


def test_every_frame_of_two_lock_step_cameras_is_classified_once(tmp_path: Path) -> None:
    images, labels = _heldout()
    write_digits_video(tmp_path / "a.avi", list(images[:60]), fps=30.0)
    write_digits_video(tmp_path / "b.avi", list(images[60:100]), fps=30.0)
    config = _config(
        tmp_path,
        {"a": _camera(tmp_path / "a.avi", False), "b": _camera(tmp_path / "b.avi", False)},
        [{"name": "ab", "trigger": {"sources": ["a", "b"]}, "models": [_model("b")]}],
        share=False,
    )
    sink = Sink()
    service = Service(config, [sink], duration_s=120)
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished"
    assert [r["seq"] for r in sink.results] == list(range(1, 101))
    a = [r for r in sink.results if r["trigger"]["source"] == "a"]
    b = [r for r in sink.results if r["trigger"]["source"] == "b"]
    assert [r["trigger"]["seq"] for r in a] == list(range(1, 61)), "no loss or reordering in a source"
    assert [r["trigger"]["seq"] for r in b] == list(range(1, 41))
    assert _accuracy(a, labels[:60]) >= 0.95 and _accuracy(b, labels[60:100]) >= 0.95
    assert service.pipelines[0].rate_limited == 0, "frames of two cameras interleave in time"


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        (["a"], "at least two different"),
        (["a", "a"], "at least two different"),
        (["a", "nope"], "'nope': no source of that name"),
        (["a", "serial"], "several trigger sources must be cameras"),
        ({"source": "b", "sources": ["a", "b"]}, "must be the first"),
    ],
)
def test_bad_multi_source_triggers_are_refused(tmp_path: Path, trigger: Any, message: str) -> None:
    sources = {
        "a": _camera(tmp_path / "a.avi", True),
        "b": _camera(tmp_path / "b.avi", True),
        "serial": {"type": "serial", "port": "/dev/null", "format": "csv", "fields": ["x"]},
    }
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, sources, [{"name": "p", "trigger": trigger, "models": [_model("a")]}], False)


def test_a_list_trigger_and_a_sources_table_mean_the_same(tmp_path: Path) -> None:
    sources = {"a": _camera(tmp_path / "a.avi", True), "b": _camera(tmp_path / "b.avi", True)}
    configs = [
        _config(tmp_path, sources, [{"name": "p", "trigger": t, "models": [_model("a")]}], False)
        for t in (["a", "b"], {"sources": ["a", "b"]})
    ]
    triggers = [c.pipelines[0].trigger for c in configs]
    assert triggers[0] == triggers[1]
    assert triggers[0].source == "a" and triggers[0].names == ["a", "b"]


def test_a_shared_model_gives_each_frame_exactly_what_a_model_of_its_own_gives(tmp_path: Path) -> None:
    # two pipelines invoking one interpreter concurrently: any input of one pipeline read by the
    # other's invoke (a missing lock) shows up as a different score for that frame
    outcomes = []
    for share in (False, True):
        directory = tmp_path / ("shared" if share else "own")
        directory.mkdir()
        service, sink, _ = _two_pipelines(directory, share=share, n=120)
        service.run(install_signals=False)
        assert len(sink.results) == 240
        outcomes.append(
            {
                (r["pipeline"], r["trigger"]["seq"]): [(t["index"], t["score"]) for t in r["result"]["top"]]
                for r in sink.results
            }
        )
    assert outcomes[0] == outcomes[1]
