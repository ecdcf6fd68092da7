"""The quantization engines, each run in a child process, tried in order with every failure kept.

``ai-edge-quantizer`` (pure Python over LiteRT; needs a signature, which :mod:`.rewrite` adds) and
``legacy`` (the calibrator in the LiteRT wheel). An engine fails with a cause: not installed, an
exception in the engine (its type and message), a crash of the child (the signal, e.g. a
segmentation fault), a timeout, or a result that is not a valid, fully-integer model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import EdgeRuntimeError

# engine key -> (module that must be importable, install hint)
ENGINES: dict[str, tuple[str, str]] = {
    "ai-edge-quantizer": ("ai_edge_quantizer", "pip install 'edge-runtime[optimize]'"),
    "legacy": ("ai_edge_litert._pywrap_tensorflow_lite_calibration_wrapper", "pip install ai-edge-litert"),
}
ENGINE_ORDER: tuple[str, ...] = ("ai-edge-quantizer", "legacy")
# input/output types each engine can make
IO_TYPES: dict[str, tuple[str, ...]] = {
    "ai-edge-quantizer": ("int8",),
    "legacy": ("int8", "uint8", "float32"),
}
STDERR_TAIL = 4000


@dataclass(frozen=True)
class Attempt:
    """One engine's try: its result (model bytes) or why it failed, and how long it took."""

    engine: str
    seconds: float
    model: bytes | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.model is not None


def _signal_text(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    what = {"SIGSEGV": "a segmentation fault", "SIGABRT": "an abort", "SIGKILL": "SIGKILL (out of memory?)"}
    return f"the engine crashed its process with {what.get(name, name)} ({name}, signal {-code})"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _precheck(engine: str, io: str) -> str:
    """Why ``engine`` cannot even start here ("" when it can)."""
    module, hint = ENGINES[engine]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return f"not installed: {hint}"
    if io not in IO_TYPES[engine]:
        return f"makes {', '.join(IO_TYPES[engine])} inputs and outputs only, not {io}"
    return ""


def run_engine(
    engine: str,
    model: bytes,
    calibration: Sequence[Sequence[npt.NDArray[np.float32]]],
    *,
    io: str = "int8",
    timeout_s: float = 600.0,
    python: str | None = None,
) -> Attempt:
    """Quantize ``model`` with ``engine`` in a child process; never raises for an engine failure."""
    started = time.perf_counter()
    problem = _precheck(engine, io)
    if problem:
        return Attempt(engine, 0.0, error=problem)
    with tempfile.TemporaryDirectory(prefix="edge-runtime-optimize-") as tmp:
        folder = Path(tmp)
        (folder / "model.tflite").write_bytes(model)
        arrays = {
            f"input_{i}": np.stack([np.asarray(sample[i], dtype=np.float32) for sample in calibration])
            for i in range(len(calibration[0]))
        }
        np.savez(folder / "calibration.npz", **arrays)  # type: ignore[arg-type]
        (folder / "request.json").write_text(json.dumps({"engine": engine, "io": io}))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONFAULTHANDLER": "0"}
        cmd = [python or sys.executable, "-m", "edge_runtime.optimize.child", str(folder)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return Attempt(engine, time.perf_counter() - started, error=f"timed out after {timeout_s:g} s")
        seconds = time.perf_counter() - started
        if proc.returncode < 0:
            return Attempt(engine, seconds, error=_signal_text(proc.returncode))
        result_path = folder / "result.json"
        if proc.returncode != 0 or not result_path.exists():
            tail = _last_line(proc.stderr[-STDERR_TAIL:]) or f"exit status {proc.returncode}"
            return Attempt(engine, seconds, error=f"the engine process failed: {tail}")
        result = json.loads(result_path.read_text())
        if not result.get("ok"):
            return Attempt(engine, seconds, error=str(result.get("error", "failed")))
        return Attempt(engine, seconds, model=(folder / "out.tflite").read_bytes())


def engine_order(choice: str) -> tuple[str, ...]:
    """``auto`` tries every engine in :data:`ENGINE_ORDER`; a name tries that one alone."""
    if choice == "auto":
        return ENGINE_ORDER
    if choice not in ENGINES:
        raise EngineChoiceError(f"unknown engine {choice!r}; choose auto, {', '.join(ENGINES)}")
    return (choice,)


class EngineChoiceError(EdgeRuntimeError, ValueError):
    """An engine name that does not exist."""
