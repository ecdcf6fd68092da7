"""Fusion: every model input tensor built from its source at the trigger time.

Image inputs: a camera frame resized (stretch, letterbox or crop), converted to RGB, BGR or grey,
normalised and quantized in one lookup table, into a preallocated NHWC buffer. Vector inputs:
sensor channels sampled at the trigger time (latest, nearest or linear) with a maximum age.
Window inputs: the last ``window_s`` seconds of channels resampled to ``samples`` points. Stale
sensor data follows the binding's policy: ``skip`` the inference, feed ``zero``, or ``hold`` the
last good value. The sampling functions are pure; only the image path calls OpenCV (lazily).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import PipelineError
from edge_runtime.geometry import ImageTransform, plan
from edge_runtime.runtime.model import TensorSpec
from edge_runtime.runtime.quant import pixel_lut, quantize
from edge_runtime.sources.buffer import FloatArray, SensorBuffers

SampleMethod = Literal["latest", "nearest", "linear"]


# -- pure sampling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    """A value sampled at a time, and how old the data behind it is (inf when there is none)."""

    value: float
    age_s: float


def sample_at(times: FloatArray, values: FloatArray, t: float, method: SampleMethod) -> Sampled:
    """Sample one channel (``times`` ascending) at time ``t``; never extrapolates."""
    if times.size == 0:
        return Sampled(0.0, float("inf"))
    after = int(np.searchsorted(times, t, side="right"))  # first sample later than t
    if method == "latest" or after == times.size:
        i = max(after - 1, 0)
        return Sampled(float(values[i]), abs(t - float(times[i])) if after else float(times[0] - t))
    if after == 0:  # all data is later than t: only nearest may use it
        age = float(times[0] - t)
        return Sampled(float(values[0]), age)
    t0, t1 = float(times[after - 1]), float(times[after])
    if method == "nearest":
        i = after - 1 if t - t0 <= t1 - t else after
        return Sampled(float(values[i]), abs(t - float(times[i])))
    w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
    value = float(values[after - 1]) * (1 - w) + float(values[after]) * w
    return Sampled(value, min(t - t0, t1 - t))


def window_times(t_end: float, window_s: float, samples: int) -> FloatArray:
    """``samples`` evenly spaced times ending at ``t_end``, covering ``window_s``."""
    step = window_s / samples
    return t_end - step * np.arange(samples - 1, -1, -1, dtype=np.float64)


def resample_window(
    times: FloatArray, values: FloatArray, t_end: float, window_s: float, samples: int, max_age_s: float
) -> tuple[FloatArray, bool]:
    """(values at :func:`window_times`, fresh). Not fresh when there is no data, the newest
    sample is older than ``max_age_s`` at ``t_end``, or the data does not reach back far enough."""
    grid = window_times(t_end, window_s, samples)
    if times.size < 2:
        return np.zeros(samples), False
    before = times[times <= t_end]
    newest = float(before[-1]) if before.size else float("-inf")
    step = window_s / samples
    fresh = t_end - newest <= max_age_s and float(times[0]) <= grid[0] + step
    return np.interp(grid, times, values), fresh


# -- input builders ---------------------------------------------------------------------------------


class StaleInput(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a builder when its data is stale and its policy is ``skip``."""


def _writer(spec: TensorSpec) -> Any:
    """A function from real values to the input's dtype (quantized when it has quantization)."""
    dtype = np.dtype(spec.dtype)
    if spec.quant is not None:
        q = spec.quant
        return lambda x: quantize(x, q)
    if np.issubdtype(dtype, np.floating):
        return lambda x: np.asarray(x, dtype=dtype)
    raise PipelineError(
        f"input {spec.name!r}: {spec.dtype} without quantization parameters cannot take sensor values"
    )


