"""Assets of the embedded default: a video of held-out digits and a replayed vibration stream.

``edge-runtime run`` with no config runs ``demo.toml`` (the same file as ``devices/demo.toml``),
whose ``demo:`` paths point here. The assets are generated once, deterministically, from the
bundled held-out split and :mod:`edge_runtime.synthetic`, under ``{state_dir}/demo``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_runtime.config import BUNDLED_MODELS
from edge_runtime.synthetic import CHANNELS, SAMPLE_RATE_HZ, vibration_stream

DIGIT_SIDE = 128
FRAME_SIZE = (160, 128)  # width, height: the digit centred, black bars left and right
DEMO_FPS = 10.0
SCHEDULE: tuple[tuple[float, str], ...] = (
    (0.0, "idle"),
    (10.0, "running"),
    (25.0, "fault"),
    (35.0, "running"),
)
STREAM_S = 45.0


def digit_frame(image8: npt.NDArray[np.uint8], size: tuple[int, int] = FRAME_SIZE) -> npt.NDArray[np.uint8]:
    """An 8x8 grey digit as a BGR frame: scaled up (nearest) to a square of the frame's height,
    centred. A ``crop`` resize to 8x8 gives the digit back."""
    import cv2

    width, height = size
    side = min(width, height)
    big = cv2.resize(image8, (side, side), interpolation=cv2.INTER_NEAREST)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0 = (width - side) // 2, (height - side) // 2
    frame[y0 : y0 + side, x0 : x0 + side] = big[:, :, None]
    return frame


def write_digits_video(
    path: Path,
    images: Sequence[npt.NDArray[np.uint8]],
    fps: float = DEMO_FPS,
    size: tuple[int, int] = FRAME_SIZE,
) -> None:
    """Write ``images`` (8x8 uint8) as an MJPG .avi, one digit per frame."""
    import cv2

    tmp = path.with_name(path.name + ".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise OSError(f"{tmp}: OpenCV cannot write MJPG video")
    try:
        for image in images:
            writer.write(digit_frame(image, size))
    finally:
        writer.release()
    os.replace(tmp, path)


def write_vibration_csv(
    path: Path, schedule: Sequence[tuple[float, str]], duration_s: float, seed: int = 7
) -> None:
    """A replay file (``t,ax,ay,az``) of a machine changing state as ``schedule`` says."""
    times, samples = vibration_stream(schedule, duration_s, np.random.default_rng(seed), SAMPLE_RATE_HZ)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t", *CHANNELS])
        for t, row in zip(times, samples, strict=True):
            out.writerow([f"{t:.3f}", *(f"{v:.5f}" for v in row)])
    os.replace(tmp, path)


def ensure_assets(state_dir: Path) -> Path:
    """Create ``{state_dir}/demo`` with ``digits.avi`` and ``vibration.csv`` when missing."""
    folder = state_dir / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "digits.avi"
    if not video.exists():
        with np.load(BUNDLED_MODELS / "digits_heldout.npz") as data:
            images = list(data["images"])
        write_digits_video(video, images)
    vibration = folder / "vibration.csv"
    if not vibration.exists():
        write_vibration_csv(vibration, SCHEDULE, STREAM_S)
    return folder
