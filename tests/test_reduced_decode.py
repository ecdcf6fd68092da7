"""Reduced-size JPEG decoding of MJPEG cameras: the rule, the frame sizes a file and a real HTTP
MJPEG stream (ffmpeg) give, snapshots at the camera's size, and the same classifications as a full
decode on real frames (the digits held-out set through the bundled model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from devkit.daemon import digits_model
from devkit.media import frame_index, level_frames, mjpeg_server, write_video
from devkit.paths import MODELS
from devkit.processes import wait_until
from edge_runtime.config import validate
from edge_runtime.daemon.service import Service
from edge_runtime.demo import write_digits_video
from edge_runtime.sources.camera import CameraConfig, CameraSource
from edge_runtime.sources.jpeg import full_size, reduction


def camera(uri: Path | str, largest_input: tuple[int, int] | None, **options: Any) -> CameraSource:
    cfg = CameraConfig.model_validate({"type": "camera", "uri": str(uri), **options})
    source = CameraSource("cam", cfg)
    source.largest_input = largest_input
    return source


def test_the_reduction_is_the_largest_that_every_input_fits_in() -> None:
    assert reduction((640, 480), (224, 224)) == 2  # MobileNet: 320x240 holds 224x224, 160x120 does not
    assert reduction((640, 480), (8, 8)) == 4
    assert reduction((640, 480), (160, 120)) == 4
    assert reduction((640, 480), (161, 120)) == 2
    assert reduction((640, 480), (320, 241)) == 1
    assert reduction((640, 480), None) == 1  # a camera that feeds no model
    assert reduction((0, 0), (8, 8)) == 1  # size unknown


def test_a_file_decoded_at_a_quarter_gives_every_frame_in_order_at_the_documented_size(
    tmp_path: Path,
) -> None:
    path = write_video(tmp_path / "levels.avi", level_frames(20, 640, 480), 30.0)
    source = camera(path, (100, 100), realtime=False)
    source.start()
    try:
        seen, last = [], 0
        while (frame := source.get(last, 10)) is not None:
            assert frame.image.shape == (120, 160, 3) and frame.scale == 4
            seen.append(frame_index(frame.image))
            last = frame.seq
        assert seen == list(range(20))
        stats = source.stats()
        assert (stats["width"], stats["height"], stats["decode_scale"]) == (640, 480, 4)
        assert frame is None and source.peek() is not None
        snapshot = full_size(source.peek())  # type: ignore[arg-type]
        assert snapshot.shape == (480, 640, 3) and frame_index(snapshot) == 19
    finally:
        source.stop(10)


def test_off_or_a_large_input_keeps_the_full_decode(tmp_path: Path) -> None:
    path = write_video(tmp_path / "levels.avi", level_frames(3, 640, 480), 30.0)
    for source in (
        camera(path, (8, 8), realtime=False, reduced_decode="off"),
        camera(path, (400, 300), realtime=False),
    ):
        source.start()
        try:
            frame = source.get(0, 10)
            assert frame is not None and frame.image.shape == (480, 640, 3) and frame.scale == 1
            assert source.decode_scale == 1
        finally:
            source.stop(10)


def test_a_real_http_mjpeg_stream_is_decoded_at_half_size(tmp_path: Path) -> None:
    with mjpeg_server(tmp_path) as server:  # ffmpeg's test pattern, 320x240, served as mpjpeg
        source = camera(server.url, (160, 120), stall_timeout_s=5.0)
        source.start()
        try:
            assert wait_until(lambda: source.frames >= 5, 20), (source.stats(), server.log_text())
            frame = source.latest()
            assert frame is not None and frame.image.shape == (120, 160, 3) and frame.scale == 2
            stats = source.stats()
            assert (stats["width"], stats["height"], stats["decode_scale"]) == (320, 240, 2)
            assert full_size(frame).shape == (240, 320, 3)
        finally:
            source.stop(10)


class Sink:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def publish(self, result: dict[str, Any]) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


def classify(tmp_path: Path, video: Path, reduced: str) -> tuple[list[int], dict[str, Any]]:
    config = validate(
        {
            "device": {"id": "dec", "state_dir": str(tmp_path / f"state-{reduced}")},
            "mqtt": {"enabled": False},
            "sources": {
                "camera": {"type": "camera", "uri": str(video), "realtime": False, "reduced_decode": reduced}
            },
            "pipelines": [
                {
                    "name": "digits",
                    "trigger": "camera",
                    "models": [digits_model(postprocess={"type": "classification", "top_k": 1})],
                }
            ],
        },
        tmp_path,
    )
    sink = Sink()
    service = Service(config, [sink], duration_s=120)
    service.run(install_signals=False)
    assert service.stop_reason == "every pipeline finished"
    stats = service.sources["camera"].stats()
    return [r["result"]["top"][0]["index"] for r in sink.results], stats


def test_reduced_decode_classifies_real_frames_as_the_full_decode_does(tmp_path: Path) -> None:
    """200 held-out digits, one per 640x480 MJPG frame: decoded at 1/4 (the model's 8x8 input fits
    in 160x120) the bundled model gives the same top-1 class for at least 97 % of the frames and
    an accuracy within 2 points of the full decode."""
    with np.load(MODELS / "digits_heldout.npz") as data:
        images, labels = data["images"][:200], data["labels"][:200]
    video = tmp_path / "digits.avi"
    write_digits_video(video, list(images), fps=30.0, size=(640, 480))
    full, full_stats = classify(tmp_path, video, "off")
    reduced, reduced_stats = classify(tmp_path, video, "auto")
    assert (full_stats["decode_scale"], reduced_stats["decode_scale"]) == (1, 4)
    assert (reduced_stats["width"], reduced_stats["height"]) == (640, 480)
    assert len(full) == len(reduced) == 200
    same = np.mean(np.array(full) == np.array(reduced))
    accuracy_full = np.mean(np.array(full) == labels)
    accuracy_reduced = np.mean(np.array(reduced) == labels)
    assert same >= 0.97, f"only {same:.1%} of the frames classified alike"
    assert abs(accuracy_full - accuracy_reduced) <= 0.02, (accuracy_full, accuracy_reduced)
    assert accuracy_reduced >= 0.9
