"""Where things are in a checkout: the bundled models, the benchmark models, the test data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "edge_runtime" / "models"
BENCH_MODELS = ROOT / "models"
DATA = ROOT / "tests" / "data"
