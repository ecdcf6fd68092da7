"""How a source frame maps onto a model's input image, and back (pure).

Every resize mode is an axis-aligned affine map ``x_dst = x_src * sx + ox`` (and the same in y):
stretch scales each axis to fit, letterbox scales uniformly and pads, crop scales uniformly to
cover and cuts the centre. Detection boxes found in the model's input are mapped back to the
source frame with :meth:`ImageTransform.boxes_to_source`, which undoes the letterbox or crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

ResizeMode = Literal["stretch", "letterbox", "crop"]


@dataclass(frozen=True)
class ImageTransform:
    """``x_dst = x_src * sx + ox``, ``y_dst = y_src * sy + oy``; sizes in pixels."""

    mode: ResizeMode
    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    sx: float
    sy: float
    ox: float
    oy: float

    @property
    def scaled_size(self) -> tuple[int, int]:
        """(width, height) the source is resized to before padding or cropping."""
        return max(1, round(self.src_w * self.sx)), max(1, round(self.src_h * self.sy))

    def boxes_to_source(self, boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Boxes ``[N, 4]`` as x1, y1, x2, y2 in input pixels -> source pixels, clipped."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty_like(b)
        out[:, [0, 2]] = (b[:, [0, 2]] - self.ox) / self.sx
        out[:, [1, 3]] = (b[:, [1, 3]] - self.oy) / self.sy
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.src_w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.src_h)
        return out


def on_full_frame(t: ImageTransform, scale: int) -> ImageTransform:
    """``t`` planned on a frame decoded at 1/``scale`` size, as a transform of the camera's full frame
    (so boxes map back to camera pixels)."""
    if scale == 1:
        return t
    return replace(t, src_w=t.src_w * scale, src_h=t.src_h * scale, sx=t.sx / scale, sy=t.sy / scale)


def plan(src_w: int, src_h: int, dst_w: int, dst_h: int, mode: ResizeMode = "stretch") -> ImageTransform:
    """The transform that ``mode`` applies to a ``src_w`` x ``src_h`` frame."""
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"image sizes must be positive: {src_w}x{src_h} -> {dst_w}x{dst_h}")
    if mode == "stretch":
        return ImageTransform(mode, src_w, src_h, dst_w, dst_h, dst_w / src_w, dst_h / src_h, 0.0, 0.0)
    if mode == "letterbox":
        s = min(dst_w / src_w, dst_h / src_h)
        new_w, new_h = max(1, round(src_w * s)), max(1, round(src_h * s))
        return ImageTransform(
            mode, src_w, src_h, dst_w, dst_h, new_w / src_w, new_h / src_h,
            float((dst_w - new_w) // 2), float((dst_h - new_h) // 2),
        )  # fmt: skip
    if mode == "crop":
        s = max(dst_w / src_w, dst_h / src_h)
        new_w, new_h = max(dst_w, math.ceil(src_w * s - 1e-9)), max(dst_h, math.ceil(src_h * s - 1e-9))
        return ImageTransform(
            mode, src_w, src_h, dst_w, dst_h, new_w / src_w, new_h / src_h,
            -float((new_w - dst_w) // 2), -float((new_h - dst_h) // 2),
        )  # fmt: skip
    raise ValueError(f"unknown resize mode {mode!r}; use stretch, letterbox or crop")
