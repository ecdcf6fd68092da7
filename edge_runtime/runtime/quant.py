"""Quantization arithmetic, pure numpy: ``real = scale * (q - zero_point)``.

Per-tensor and per-channel (``axis``) parameters; a 256-entry lookup table that maps uint8 camera
pixels straight to a model's int8 or uint8 input, normalisation and quantization in one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_LIMITS: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}


@dataclass(frozen=True)
class QuantParams:
    """Quantization of one tensor. ``scale`` and ``zero_point`` have one entry per channel of
    ``axis`` when per-channel, else a single entry."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    dtype: str
    axis: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in _LIMITS:
            raise ValueError(f"unsupported quantized dtype {self.dtype!r}")
        if not self.scale or len(self.scale) != len(self.zero_point):
            raise ValueError("scale and zero_point must be non-empty and of equal length")
        if any(not s > 0 for s in self.scale):
            raise ValueError(f"quantization scale must be positive, got {self.scale}")

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def _broadcast(self, ndim: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        scale = np.asarray(self.scale, dtype=np.float64)
        zero = np.asarray(self.zero_point, dtype=np.int64)
        if self.per_channel:
            shape = [1] * ndim
            shape[self.axis] = scale.size
            return scale.reshape(shape), zero.reshape(shape)
        return scale.reshape(()), zero.reshape(())


def quantize(x: npt.ArrayLike, params: QuantParams) -> npt.NDArray[np.integer]:
    """Real values to the quantized dtype, rounding half to even and saturating."""
    values = np.asarray(x, dtype=np.float64)
    scale, zero = params._broadcast(values.ndim)
    lo, hi = _LIMITS[params.dtype]
    q = np.rint(values / scale) + zero
    return np.clip(q, lo, hi).astype(params.dtype)


def dequantize(q: npt.ArrayLike, params: QuantParams) -> npt.NDArray[np.float32]:
    """Quantized values to real values: ``scale * (q - zero_point)``."""
    values = np.asarray(q)
    scale, zero = params._broadcast(values.ndim)
    return (scale * (values.astype(np.int64) - zero)).astype(np.float32)


def preserves_order(params: QuantParams) -> bool:
    """Whether ranking raw codes ranks what :func:`dequantize` makes of them the same way, ties
    included: per-tensor 8-bit parameters whose 256 real values strictly increase (a positive
    scale always, unless it is so small or large that float32 values collide or overflow)."""
    if params.per_channel or params.dtype not in ("int8", "uint8"):
        return False
    lo, hi = _LIMITS[params.dtype]
    with np.errstate(over="ignore", invalid="ignore"):
        real = dequantize(np.arange(lo, hi + 1), params)
        return bool(np.all(np.diff(real) > 0))


def pixel_lut(
    params: QuantParams, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0
) -> npt.NDArray[np.integer]:
    """Lookup table from a uint8 pixel ``p`` to ``quantize((p - mean) / std)``.

    With one mean and std the table has shape (256,); with per-channel values it has shape
    (256, C), one column per colour channel, in the channel order of the image it is applied to.
    Only per-tensor quantization applies to images.
    """
    if params.per_channel:
        raise ValueError("a pixel lookup table needs per-tensor input quantization")
    if params.dtype not in ("int8", "uint8"):
        raise ValueError(f"a pixel lookup table maps to int8 or uint8, not {params.dtype}")
    means = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    stds = np.atleast_1d(np.asarray(std, dtype=np.float64))
    if means.size != stds.size and 1 not in (means.size, stds.size):
        raise ValueError(f"mean has {means.size} values and std {stds.size}")
    if np.any(stds == 0):
        raise ValueError("std must not be zero")
    pixels = np.arange(256, dtype=np.float64)[:, None]
    table = quantize((pixels - means[None, :]) / stds[None, :], params)
    return table[:, 0] if table.shape[1] == 1 else table


def quant_fields(
    scale: tuple[float, ...] | None, zero_point: tuple[int, ...] | None, axis: int | None
) -> dict[str, Any]:
    """Quantization as JSON fields: one scale and zero point per tensor, or lists per channel."""
    if not scale or zero_point is None:
        return {"scale": None, "zero_point": None, "per_channel": False, "quantized_dimension": None}
    per_channel = len(scale) > 1
    return {
        "scale": list(scale) if per_channel else scale[0],
        "zero_point": list(zero_point) if per_channel else zero_point[0],
        "per_channel": per_channel,
        "quantized_dimension": axis,
    }
