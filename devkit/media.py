"""Real media for tests and benchmarks: OpenCV video files, frames that carry their index, and an
MJPEG-over-HTTP camera served by ffmpeg."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from devkit.processes import free_port, require_tool, stop_process


def write_video(path: Path, frames: list[npt.NDArray[np.uint8]], fps: float) -> Path:
    """Write BGR ``frames`` to ``path`` (MJPG; use .avi) and check it reads back with every frame."""
    import cv2

    if not frames:
        raise ValueError("write_video needs at least one frame")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        pytest.fail(f"OpenCV cannot write {path} (MJPG)")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened(), f"OpenCV cannot read back {path}"
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        assert count == len(frames), f"{path}: {count} frames written, {len(frames)} expected"
    finally:
        cap.release()
    return path


def scene(seed: int, width: int = 640, height: int = 480) -> npt.NDArray[np.uint8]:
    """A textured scene drawn with OpenCV: rectangles, discs and text on a coloured ground."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = [int(v) for v in rng.integers(60, 160, 3)]
    for _ in range(40):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.rectangle(
                img, (x, y), (x + int(rng.integers(10, 150)), y + int(rng.integers(10, 150))), colour, -1
            )
        else:
            cv2.circle(img, (x, y), int(rng.integers(5, 60)), colour, -1)
    cv2.putText(img, f"scene {seed}", (40, 240), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return img


def noisy(img: npt.NDArray[np.uint8], rng: np.random.Generator, sigma: float = 3.0) -> npt.NDArray[np.uint8]:
    """``img`` with sensor noise (so that consecutive frames of a live camera differ)."""
    noise = rng.normal(0, sigma, img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def level_frames(count: int, width: int = 64, height: int = 48) -> list[npt.NDArray[np.uint8]]:
    """``count`` flat grey frames whose level encodes their index (see :func:`frame_index`)."""
    if count > 30:
        raise ValueError("at most 30 distinguishable levels")
    return [np.full((height, width, 3), 5 + 8 * i, dtype=np.uint8) for i in range(count)]


def frame_index(image: npt.NDArray[np.uint8]) -> int:
    """The index of a frame made by :func:`level_frames` (robust to JPEG noise)."""
    return round((float(image.mean()) - 5.0) / 8.0)


class MjpegServer:
    """An HTTP MJPEG stream served by ffmpeg (test pattern) at :attr:`url`; one client at a time.

    :meth:`kill` ends the stream (the camera sees it end), :meth:`pause` freezes ffmpeg so the
    connection stays open but no frame comes (a stall), :meth:`start` serves again on the same port.
    """

    def __init__(self, directory: Path, size: str = "320x240", rate: int = 15) -> None:
        self.ffmpeg = require_tool("ffmpeg", "ffmpeg")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/cam.mjpg"
        self.size = size
        self.rate = rate
        self._log = directory / "ffmpeg.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("ffmpeg is already running")
        command = [
            self.ffmpeg,
            "-nostdin",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size={self.size}:rate={self.rate}",
            "-f",
            "mpjpeg",
            "-listen",
            "1",
            self.url,
        ]
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGCONT)
            stop_process(proc, signal.SIGKILL)

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""


@contextmanager
def mjpeg_server(tmp_path: Path) -> Iterator[MjpegServer]:
    """A running :class:`MjpegServer`; ffmpeg is killed at the end."""
    server = MjpegServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
