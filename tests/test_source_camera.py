"""Camera source with real video files written by OpenCV and a real HTTP MJPEG stream from ffmpeg."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from devkit.media import frame_index, level_frames, mjpeg_server, write_video
from devkit.processes import wait_until
from edge_runtime.sources.camera import CameraConfig, CameraSource, redact, uri_kind

FAST_RECONNECT = {"initial_s": 0.1, "max_s": 0.5, "factor": 2.0, "jitter": 0.1}


def config(uri: Path | str | int, **options: Any) -> CameraConfig:
    data: dict[str, Any] = {"type": "camera", "uri": uri if isinstance(uri, int) else str(uri)}
    data["reconnect"] = FAST_RECONNECT
    data.update(options)
    return CameraConfig.model_validate(data)


@contextmanager
def running(source: CameraSource) -> Iterator[CameraSource]:
    source.start()
    try:
        yield source
    finally:
        source.stop(timeout=10)
        assert not source.alive


def video(tmp_path: Path, count: int, fps: float = 30.0, name: str = "clip.avi") -> Path:
    return write_video(tmp_path / name, level_frames(count), fps)


def take_all(source: CameraSource, after: int = 0, timeout: float = 10.0) -> list[int]:
    """Frame indices a fast consumer sees after frame ``after`` until the source finishes."""
    seen: list[int] = []
    last = after
    while (frame := source.get(last, timeout)) is not None:
        assert frame.seq > last
        seen.append(frame_index(frame.image))
        last = frame.seq
    return seen


# -- config ---------------------------------------------------------------------------------------------


def test_config_and_uri_kinds() -> None:
    assert config(0).uri == 0
    assert config("2").uri == "2"
    assert config("clip.avi").realtime and not config("clip.avi").loop
    assert config("clip.avi").stall_timeout_s == 5.0
    kinds: dict[str | int, str] = {
        0: "device",
        "1": "device",
        "/dev/video2": "device",
        "rtsp://user:pw@cam.local/stream1": "stream",
        "https://cam/mjpg": "stream",
        "videotestsrc ! videoconvert ! appsink": "pipeline",
        "recordings/door.mp4": "file",
    }
    for uri, kind in kinds.items():
        assert uri_kind(uri) == kind, uri
    assert redact("rtsp://user:pw@cam.local/s") == "rtsp://***@cam.local/s"
    refusals: list[tuple[dict[str, Any], str, str]] = [
        ({"uri": -1}, "uri", "a device index cannot be negative"),
        ({"uri": " "}, "uri", "uri is empty"),
        ({"uri": 0, "fps": 0}, "fps", "greater than 0"),
        ({"uri": 0, "exposure": 3}, "exposure", "Extra inputs are not permitted"),  # no such setting
    ]
    for bad, field, message in refusals:
        with pytest.raises(ValidationError, match=message) as refused:
            CameraConfig.model_validate({"type": "camera", **bad})
        assert [e["loc"] for e in refused.value.errors()] == [(field,)], (bad, refused.value)


# -- files --------------------------------------------------------------------------------------------------


def test_lockstep_file_delivers_every_frame_in_order(tmp_path: Path) -> None:
    path = video(tmp_path, 30)
    with running(CameraSource("cam", config(path, realtime=False))) as source:
        seen = take_all(source)
        assert seen == list(range(30))
        assert wait_until(lambda: source.state == "finished")
        stats = source.stats()
        assert (stats["frames"], stats["dropped"], stats["skipped"]) == (30, 0, 0)
        assert (stats["width"], stats["height"], stats["stream_fps"]) == (64, 48, 30.0)
        assert stats["last_frame_age_s"] is not None and stats["last_frame_age_s"] >= 0
        frame = source.latest()
        assert frame is not None and frame.image.dtype.name == "uint8" and frame.image.shape == (48, 64, 3)


def test_realtime_file_is_paced_at_its_fps(tmp_path: Path) -> None:
    path = video(tmp_path, 30, fps=30.0)
    source = CameraSource("cam", config(path, realtime=True))
    with running(source):
        first = source.get(0, 10)
        assert first is not None
        seen = [frame_index(first.image), *take_all(source, first.seq)]
        assert wait_until(lambda: source.state == "finished")
        last = source.latest()
        assert last is not None
        span = last.t_mono - first.t_mono  # 29 frame intervals: 0.97 s at 30 fps
        assert 0.7 <= span <= 3.0, span
        assert source.frames == 30
        assert seen == sorted(seen) and seen[-1] == 29
        assert len(seen) + source.dropped == 30


def test_fps_thins_a_file(tmp_path: Path) -> None:
    path = video(tmp_path, 30, fps=30.0)
    with running(CameraSource("cam", config(path, realtime=False, fps=10))) as source:
        assert take_all(source) == list(range(0, 30, 3))
        assert (source.frames, source.skipped, source.dropped) == (10, 20, 0)


def test_loop_starts_over(tmp_path: Path) -> None:
    path = video(tmp_path, 10)
    with running(CameraSource("cam", config(path, realtime=False, loop=True))) as source:
        seen: list[int] = []
        last = 0
        while len(seen) < 25:
            frame = source.get(last, 10)
            assert frame is not None, source.stats()
            seen.append(frame_index(frame.image))
            last = frame.seq
        assert seen == [*range(10), *range(10), *range(5)]
        assert source.loops == 2 and source.state == "up" and not source.finished
        assert source.dropped == 0


def test_slow_consumer_gets_the_latest_frame_and_drops_are_counted(tmp_path: Path) -> None:
    path = video(tmp_path, 30, fps=30.0)
    taken: set[int] = set()
    with running(CameraSource("cam", config(path, realtime=True, loop=True))) as source:
        assert source.get(0, 10) is not None
        taken.add(1)
        for _ in range(4):
            time.sleep(0.3)  # about 9 frames pass meanwhile
            frame = source.latest()
            assert frame is not None
            assert source.seq - frame.seq <= 1  # the newest frame, not a backlog
            taken.add(frame.seq)
            newer = source.get(frame.seq, 10)  # the next one is news, not the one after `frame`
            assert newer is not None and newer.seq > frame.seq
            taken.add(newer.seq)
        assert source.dropped >= 10
    assert source.frames - source.dropped - len(taken) in (0, 1)  # at most the last is untaken


def test_file_that_disappears_and_comes_back(tmp_path: Path) -> None:
    path = video(tmp_path, 10, fps=30.0)
    aside = tmp_path / "aside.avi"
    with running(CameraSource("cam", config(path, realtime=True, loop=True))) as source:
        assert wait_until(lambda: source.frames >= 10), source.stats()
        path.rename(aside)
        assert wait_until(lambda: source.state == "down"), source.stats()
        assert str(path) in source.last_error
        reconnects = source.reconnects
        assert wait_until(lambda: source.reconnects >= reconnects + 2)
        frames = source.frames
        assert source.state == "down"
        aside.rename(path)
        assert wait_until(lambda: source.state == "up"), source.stats()
        assert wait_until(lambda: source.frames >= frames + 10), source.stats()


def test_missing_or_broken_file_is_down(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.avi"
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF" + bytes(1000))
    for path in (missing, broken):
        with running(CameraSource("cam", config(path))) as source:
            assert wait_until(lambda: source.state == "down" and source.reconnects >= 1), source.stats()
            assert str(path) in source.last_error
            assert source.latest() is None and source.frames == 0


def test_pipeline_without_gstreamer_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    has_backend = cv2.videoio_registry.hasBackend  # pip's OpenCV has no GStreamer; a distro one may

    def without_gstreamer(backend: int) -> bool:
        return backend != cv2.CAP_GSTREAMER and bool(has_backend(backend))

    monkeypatch.setattr(cv2.videoio_registry, "hasBackend", without_gstreamer)
    cfg = config("videotestsrc ! videoconvert ! appsink")
    with running(CameraSource("cam", cfg)) as source:
        assert wait_until(lambda: source.state == "down"), source.stats()
        assert "no gstreamer backend" in source.last_error


# -- a live stream ------------------------------------------------------------------------------------


def test_http_stream_ends_and_comes_back(tmp_path: Path) -> None:
    with mjpeg_server(tmp_path) as server:
        cfg = config(server.url, stall_timeout_s=2.0)
        with running(CameraSource("cam", cfg)) as source:
            assert wait_until(lambda: source.frames >= 5, 20), (source.stats(), server.log_text())
            frame = source.latest()
            assert frame is not None and frame.image.shape == (240, 320, 3)
            assert abs(frame.t_wall - time.time()) < 5

            server.kill()  # the stream ends
            assert wait_until(lambda: source.state == "down", 20), source.stats()
            assert "127.0.0.1" in source.last_error
            reconnects = source.reconnects
            assert wait_until(lambda: source.reconnects > reconnects, 20)

            server.start()
            assert wait_until(lambda: source.state == "up", 20), (source.stats(), server.log_text())
            seq = source.seq
            assert wait_until(lambda: source.seq >= seq + 5, 20), source.stats()
            assert source.stats()["width"] == 320


def test_stalled_stream_is_down_after_stall_timeout(tmp_path: Path) -> None:
    with mjpeg_server(tmp_path) as server:
        cfg = config(server.url, stall_timeout_s=1.0)
        with running(CameraSource("cam", cfg)) as source:
            assert wait_until(lambda: source.frames >= 3, 20), (source.stats(), server.log_text())
            server.pause()  # connection open, no frames
            paused = time.monotonic()
            assert wait_until(lambda: source.state == "down", 20), source.stats()
            assert time.monotonic() - paused >= 0.8  # not before the stall timeout
            server.kill()
            server.start()
            assert wait_until(lambda: source.state == "up", 20), (source.stats(), server.log_text())
            frames = source.frames
            assert wait_until(lambda: source.frames >= frames + 3, 20), source.stats()
