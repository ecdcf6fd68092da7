"""Fusion: every model input tensor built from its source at the trigger time.

Image inputs: a camera frame resized (stretch, letterbox or crop), converted to RGB, BGR or grey,
normalised and quantized in one lookup table, into a preallocated NHWC buffer. Shrinking averages
whole blocks of pixels (OpenCV's fast ``INTER_AREA``; for crop only the region that is kept), then
resamples linearly by the rest of the scale, exactly as :mod:`edge_runtime.geometry` maps it. Vector inputs:
sensor channels sampled at the trigger time (latest, nearest or linear) with a maximum age.
Window inputs: the last ``window_s`` seconds of channels resampled to ``samples`` points. Stale
sensor data follows the binding's policy: ``skip`` the inference, feed ``zero``, or ``hold`` the
last good value. The sampling functions are pure; only the image path calls OpenCV (lazily).
"""

from __future__ import annotations

import math
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


# Below this many source pixels ImageBuilder keeps the plain INTER_AREA: it costs under 0.2 ms there
# (less than the two steps below a few thousand pixels), and the linear second step blurs what is
# left: on a cascade's digit boxes (about 32x32 -> 8x8) the digits model drops from 96 % to 91 %.
AREA_FAST_MIN_PIXELS = 1 << 15


@dataclass(frozen=True, eq=False)
class AreaResize:
    """How to produce a transform's pixels fast: ``INTER_AREA`` by whole factors (OpenCV's fast path)
    over a source region, then a linear resample by what remains of the scale (a factor below 2).

    ``region`` (x0, y0, x1, y1) is in source pixels, its width and height multiples of ``factors``
    (kx, ky). ``size`` (width, height) is the output: the scaled image (stretch, letterbox) or the cut
    window (crop). ``matrix`` maps the reduced image onto the output the way the transform maps the
    source (``cv2.warpAffine`` convention); None when ``cv2.resize`` to ``size`` does exactly that.
    """

    region: tuple[int, int, int, int]
    factors: tuple[int, int]
    size: tuple[int, int]
    matrix: npt.NDArray[np.float64] | None


def _area_axis(src: int, scale: float, offset: float, out: int, k: int) -> tuple[int, int, float, float]:
    """One axis of :func:`area_plan`: the source range [lo, hi), ``k`` times a whole number long,
    that holds what ``x * scale + offset`` maps into [0, out) (as much of it as the frame has), and
    ``X = a * u + b`` from reduced pixel centres ``u`` to output pixel centres ``X``."""
    lo = max(0, math.floor(-offset / scale + 1e-9))
    hi = min(src, math.ceil((out - offset) / scale - 1e-9))
    blocks = min(-(-(hi - lo) // k), src // k)  # whole blocks of k, rounded up, that fit the frame
    lo = min(lo, src - blocks * k)
    a = scale * k
    return lo, lo + blocks * k, a, scale * lo + offset + 0.5 * a - 0.5


def area_plan(t: ImageTransform) -> AreaResize | None:
    """The fast way to shrink by ``t`` (see :class:`AreaResize`), or None when ``t`` does not
    shrink both axes, one of them at least twofold, or the frame is smaller than
    :data:`AREA_FAST_MIN_PIXELS` (``cv2.resize`` does it as it is)."""
    new_w, new_h = t.scaled_size
    kx, ky = t.src_w // new_w, t.src_h // new_h
    if min(kx, ky) < 1 or max(kx, ky) < 2 or t.src_w * t.src_h < AREA_FAST_MIN_PIXELS:
        return None
    crop = t.mode == "crop"
    size = (t.dst_w, t.dst_h) if crop else (new_w, new_h)
    x0, x1, ax, bx = _area_axis(t.src_w, t.sx, t.ox if crop else 0.0, size[0], kx)
    y0, y1, ay, by = _area_axis(t.src_h, t.sy, t.oy if crop else 0.0, size[1], ky)
    reduced = ((x1 - x0) // kx, (y1 - y0) // ky)
    exact = all(
        math.isclose(a * n, out, abs_tol=1e-6) and math.isclose(b, 0.5 * a - 0.5, abs_tol=1e-6)
        for a, b, n, out in ((ax, bx, reduced[0], size[0]), (ay, by, reduced[1], size[1]))
    )
    matrix = None if exact else np.array([[ax, 0.0, bx], [0.0, ay, by]])
    return AreaResize((x0, y0, x1, y1), (kx, ky), size, matrix)


def area_resize(frame: npt.NDArray[np.uint8], how: AreaResize) -> npt.NDArray[Any]:
    """``frame`` resized as :func:`area_plan` says: close to ``cv2.resize(INTER_AREA)`` and several
    times faster when the ratio is not a whole number (OpenCV's generic area path)."""
    import cv2

    x0, y0, x1, y1 = how.region
    kx, ky = how.factors
    size = ((x1 - x0) // kx, (y1 - y0) // ky)
    image: npt.NDArray[Any] = cv2.resize(frame[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    if how.matrix is not None:
        flags, border = cv2.INTER_LINEAR, cv2.BORDER_REPLICATE
        image = cv2.warpAffine(image, how.matrix, how.size, flags=flags, borderMode=border)
    elif size != how.size:
        image = cv2.resize(image, how.size, interpolation=cv2.INTER_LINEAR)
    return image


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
        self._area: AreaResize | None = None
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
            self._area = area_plan(t)
        return t

    def _resized(self, frame: npt.NDArray[np.uint8], t: ImageTransform) -> npt.NDArray[Any]:
        """``frame`` scaled as ``t`` says, and for crop cut to the window."""
        import cv2

        if self._area is not None:
            return area_resize(frame, self._area)
        new_w, new_h = t.scaled_size
        shrinking = new_w < frame.shape[1]
        resized: npt.NDArray[Any] = cv2.resize(
            frame, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
        if t.mode == "crop":
            ox, oy = int(t.ox), int(t.oy)
            return resized[-oy : -oy + self.height, -ox : -ox + self.width]
        return resized

    def build(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        """Fill and return ``self.out`` (reused between calls: copy it to keep it)."""
        import cv2

        t = self._plan(frame)
        resized = self._resized(frame, t)
        if resized.ndim == 3 and resized.shape[2] == 3:
            if self.color == "gray":
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
            elif self.color == "rgb":
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        elif self.color != "gray":
            resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2RGB)
        if resized.ndim == 2:
            resized = resized[:, :, None]
        canvas: npt.NDArray[Any] = resized
        if t.mode == "letterbox":
            ox, oy = int(t.ox), int(t.oy)
            new_w, new_h = t.scaled_size
            canvas = self._canvas
            canvas[:] = self.pad_value
            canvas[oy : oy + new_h, ox : ox + new_w] = resized
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
        *,
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

    def real_values(self) -> npt.NDArray[np.float64]:
        """A copy of the last built input's real values (before the input's quantization), in the
        input's shape: what data capture stores."""
        real = self._real.T if self._transpose else self._real
        values: npt.NDArray[np.float64] = real.reshape(self.spec.shape).copy()
        return values
