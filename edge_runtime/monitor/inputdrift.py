"""Drift of a model's inputs against a reference: per-channel histograms of the preprocessed input.

The reference (``tools/monitor_reference.py``, from a held-out set) holds, for each model input, a
``bins``-bin histogram per channel (the last axis: the colour channel of an HWC image, the feature
of a ``[samples, features]`` sensor window) of the values the model is fed: int8/uint8 codes for a
quantized input, floats otherwise. The bins split ``[lo, hi]`` (per channel, the held-out set's
smallest and largest value) evenly; values outside fall into the end bins.

The live side (:class:`LiveInputDrift`) is fed on the pipeline worker, right after an input is
built. It keeps every ``every``-th input only, and of that input at most about ``max_values``
values per channel (a strided subsample, the stride made odd so that it does not fall on the same
image columns row after row). For 8-bit inputs the bin of each value is one lookup in a 256-entry
table per channel and the histogram one ``np.bincount``; a window of the last ``window`` sampled
histograms is kept with its running sum, so a report is one PSI per channel over ``bins`` cells
(:func:`edge_runtime.monitor.drift.psi`), computed when health is asked for, never per input.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.monitor.psi import level, psi
from edge_runtime.runtime.model import TensorSpec
from edge_runtime.runtime.quant import quantize

BINS = 16
MAX_VALUES = 256  # per channel of a sampled input
ORIENT_BINS = 10
MAX_SIDE = 64  # the orientation statistic reads at most about 64 x 64 pixels of an image
_EIGHT_BIT = ("int8", "uint8")


def rows(array: npt.NDArray[Any], channels: int) -> npt.NDArray[Any]:
    """``array`` as ``[values, channels]`` (the channel is the last axis)."""
    return array.reshape(-1, channels)


def stride_for(values: int, max_values: int) -> int:
    """The row stride that keeps at most about ``max_values`` of ``values`` rows (odd when > 1)."""
    stride = max(1, values // max(1, max_values))
    return stride | 1 if stride > 1 else 1


def bin_edges(lo: float, hi: float, bins: int, integer: bool) -> npt.NDArray[np.float64]:
    """The ``bins - 1`` inner edges splitting ``[lo, hi]`` (integers: ``[lo, hi + 1)``) evenly."""
    top = hi + 1 if integer else hi
    return np.linspace(lo, top, bins + 1)[1:-1]


def binned(
    values: npt.NDArray[Any], lo: Sequence[float], hi: Sequence[float], bins: int, integer: bool
) -> npt.NDArray[np.int64]:
    """Per-channel histograms ``[channels, bins]`` of ``values`` ``[n, channels]`` (reference side)."""
    out = np.zeros((values.shape[1], bins), dtype=np.int64)
    for c in range(values.shape[1]):
        idx = np.searchsorted(bin_edges(lo[c], hi[c], bins, integer), values[:, c], side="right")
        out[c] = np.bincount(idx, minlength=bins)
    return out


def as_fed(values: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    """Real input values (``[N, ...]`` or one input) as the model is fed them: quantized to its
    integer dtype when the input is quantized, else cast to its dtype."""
    if spec.quant is not None:
        return quantize(values, spec.quant).astype(spec.dtype)
    return np.asarray(values).astype(spec.dtype)


def orientation(image: npt.NDArray[Any]) -> float:
    """The share of horizontal gradient energy of an ``[H, W, C]`` image (its first channel, on a
    strided subsample of at most about ``MAX_SIDE`` pixels a side): ``sum|dx| / (sum|dx| + sum|dy|)``,
    0.5 for a flat or isotropic image. Rotating the scene by 90 degrees turns ``v`` into ``1 - v``."""
    h, w = image.shape[0], image.shape[1]
    step = max(1, max(h, w) // MAX_SIDE)
    x = image[::step, ::step, 0]
    x = x.astype(np.int16) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    dx = float(np.abs(np.diff(x, axis=1)).sum())
    dy = float(np.abs(np.diff(x, axis=0)).sum())
    return 0.5 if dx + dy == 0 else dx / (dx + dy)


def orientation_bin(value: float) -> int:
    return min(ORIENT_BINS - 1, max(0, int(value * ORIENT_BINS)))


def input_reference(
    samples: npt.NDArray[Any], *, name: str, position: int, bins: int = BINS
) -> dict[str, Any]:
    """The reference of one model input fed ``samples`` (``[N, *input shape]``, as fed: dtype kept)."""
    arr = np.asarray(samples)
    channels = int(arr.shape[-1]) if arr.ndim >= 2 else 1  # the last axis: colour, feature, sensor axis
    values = rows(arr, channels)
    integer = np.issubdtype(arr.dtype, np.integer)
    lo = [float(v) for v in values.min(axis=0)]
    hi = [float(v) for v in values.max(axis=0)]
    hi = [h if h > low else low + (1.0 if integer else 1e-6) for low, h in zip(lo, hi, strict=True)]
    ref: dict[str, Any] = {
        "position": position,
        "name": name,
        "dtype": str(arr.dtype),
        "channels": channels,
        "bins": bins,
        "lo": lo,
        "hi": hi,
        "samples": int(arr.shape[0]),
        "hist": binned(values, lo, hi, bins, integer).tolist(),
    }
    if arr.ndim == 4 and min(arr.shape[1:3]) >= 2:  # [N, H, W, C]: an image
        bins_of = [orientation_bin(orientation(image)) for image in arr]
        ref["image"] = list(arr.shape[1:])
        ref["orientation_hist"] = np.bincount(bins_of, minlength=ORIENT_BINS).tolist()
    return ref


def checked_inputs(doc: Any, where: str) -> list[dict[str, Any]]:
    """The ``inputs`` of a reference if usable, else ValueError."""
    if not isinstance(doc, list):
        raise ValueError(f"{where}: inputs must be a list")
    for i, ref in enumerate(doc):
        try:
            channels, bins = int(ref["channels"]), int(ref["bins"])
            ok = (
                isinstance(ref["position"], int)
                and str(ref["dtype"])
                and 2 <= bins <= 256
                and 1 <= channels <= 4096
                and len(ref["lo"]) == len(ref["hi"]) == len(ref["hist"]) == channels
                and all(len(row) == bins for row in ref["hist"])
                and all(float(h) > float(lo) for lo, h in zip(ref["lo"], ref["hi"], strict=True))
                and ("orientation_hist" not in ref or len(ref["orientation_hist"]) == ORIENT_BINS)
                and ("image" not in ref or len(ref["image"]) == 3)
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{where}: inputs[{i}] is not a usable input histogram reference")
    return doc


def mismatch(ref: Mapping[str, Any], spec: TensorSpec) -> str:
    """Why the reference of one input cannot judge the model input ``spec`` (or "")."""
    shape = tuple(int(v) for v in spec.shape)
    if str(ref["dtype"]) != spec.dtype:
        return f"input {spec.name}: reference dtype {ref['dtype']}, model {spec.dtype}"
    if (shape[-1] if len(shape) >= 2 else 1) != int(ref["channels"]):  # as input_reference counts them
        return f"input {spec.name}: reference has {ref['channels']} channels, model shape {list(shape)}"
    if "image" in ref and tuple(int(v) for v in ref["image"]) != shape[1:]:
        return f"input {spec.name}: reference image {ref['image']}, model shape {list(shape)}"
    return ""


class Histogrammer:
    """The live histograms of one input against its reference entry (see the module docstring)."""

    def __init__(self, ref: Mapping[str, Any], max_values: int = MAX_VALUES) -> None:
        self.name = str(ref["name"])
        self.position = int(ref["position"])
        self.channels = int(ref["channels"])
        self.bins = int(ref["bins"])
        self.dtype = str(ref["dtype"])
        self.max_values = max_values
        self.expected = np.asarray(ref["hist"], dtype=np.float64)
        self.lo = [float(v) for v in ref["lo"]]
        self.hi = [float(v) for v in ref["hi"]]
        integer = self.dtype in _EIGHT_BIT or np.issubdtype(np.dtype(self.dtype), np.integer)
        self.edges = [bin_edges(lo, hi, self.bins, integer) for lo, hi in zip(self.lo, self.hi, strict=True)]
        self.chan = np.arange(self.channels, dtype=np.intp)
        self.offsets = self.chan * self.bins
        self.lut: npt.NDArray[np.intp] | None = None
        if self.dtype in _EIGHT_BIT:  # code (as uint8 bits) -> channel * bins + bin
            codes = np.arange(256, dtype=np.uint8).view(np.dtype(self.dtype)).astype(np.float64)
            self.lut = np.stack(
                [
                    np.searchsorted(e, codes, side="right") + off
                    for e, off in zip(self.edges, self.offsets, strict=True)
                ]
            ).astype(np.intp)
        self.image = tuple(int(v) for v in ref["image"]) if "orientation_hist" in ref else None
        self.expected_orientation = np.asarray(ref.get("orientation_hist") or [], dtype=np.float64)

    def counts(self, array: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """``[channels * bins]`` counts of a strided subsample of ``array`` (one input, as fed)."""
        values = rows(array, self.channels)
        sub = values[:: stride_for(len(values), self.max_values)]
        if self.lut is not None and array.dtype.itemsize == 1:
            idx = self.lut[self.chan, sub.view(np.uint8)]
        else:
            idx = np.stack(
                [np.searchsorted(e, sub[:, c], side="right") for c, e in enumerate(self.edges)], axis=1
            )
            idx = idx + self.offsets
        counts = np.bincount(idx.ravel(), minlength=self.channels * self.bins + ORIENT_BINS)
        if self.image is not None:  # the last ORIENT_BINS cells: this image's orientation bin
            counts[self.channels * self.bins + orientation_bin(orientation(array.reshape(self.image)))] += 1
        return counts

    def report(self, total: npt.NDArray[np.int64]) -> dict[str, Any]:
        cells = self.channels * self.bins
        live = total[:cells].reshape(self.channels, self.bins)
        values = [psi(self.expected[c], live[c]) for c in range(self.channels)]
        out: dict[str, Any] = {"channels": [round(v, 4) for v in values]}
        if self.image is not None:
            out["orientation"] = round(psi(self.expected_orientation, total[cells:]), 4)
            values.append(out["orientation"])
        out["psi"] = round(max(values), 4)
        return out


class LiveInputDrift:
    """Every ``every``-th input of a pipeline's first model, the last ``window`` of them against
    the reference histograms (thread-safe: fed on the worker, read by health)."""

    def __init__(
        self,
        refs: Sequence[Mapping[str, Any]],
        *,
        every: int = 10,
        window: int = 200,
        min_samples: int = 50,
        max_values: int = MAX_VALUES,
    ) -> None:
        self.inputs = {int(r["position"]): Histogrammer(r, max_values) for r in refs}
        self.every = every
        self.min_samples = min_samples
        self.seen = 0
        # per input: a ring of the last ``window`` sampled histograms and their running sum
        self.rings = {
            p: np.zeros((window, h.channels * h.bins + ORIENT_BINS), dtype=np.int32)
            for p, h in self.inputs.items()
        }
        self.filled = dict.fromkeys(self.inputs, 0)
        self.added = dict.fromkeys(self.inputs, 0)
        self.totals = {p: np.zeros(ring.shape[1], dtype=np.int64) for p, ring in self.rings.items()}
        self.window = window
        self._lock = threading.Lock()

    def mismatches(self, specs: Sequence[TensorSpec]) -> list[str]:
        """Why this reference cannot judge a model with inputs ``specs`` (empty: it can)."""
        by_position = {spec.position: spec for spec in specs}
        problems = []
        for position, hist in self.inputs.items():
            spec = by_position.get(position)
            if spec is None:
                problems.append(f"the model has no input {position} ({hist.name})")
                continue
            ref = {"dtype": hist.dtype, "channels": hist.channels}
            if hist.image is not None:
                ref["image"] = list(hist.image)
            problems += [why for why in [mismatch(ref, spec)] if why]
        return problems

    def due(self) -> bool:
        """Count one inference; True when its inputs are to be sampled."""
        self.seen += 1
        return self.seen % self.every == 0

    def add(self, position: int, array: npt.NDArray[Any]) -> None:
        """One sampled input (the array as fed to the model)."""
        hist = self.inputs.get(position)
        if hist is None:
            return
        counts = hist.counts(array).astype(np.int32)  # at most max_values per cell: int32 halves the window
        with self._lock:
            row = self.rings[position][self.added[position] % self.window]
            self.totals[position] += counts
            self.totals[position] -= row  # the oldest (zeros until the ring is full)
            row[:] = counts
            self.added[position] += 1
            self.filled[position] = min(self.window, self.filled[position] + 1)

    def report(self) -> dict[str, Any]:
        with self._lock:
            sampled = min(self.filled.values(), default=0)
            totals = {p: t.copy() for p, t in self.totals.items()}
        if sampled < self.min_samples:
            return {"samples": sampled, "level": "unknown"}
        inputs = {h.name: h.report(totals[p]) for p, h in self.inputs.items()}
        worst = max(r["psi"] for r in inputs.values())
        return {"samples": sampled, "inputs": inputs, "psi": worst, "level": level(worst)}
