"""The inference backends: LiteRT (``ai_edge_litert``, default) and ``tflite_runtime`` for .tflite
models, ONNX Runtime (``onnxruntime``, the ``onnx`` extra) for .onnx models.

All expose the same ``Interpreter`` and ``load_delegate`` (ONNX Runtime through the adapter in
:mod:`edge_runtime.runtime.ortbackend`); this module is the only place that imports them, lazily,
so that config validation and ``inspect`` work without any. The model file picks the engine: an
.onnx file always runs on onnxruntime, a .tflite file on the TFLite backend chosen.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from edge_runtime.errors import BackendUnavailableError

BackendName = Literal["litert", "tflite-runtime", "onnxruntime"]
BackendChoice = Literal["auto", "litert", "tflite-runtime", "onnxruntime"]
ONNXRUNTIME: BackendName = "onnxruntime"

# name -> (module with Interpreter and load_delegate, distribution for the version, pip command)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert", "pip install ai-edge-litert"),
    "tflite-runtime": (
        "tflite_runtime.interpreter",
        "tflite-runtime",
        "pip install 'edge-runtime[tflite-runtime]'",
    ),
    "onnxruntime": ("edge_runtime.runtime.ortbackend", "onnxruntime", "pip install 'edge-runtime[onnx]'"),
}
AUTO_ORDER: tuple[BackendName, ...] = ("litert", "tflite-runtime")  # for .tflite models
BACKEND_NAMES: tuple[BackendName, ...] = (*AUTO_ORDER, ONNXRUNTIME)


@dataclass(frozen=True)
class Backend:
    """An importable runtime: its interpreter class and delegate loader."""

    name: BackendName
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]


_cache: dict[str, Backend] = {}


def _import(name: BackendName) -> Backend:
    if name in _cache:
        return _cache[name]
    module_name, dist, pip_cmd = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {name} is not installed ({exc}); install it with: {pip_cmd}"
        ) from exc
    if name == "tflite-runtime":
        _check_numpy_for_tflite_runtime(pip_cmd)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    backend = Backend(name, version, module.Interpreter, module.load_delegate)
    _cache[name] = backend
    return backend


def _check_numpy_for_tflite_runtime(pip_cmd: str) -> None:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise BackendUnavailableError(
            f"backend tflite-runtime 2.14 needs numpy<2 but numpy {numpy.__version__} is "
            f"installed; use a separate environment with: {pip_cmd}"
        )


def get_backend(choice: str = "auto", model_format: str | None = None) -> Backend:
    """The backend for ``choice`` and, when given, a model of ``model_format`` (``tflite`` or
    ``onnx``): an ONNX model always gets onnxruntime (``runtime.backend`` picks the engine of the
    .tflite models, so ensembles can mix formats); ``auto`` takes LiteRT, else tflite-runtime."""
    if model_format == "onnx" and (choice == "auto" or choice in _BACKENDS):
        return _import(ONNXRUNTIME)
    if choice == ONNXRUNTIME and model_format == "tflite":
        raise BackendUnavailableError(
            "backend onnxruntime runs .onnx models; a .tflite model needs auto, litert or tflite-runtime"
        )
    if choice == "auto":
        for name in AUTO_ORDER:
            try:
                return _import(name)
            except BackendUnavailableError:
                continue
        raise BackendUnavailableError(
            "no inference backend is installed: pip install ai-edge-litert "
            "(or, on boards that need it, pip install 'edge-runtime[tflite-runtime]')"
        )
    if choice not in _BACKENDS:
        raise BackendUnavailableError(
            f"unknown backend {choice!r}; choose one of auto, {', '.join(_BACKENDS)}"
        )
    chosen: BackendName = "litert" if choice == "litert" else "tflite-runtime"
    if choice == ONNXRUNTIME:
        chosen = ONNXRUNTIME
    return _import(chosen)
