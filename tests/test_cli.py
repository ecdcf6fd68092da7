"""The `inspect` and `bench` commands as a user runs them: exit codes, stdout, stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing_delegate_cause

from devkit.paths import BENCH_MODELS, MODELS, ROOT

pytestmark = pytest.mark.backend

TFLITE_PYTHON = ROOT / ".venv-tflite" / "bin" / "python"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def backend() -> str:
    return os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "litert")


@pytest.mark.tflite
def test_inspect_json_on_the_bundled_digits_model() -> None:
    proc = cli("inspect", str(MODELS / "digits_int8.tflite"), "--json", "--backend", backend())
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (inp,) = report["inputs"]
    (out,) = report["outputs"]
    for tensor in (inp, out):
        assert tensor["dtype"] == "int8"
        assert isinstance(tensor["scale"], float) and tensor["scale"] > 0
        assert isinstance(tensor["zero_point"], int)
    assert report["fully_integer"] is True
    assert report["weight_sparsity"]["total"] >= 0.45
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(report["ops"])
    assert report["custom_ops"] == []
    assert len(report["sha256"]) == 64
    delegates = {d["delegate"]: d for d in report["delegates"]}
    assert delegates["cpu"]["loads"] is True
    assert delegates["edgetpu"]["loads"] is False
    assert "libedgetpu.so.1: cannot open shared object file" in delegates["edgetpu"]["cause"]
    assert report["backend"]["name"] == backend()


@pytest.mark.tflite
def test_inspect_text_lists_the_essentials() -> None:
    proc = cli("inspect", str(MODELS / "fused_int8.tflite"), "--backend", backend())
    assert proc.returncode == 0, proc.stderr
    for needle in (
        "serving_default_image",
        "serving_default_vibration",
        "integer     yes",
        "sparsity",
        "cpu       loads",
    ):
        assert needle in proc.stdout


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    digits = (MODELS / "digits_int8.tflite").read_bytes()
    files = {
        "empty": b"",
        "text": b"this is not a model\n" * 20,
        "random": os.urandom(4096),
        "truncated": digits[: len(digits) // 2],
        "header only": digits[:12],
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.tflite"
        path.write_bytes(data)
        paths[name] = path
    paths["missing"] = tmp_path / "missing.tflite"
    paths["directory"] = tmp_path
    return paths


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_bad_model_files_give_exit_1_and_one_line(tmp_path: Path, command: str) -> None:
    for name, path in _bad_files(tmp_path).items():
        proc = cli(command, str(path), "--backend", backend())
        assert proc.returncode == 1, (name, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (name, proc.stderr)
        assert lines[0].startswith("edge-runtime: error: ") and str(path) in lines[0], (name, lines)
        assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2() -> None:
    assert cli("bench").returncode == 2
    assert cli("bench", "x.tflite", "--runs", "0").returncode == 2
    assert cli("frobnicate").returncode == 2


def test_bench_json_reports_latency_and_the_delegate_used() -> None:
    proc = cli(
        "bench", str(MODELS / "digits_int8.tflite"), "--runs", "50", "--warmup", "5", "--delegate", "edgetpu",
        "--threads", "1", "--backend", backend(), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["backend"] == backend()
    assert result["delegate"] == "cpu"
    assert f"edgetpu failed: libedgetpu.so.1: {missing_delegate_cause(backend())}" in result["placement"]
    assert result["runs"] == 50
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["load_ms"] > 0 and result["first_invoke_ms"] > 0


def test_bench_all_backends_side_by_side() -> None:
    if not TFLITE_PYTHON.exists():
        pytest.fail(f"{TFLITE_PYTHON} is missing: run ./dev.sh setup to create the tflite-runtime venv")
    model = BENCH_MODELS / "mobilenet_v2_int8.tflite"
    proc = cli(
        "bench", str(model), "--backend", "all", "--python", str(TFLITE_PYTHON),
        "--runs", "3", "--warmup", "1", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert all("unavailable" not in rows[b] for b in ("litert", "tflite-runtime", "onnxruntime")), proc.stdout
    assert "onnxruntime ran " + str(model.with_suffix(".onnx")) in proc.stdout
    proc = cli(
        "bench", str(MODELS / "digits_int8.tflite"), "--backend", "all", "--python", str(TFLITE_PYTHON),
        "--runs", "20", "--json",
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert [row["backend"] for row in data] == ["litert", "tflite-runtime", "onnxruntime"]
    assert data[2]["result"]["model"] == str(MODELS / "digits_int8.onnx")
    assert all(row["result"] and row["result"]["p50_ms"] > 0 for row in data), data
