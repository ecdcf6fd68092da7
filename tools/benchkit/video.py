"""The benchmark's test video: a 640x480 MJPG scene, cached."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from benchkit.common import CACHE, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE, VIDEO_VERSION

# -- the test video ---------------------------------------------------------------------------------


def _scene(n: int, size: tuple[int, int]) -> Iterator[npt.NDArray[np.uint8]]:
    """A synthetic 'camera' scene: a textured background panning slowly, moving shapes, a counter."""
    import cv2

    w, h = size
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([80 + 60 * xx / w, 90 + 50 * yy / h, 120 + 40 * np.sin(xx / 70.0)], axis=-1)
    blobs = cv2.resize(
        rng.uniform(-40, 40, (12, 16, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    grain = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    background = np.clip(base + blobs + grain, 0, 255).astype(np.uint8)
    for k in range(40):  # "furniture": fixed rectangles with edges
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(
            background,
            (x, y),
            (x + int(rng.integers(20, 120)), y + int(rng.integers(20, 90))),
            color,
            -1 if k % 3 else 2,
        )
    for i in range(n):
        frame = np.roll(background, shift=(i * 2) % w, axis=1)
        t = i / n * 2 * math.pi
        cx, cy = int(w / 2 + w / 3 * math.cos(t)), int(h / 2 + h / 3 * math.sin(2 * t))
        cv2.circle(frame, (cx, cy), 45, (30, 30, 220), -1)
        cv2.circle(frame, (cx - 12, cy - 12), 12, (240, 240, 240), -1)
        bx = int((i * 7) % (w + 160)) - 80
        cv2.rectangle(frame, (bx, h - 150), (bx + 110, h - 60), (40, 180, 40), -1)
        cv2.putText(frame, f"frame {i:04d}", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
        yield frame


def make_video(fps: float = VIDEO_FPS, directory: Path = CACHE) -> Path:
    """The 640x480 MJPG test video at ``fps`` (container frame rate), generated once in ``directory``.

    The base video is encoded once (and cached under the temp dir); another frame rate is the
    same file with the rate fields of its AVI headers rewritten, which takes no time."""
    import cv2

    fps = round(fps, 1)
    w, h = VIDEO_SIZE
    path = directory / f"scene-v{VIDEO_VERSION}-{w}x{h}-{VIDEO_FRAMES}f-{fps:g}fps.avi"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.avi")
    if fps != VIDEO_FPS:
        data = bytearray(make_video(VIDEO_FPS).read_bytes())
        if _set_avi_rate(data, fps):
            tmp.write_bytes(data)
            capture = cv2.VideoCapture(str(tmp))
            ok = abs(float(capture.get(cv2.CAP_PROP_FPS)) - fps) < 0.05
            capture.release()
            if ok:
                os.replace(tmp, path)
                return path
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an MJPG video to {tmp}")
    for frame in _scene(VIDEO_FRAMES, VIDEO_SIZE):
        writer.write(frame)
    writer.release()
    os.replace(tmp, path)
    return path


def _set_avi_rate(data: bytearray, fps: float) -> bool:
    """Rewrite an AVI's frame rate: ``avih.dwMicroSecPerFrame`` and ``strh.dwScale/dwRate``."""
    avih, strh = data.find(b"avih", 0, 4096), data.find(b"strh", 0, 4096)
    if avih < 0 or strh < 0 or data[strh + 8 : strh + 12] != b"vids":
        return False
    data[avih + 8 : avih + 12] = round(1e6 / fps).to_bytes(4, "little")
    data[strh + 28 : strh + 32] = (10).to_bytes(4, "little")  # dwScale
    data[strh + 32 : strh + 36] = round(fps * 10).to_bytes(4, "little")  # dwRate
    return True
