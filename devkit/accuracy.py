"""Accuracy floors for tests, derived from the figures measured when the bundled models were built.

``edge_runtime/models/manifest.json`` records each model's measured accuracy (held-out split, int8,
also through an MJPG round trip). A test that reads a model's outputs end to end must stay within
:data:`MARGIN` of that figure: a floor far below it (0.95 against a measured 0.998) would let a
preprocessing or quantization regression of several points through unnoticed.
"""

from __future__ import annotations

import json
from typing import Any

from devkit.paths import MODELS

MARGIN = 0.015
"""1.5 points: the tests' samples (60-450 images) and the video round trip they add may cost a
point; a real regression (a wrong resize, colour order or zero point) costs far more."""


def measured(model: str, *keys: str) -> float:
    """The figure at ``models.<model>.accuracy.<keys...>`` of the manifest."""
    entry: Any = json.loads((MODELS / "manifest.json").read_text())["models"][model]["accuracy"]
    for key in keys:
        entry = entry[key]
    return float(entry)


def floor(model: str, *keys: str, margin: float = MARGIN) -> float:
    """The measured figure minus ``margin``."""
    return measured(model, *keys) - margin
