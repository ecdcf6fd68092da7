"""Shared fixtures: paths of the bundled models and the backend under test.

``EDGE_RUNTIME_TEST_BACKEND`` picks the backend for tests marked ``backend`` (``./dev.sh test``
runs them a second time in ``.venv-tflite`` with ``tflite-runtime``, and a third time with
``onnxruntime``, which runs the .onnx twin of each bundled .tflite model; tests of the TFLite file
format itself are also marked ``tflite`` and left out of that run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["broker"]  # real-broker fixtures: broker, make_broker, pki

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "edge_runtime" / "models"
BENCH_MODELS = ROOT / "models"
DATA = Path(__file__).resolve().parent / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backend: runtime and model tests, run under every backend")
    config.addinivalue_line("markers", "tflite: about the .tflite format itself (not run under onnxruntime)")


def missing_delegate_cause(backend: str) -> str:
    """How a TFLite delegate whose library is missing fails under ``backend``."""
    if backend == "onnxruntime":
        return "a TFLite delegate; onnxruntime runs .onnx models on execution providers"
    return "cannot open shared object file"


@pytest.fixture(scope="session")
def backend_name() -> str:
    return os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "litert")


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MODELS / "manifest.json").read_text())
    return data


@pytest.fixture(scope="session")
def digits_path() -> Path:
    return MODELS / "digits_int8.tflite"


@pytest.fixture(scope="session")
def fused_path() -> Path:
    return MODELS / "fused_int8.tflite"
