"""The population stability index and its levels (shared by output and input drift).

``PSI = sum((a - e) * ln(a / e))`` over the cells of two histograms, both normalised and floored
at ``FLOOR``: the symmetric Kullback-Leibler divergence. Levels as operators use them: below 0.1
``ok``, 0.1 to 0.25 ``watch``, from 0.25 ``drift``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FLOOR = 1e-4
WATCH, DRIFT = 0.1, 0.25
LEVELS = ("ok", "watch", "drift")


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """The population stability index of ``actual`` against ``expected`` (counts or shares)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty distributions over the same cells")
    e = np.maximum(e / e.sum(), FLOOR)
    a = np.maximum(a / a.sum(), FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def level(value: float) -> str:
    return "ok" if value < WATCH else "watch" if value < DRIFT else "drift"
