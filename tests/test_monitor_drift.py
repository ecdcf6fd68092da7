"""Drift (PSI) of the real digits model's outputs against a reference written from the real
held-out set by tools/monitor_reference.py: a held-out window stays ok, the same digits inverted
or rotated reach drift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from devkit.paths import MODELS
from edge_runtime.monitor.drift import LiveDrift, load_reference, model_scores
from edge_runtime.monitor.psi import level, psi
from edge_runtime.runtime.model import Model

LABELS = (MODELS / "digits_labels.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ref") / "ref.json"
    subprocess.run(
        [
            sys.executable,
            "tools/monitor_reference.py",
            str(MODELS / "digits_int8.tflite"),
            "--data",
            str(MODELS / "digits_heldout.npz"),
            "--labels",
            str(MODELS / "digits_labels.txt"),
            "--out",
            str(out),
        ],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    return load_reference(out)


def live(ref: dict[str, Any], images: npt.NDArray[Any]) -> dict[str, Any]:
    p = model_scores(Model(MODELS / "digits_int8.tflite"), images)
    d = LiveDrift(ref, window=300, min_results=100)
    for row in p:
        top = int(row.argmax())
        d.add(LABELS[top], float(row[top]))
    return d.report()


def heldout() -> npt.NDArray[Any]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        return np.asarray(data["images"])


def test_the_reference_describes_the_heldout_set(ref: dict[str, Any]) -> None:
    assert ref["samples"] == 450 and ref["labels"] == LABELS
    assert sum(ref["class_rates"]) == pytest.approx(1.0, abs=1e-4)
    assert np.asarray(ref["confidence_hist"]).sum() == 450
    assert json.dumps(ref)


def test_a_heldout_window_stays_ok(ref: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    images = heldout()[rng.permutation(450)]  # a window is the last 300 results of a shuffled pass
    report = live(ref, images)
    assert report["results"] == 300 and report["level"] == "ok", report


@pytest.mark.parametrize("shift", ["inverted", "rotated"])
def test_shifted_digits_reach_drift(ref: dict[str, Any], shift: str) -> None:
    images = heldout()
    shifted = 255 - images if shift == "inverted" else np.rot90(images, 1, axes=(1, 2))
    report = live(ref, np.ascontiguousarray(shifted))
    assert report["level"] == "drift" and report["psi"] >= 0.25, report


def test_psi_and_levels() -> None:
    assert psi([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0
    assert psi([0.5, 0.5], [0.6, 0.4]) == pytest.approx(0.1 * np.log(1.2) + 0.1 * np.log(1.25), rel=1e-6)
    assert [level(v) for v in (0.05, 0.1, 0.2, 0.25, 3.0)] == ["ok", "watch", "watch", "drift", "drift"]
    with pytest.raises(ValueError):
        psi([1, 2], [0, 0])
