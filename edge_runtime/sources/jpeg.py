"""Reduced-size JPEG decoding for MJPEG cameras: the raw JPEG bytes of each frame, decoded at 1/2
or 1/4 size when the models it feeds are that much smaller (libjpeg scales in the DCT, so a
reduced decode costs less than a full one and no resize of the full frame is needed after it).

The capture gives the raw bytes when it can: FFmpeg (files, HTTP MJPEG streams) returns each
demuxed packet with ``CAP_PROP_FORMAT = -1``, V4L2 the driver's MJPG buffer with
``CAP_PROP_CONVERT_RGB = 0``. OpenCV is imported only when a camera opens.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

from edge_runtime.sources.base import Frame

FACTORS = (4, 2)
"""Reductions tried, largest first (libjpeg's 1/8 is left out: too coarse for the resizes after it)."""


def reduction(frame: tuple[int, int], smallest_input: tuple[int, int] | None) -> int:
    """4, 2 or 1: the largest reduction that leaves a ``frame`` (width, height) at least as large as
    ``smallest_input`` in both dimensions (1 without a known frame size or input)."""
    if smallest_input is None or min(frame) <= 0:
        return 1
    w, h = frame
    iw, ih = smallest_input
    return next((f for f in FACTORS if w // f >= iw and h // f >= ih), 1)


def ask_raw(cap: Any, kind: str, api: str) -> bool:
    """Ask an open MJPEG capture for undecoded frames; whether it agreed."""
    import cv2

    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little", signed=True)
    if fourcc.upper() not in (b"MJPG", b"JPEG"):
        return False
    if kind == "device" and api == "v4l2":
        return bool(cap.set(cv2.CAP_PROP_CONVERT_RGB, 0))  # the driver's MJPG buffer as it is
    if kind in ("file", "stream") and cap.getBackendName() == "FFMPEG":
        return bool(cap.set(cv2.CAP_PROP_FORMAT, -1))  # the demuxed packet, not decoded
    return False


def decode(raw: npt.NDArray[np.uint8], scale: int) -> npt.NDArray[np.uint8] | None:
    """JPEG bytes decoded (BGR) at 1/``scale`` size; None when they are not a JPEG image."""
    import cv2

    data = raw.reshape(-1)
    if data[:2].tobytes() != b"\xff\xd8":
        return None
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[scale]
    return cast("npt.NDArray[np.uint8] | None", cv2.imdecode(data, flag))


def full_size(frame: Frame) -> npt.NDArray[np.uint8]:
    """The frame at the camera's size: a reduced-decode frame scaled back up (for snapshots)."""
    if frame.scale == 1:
        return frame.image
    import cv2

    h, w = frame.image.shape[:2]
    size = (w * frame.scale, h * frame.scale)
    return cast("npt.NDArray[np.uint8]", cv2.resize(frame.image, size, interpolation=cv2.INTER_LINEAR))
