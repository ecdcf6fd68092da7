"""The suite's fixtures: the backend under test, the bundled models, real brokers and a test PKI.

``EDGE_RUNTIME_TEST_BACKEND`` picks the backend for tests marked ``backend`` (``./dev.sh test``
runs them a second time in ``.venv-tflite`` with ``tflite-runtime``, and a third time with
``onnxruntime``, which runs the .onnx twin of each bundled .tflite model; tests of the TFLite file
format itself are also marked ``tflite`` and left out of that run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.broker import Mosquitto
from devkit.paths import MODELS
from devkit.pki import TestPki
from devkit.prometheus import Prometheus


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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running anonymous mosquitto with persistence, stopped after the test."""
    with Mosquitto(tmp_path, persistence=True) as running:
        yield running


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A factory ``make_broker(**Mosquitto options) -> started Mosquitto``; all stopped afterwards."""
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        options.setdefault("name", f"mosquitto{len(brokers)}" if brokers else "mosquitto")
        started = Mosquitto(tmp_path, **options)
        brokers.append(started)
        started.start()
        return started

    yield make
    for started in reversed(brokers):
        started.stop()


@pytest.fixture
def make_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """A factory ``make_prometheus(jobs, rule_files=()) -> started Prometheus`` (Debian's
    /usr/bin/prometheus scraping ``jobs`` every second); all killed afterwards."""
    servers: list[Prometheus] = []

    def make(jobs: dict[str, list[str]], **options: Any) -> Prometheus:
        options.setdefault("name", f"prometheus{len(servers)}" if servers else "prometheus")
        server = Prometheus(tmp_path, jobs, **options)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """One :class:`TestPki` for the session (read-only: do not modify its files)."""
    return TestPki(tmp_path_factory.mktemp("pki"))
