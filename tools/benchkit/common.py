"""Constants, targets and small helpers shared by the benchmark."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "tools" / "bench.py"  # the entry point; children run it again with CHILD


MODEL_PATHS = {
    "mobilenet": REPO / "models" / "mobilenet_v2_int8.tflite",
    "digits": REPO / "edge_runtime" / "models" / "digits_int8.tflite",
}
VIDEO_VERSION = 1
VIDEO_SIZE = (640, 480)
VIDEO_FRAMES = 300
VIDEO_FPS = 30.0
CACHE = Path(tempfile.gettempdir()) / "edge-runtime-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHILD = "_child"
RESULT_PREFIX = "BENCH-RESULT "
DAEMON = ["-m", "edge_runtime"]  # how (c) starts the daemon: python DAEMON run --config ...; see --daemon
ENGINE = {"python": sys.executable, "backend": "litert"}
"""The Python that runs children and the daemon, and the inference engine they use: (d)'s slow row
switches both to tflite-runtime in its own venv (``.venv-tflite``, numpy 1.x) with :func:`engine`."""
SLOW_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
RING = 1 << 18  # invoke times kept by the bare loop (the last 262,144)

# targets of the issue (mobilenet_v2_int8 on a 2-core machine)
TARGET_FPS_RATIO = 0.9
TARGET_LATENCY_MARGIN_MS = 5.0
TARGET_RSS_MB = 120.0
TARGET_RSS_GROWTH_MB = 2.0
TARGET_FIRST_RESULT_S = 2.0


@contextlib.contextmanager
def engine(python: str, backend: str) -> Iterator[None]:
    """Children and daemons started inside run under ``python`` with ``backend``."""
    saved = dict(ENGINE)
    ENGINE.update(python=python, backend=backend)
    try:
        yield
    finally:
        ENGINE.update(saved)


def interpreter_class(backend: str) -> Any:
    """The ``Interpreter`` of ``backend`` (litert or tflite-runtime), for the measuring children."""
    if backend == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter as TfliteInterpreter

        return TfliteInterpreter
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(values: Sequence[float] | npt.NDArray[np.float64]) -> dict[str, float]:
    """p50/p95/p99/mean/max of ``values`` (NaN when empty)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return {"p50": nan, "p95": nan, "p99": nan, "mean": nan, "max": nan, "n": 0}
    p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "mean": float(a.mean()),
        "max": float(a.max()),
        "n": int(a.size),
    }
