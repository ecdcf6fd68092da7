"""Camera health and tamper: pure functions over a small subsample of a frame, and the states
built on them with hysteresis.

A check looks at one channel (green, the one closest to luminance) of every ``stride``-th pixel in
both directions, about 128 x 96 values for any frame size, and derives:

- ``mean`` and ``std`` of the brightness: too dark, too bright, covered or blank (no contrast);
- ``sharpness``: the variance of the 4-neighbour Laplacian of the subsample divided by the
  variance of the subsample (blurred when low; the ratio does not change with the contrast or the
  lighting, only with how much of the variation is fine detail);
- ``thumb``: 12 x 16 block means, compared with a reference view by normalised correlation (view
  moved when low), taken from the first usable frame or again by :meth:`TamperDetector.rebase`;
- the subsample itself, compared with the previous one (frozen when identical for ``frozen_s``).

Each state enters when its condition held for ``hold_s`` and leaves when the opposite threshold
held for ``hold_s`` (two thresholds and a hold time: a flickering light does not flood events).
Only the states in the config's ``states`` are judged (and reported).
While covered, blur and view are not judged (a black frame has neither) and keep their state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_runtime.monitor.config import TamperConfig

STATES = ("dark", "bright", "covered", "blurred", "frozen", "moved")
TARGET_WIDTH = 128  # columns of the subsample
THUMB = (12, 16)  # rows, columns of the view thumbnail


@dataclass(frozen=True)
class FrameStats:
    """What one check measured on a frame's subsample."""

    mean: float
    std: float
    sharpness: float
    thumb: npt.NDArray[np.float32]
    sample: npt.NDArray[np.uint8]


def subsample(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Every ``stride``-th pixel of one channel (green for colour frames), about 128 columns."""
    stride = max(1, image.shape[1] // TARGET_WIDTH)
    if image.ndim == 3:
        channel = 1 if image.shape[2] >= 3 else 0
        return np.ascontiguousarray(image[::stride, ::stride, channel])
    return np.ascontiguousarray(image[::stride, ::stride])


def laplacian_variance(g: npt.NDArray[np.uint8] | npt.NDArray[np.float32]) -> float:
    """Variance of the 4-neighbour Laplacian of ``g``: high for sharp edges, low when blurred."""
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    f = g.astype(np.float32, copy=False)
    lap = f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:] - 4.0 * f[1:-1, 1:-1]
    return float(lap.var())


def thumbnail(g: npt.NDArray[np.uint8] | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Block means of ``g`` on a 12 x 16 grid (the layout of the view, not its detail)."""
    rows, cols = THUMB
    h, w = (g.shape[0] // rows) * rows, (g.shape[1] // cols) * cols
    if h == 0 or w == 0:
        return np.zeros(THUMB, np.float32)
    blocks = g[:h, :w].astype(np.float32, copy=False).reshape(rows, h // rows, cols, w // cols)
    means: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3))
    return means


def correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float | None:
    """Normalised correlation of two thumbnails (1 = same layout); None when one is flat."""
    da, db = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((da * da).sum() * (db * db).sum()))
    if denom < 1e-6:
        return None
    return float((da * db).sum() / denom)


def measure(image: npt.NDArray[np.uint8]) -> FrameStats:
    """The statistics of one frame (all from its subsample)."""
    g = subsample(image)
    f = g.astype(np.float32)
    mean = float(f.mean())
    var = float(((f - mean) ** 2).mean())
    return FrameStats(
        mean=mean,
        std=var**0.5,
        sharpness=laplacian_variance(f) / max(var, 1.0),
        thumb=thumbnail(f),
        sample=g,
    )


def same_frame(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], delta: float) -> bool:
    """Whether two subsamples are identical up to a mean absolute difference of ``delta``."""
    if a.shape != b.shape:
        return False
    if delta <= 0:
        return bool(np.array_equal(a, b))
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) <= delta


class Hysteresis:
    """One state: entered when ``enter`` held for ``hold_s``, left when ``leave`` held for ``hold_s``."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.active = False
        self.since: float | None = None  # when the pending change's condition started to hold
        self.changed_at: float | None = None

    def update(self, enter: bool, leave: bool, t: float) -> bool:
        """Feed one observation at time ``t``; True when the state changed."""
        pending = leave if self.active else enter
        if not pending:
            self.since = None
            return False
        if self.since is None:
            self.since = t
        if t - self.since < self.hold_s:
            return False
        self.active = not self.active
        self.since = None
        self.changed_at = t
        return True


Change = tuple[str, bool, float]
"""A state change: (state, now active, the value that decided it)."""


class TamperDetector:
    """The tamper states of one camera, fed one frame at a time with its capture time."""

    def __init__(self, config: TamperConfig) -> None:
        self.cfg = config
        self.states = {name: Hysteresis(config.hold_s) for name in STATES if name in config.states}
        """The states judged (``states`` of the config); the others are never entered."""
        self.reference: npt.NDArray[np.float32] | None = None
        self._previous: npt.NDArray[np.uint8] | None = None
        self._unchanged_since: float | None = None
        self.last: FrameStats | None = None
        self.last_correlation: float | None = None
        self.frozen_for_s = 0.0

    def rebase(self) -> None:
        """Take the next usable frame as the reference view."""
        self.reference = None

    def active(self) -> list[str]:
        return [name for name, s in self.states.items() if s.active]

    def update(self, image: npt.NDArray[np.uint8], t: float) -> list[Change]:
        """Check one frame captured at ``t`` (seconds, monotonic); returns the state changes."""
        c = self.cfg
        st = measure(image)
        self.last = st
        changes: list[Change] = []

        def feed(name: str, enter: bool, leave: bool, value: float) -> None:
            if name in self.states and self.states[name].update(enter, leave, t):
                changes.append((name, self.states[name].active, value))

        feed("dark", st.mean < c.dark_enter, st.mean > c.dark_leave, st.mean)
        feed("bright", st.mean > c.bright_enter, st.mean < c.bright_leave, st.mean)
        feed("covered", st.std < c.covered_enter, st.std > c.covered_leave, st.std)
        usable = st.std > c.covered_leave
        if usable:
            feed("blurred", st.sharpness < c.blur_enter, st.sharpness > c.blur_leave, st.sharpness)
            if self.reference is None:
                self.reference = st.thumb
            corr = correlation(st.thumb, self.reference)
            self.last_correlation = corr
            if corr is not None:
                feed("moved", corr < c.moved_enter, corr > c.moved_leave, corr)
        self._frozen(st.sample, t, feed)
        return changes

    def _frozen(
        self, sample: npt.NDArray[np.uint8], t: float, feed: Callable[[str, bool, bool, float], None]
    ) -> None:
        same = self._previous is not None and same_frame(sample, self._previous, self.cfg.frozen_delta)
        self._previous = sample
        if not same or self._unchanged_since is None:
            self._unchanged_since = t
        self.frozen_for_s = t - self._unchanged_since
        frozen = self.frozen_for_s >= self.cfg.frozen_s
        if "frozen" in self.states:  # the frozen time is its own hold; any new frame ends it
            self.states["frozen"].hold_s = 0.0
        feed("frozen", frozen, not same, self.frozen_for_s)

    def stats(self) -> dict[str, object]:
        st = self.last
        return {
            "states": {name: s.active for name, s in self.states.items()},
            "brightness": None if st is None else round(st.mean, 2),
            "contrast": None if st is None else round(st.std, 2),
            "sharpness": None if st is None else round(st.sharpness, 2),
            "view_correlation": None if self.last_correlation is None else round(self.last_correlation, 3),
            "frozen_s": round(self.frozen_for_s, 3),
        }