class ImageBuilder:
    """Camera frame -> the model's image input, through preallocated buffers and one LUT."""

    def __init__(
        self, spec: TensorSpec, resize: str, color: str, pad_value: int, mean: Any, std: Any
    ) -> None:
        shape = spec.shape
        if len(shape) == 4 and shape[0] == 1:
            self.height, self.width, self.channels = shape[1], shape[2], shape[3]
        elif len(shape) == 3 and shape[0] == 1:
            self.height, self.width, self.channels = shape[1], shape[2], 1
        else:
            raise PipelineError(f"input {spec.name!r} {list(shape)} is not an NHWC image")
        want = 1 if color == "gray" else 3
        if self.channels != want:
            raise PipelineError(
                f"input {spec.name!r} has {self.channels} channels but color = {color!r} gives {want}"
            )
        self.spec = spec
        self.resize = resize
        self.color = color
        self.pad_value = pad_value
        self.transform: ImageTransform | None = None
        dtype = np.dtype(spec.dtype)
        self._lut: npt.NDArray[Any] | None = None
        self._float: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        if spec.quant is not None and spec.dtype in ("int8", "uint8"):
            lut = pixel_lut(spec.quant, mean, std)
            self._lut = lut.reshape(256, 1, lut.shape[1]) if lut.ndim == 2 else lut
        elif np.issubdtype(dtype, np.floating):
            self._float = (np.asarray(mean, np.float32), np.asarray(std, np.float32))
        elif spec.dtype != "uint8":
            raise PipelineError(f"input {spec.name!r}: cannot feed an image to a {spec.dtype} input")
        self._canvas: npt.NDArray[np.uint8] = np.full(
            (self.height, self.width, self.channels), pad_value, dtype=np.uint8
        )
        self.out = np.zeros(shape, dtype=dtype)

    def _plan(self, frame: npt.NDArray[np.uint8]) -> ImageTransform:
        h, w = frame.shape[:2]
        t = self.transform
        if t is None or t.src_w != w or t.src_h != h:
            mode: Any = self.resize
            t = self.transform = plan(w, h, self.width, self.height, mode)
        return t

    def build(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        """Fill and return ``self.out`` (reused between calls: copy it to keep it)."""
        import cv2

        t = self._plan(frame)
        new_w, new_h = t.scaled_size
        shrinking = new_w < frame.shape[1]
        resized: npt.NDArray[Any] = cv2.resize(
            frame, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
        if resized.ndim == 3 and resized.shape[2] == 3:
            if self.color == "gray":
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
            elif self.color == "rgb":
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        elif self.color != "gray":
            resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2RGB)
        if resized.ndim == 2:
            resized = resized[:, :, None]
        ox, oy = int(t.ox), int(t.oy)
        canvas: npt.NDArray[Any]
        if t.mode == "letterbox":
            canvas = self._canvas
            canvas[:] = self.pad_value
            canvas[oy : oy + new_h, ox : ox + new_w] = resized
        elif t.mode == "crop":
            canvas = resized[-oy : -oy + self.height, -ox : -ox + self.width]
        else:
            canvas = resized
        target = self.out.reshape(self.height, self.width, self.channels)
        if self._lut is not None:
            mapped = cv2.LUT(canvas, self._lut)
            target[:] = mapped.reshape(target.shape)
        elif self._float is not None:
            mean, std = self._float
            target[:] = (canvas.astype(np.float32) - mean) / std
        else:
            target[:] = canvas
        return self.out


class SensorBuilder:
    """Channels of a sensor source -> a vector input (sampled at a time) or a window input."""

    def __init__(
        self,
        spec: TensorSpec,
        buffers: SensorBuffers,
        channels: list[str],
        stale: str,
        max_age_s: float,
        method: SampleMethod = "linear",
        window: tuple[float, int] | None = None,
    ) -> None:
        self.spec = spec
        self.buffers = buffers
        self.channels = channels
        self.stale = stale
        self.max_age_s = max_age_s
        self.method = method
        self.window = window
        self.stale_count = 0
        self._write = _writer(spec)
        n = len(channels)
        size = int(np.prod(spec.shape))
        if window is None:
            if size != n:
                raise PipelineError(f"input {spec.name!r} {list(spec.shape)} does not hold {n} channels")
            self._real = np.zeros(n, dtype=np.float64)
            self._transpose = False
        else:
            samples = window[1]
            if size != n * samples:
                raise PipelineError(
                    f"input {spec.name!r} {list(spec.shape)} does not hold {samples} samples x {n} channels"
                )
            self._real = np.zeros((samples, n), dtype=np.float64)
            # [.., channels, samples] models want channel-major data; others time-major
            dims = [d for d in spec.shape if d != 1]
            self._transpose = len(dims) == 2 and dims[0] == n and dims[1] == samples and n != samples
        self._last_good: npt.NDArray[np.float64] | None = None

    def build(self, t: float) -> npt.NDArray[Any]:
        """The input at trigger time ``t``; raises :class:`StaleInput` when stale and ``skip``."""
        fresh = True
        for j, channel in enumerate(self.channels):
            since = None if self.window is None else t - self.window[0] - 1.0
            times, values = self.buffers.window(channel, since)
            if self.window is None:
                s = sample_at(times, values, t, self.method)
                self._real[j] = s.value
                fresh = fresh and s.age_s <= self.max_age_s
            else:
                column, ok = resample_window(times, values, t, self.window[0], self.window[1], self.max_age_s)
                self._real[:, j] = column
                fresh = fresh and ok
        if not fresh:
            self.stale_count += 1
            if self.stale == "skip":
                raise StaleInput(f"input {self.spec.name!r}: sensor data older than {self.max_age_s} s")
            if self.stale == "zero":
                self._real[...] = 0.0
            elif self._last_good is not None:
                self._real[...] = self._last_good
            else:
                raise StaleInput(f"input {self.spec.name!r}: no data to hold yet")
        else:
            self._last_good = self._real.copy()
        real = self._real.T if self._transpose else self._real
        result: npt.NDArray[Any] = self._write(real).reshape(self.spec.shape)
        return result
