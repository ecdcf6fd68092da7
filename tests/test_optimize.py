"""`edge-runtime optimize` on real float models, as a user runs it (a real process each time).

The float digits and fused models are the committed test data built by
``tools/build_models.py --float``; the two third-party models come from the mediapipe wheel
(tests/data/third_party/README.md). No TensorFlow here: the engines are ai-edge-quantizer and the
calibrator in the LiteRT wheel, each in a child process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from devkit.paths import DATA, MODELS, ROOT
from edge_runtime.optimize import rewrite
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.modelfile import read_model_file
from edge_runtime.runtime.quant import quantize

pytestmark = pytest.mark.slow  # each test runs the command (and its engine children) for real

FLOAT = DATA / "float"
THIRD = DATA / "third_party"
LABELS = MODELS / "digits_labels.txt"


def optimize(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", "optimize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without LiteRT's own "INFO: Created TensorFlow Lite XNNPACK delegate" line."""
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("INFO: ")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 450 held-out digits as PNG files in one folder per label."""
    root = tmp_path_factory.mktemp("digits")
    with np.load(MODELS / "digits_heldout.npz") as npz:
        for i, (image, label) in enumerate(zip(npz["images"], npz["labels"], strict=True)):
            folder = root / str(int(label))
            folder.mkdir(exist_ok=True)
            assert cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MJPG video: moving shapes on a changing background with noise, 320x240, 80 frames."""
    path = tmp_path_factory.mktemp("video") / "calibration.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 15, (320, 240))
    rng = np.random.default_rng(1)
    for i in range(80):
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[:] = (40 + i, 80, 120 + i)
        cv2.circle(frame, (40 + 3 * i, 120), 40, (200, 180, 160), -1)
        cv2.rectangle(frame, (200, 30 + i), (300, 100 + i), (30, 220, 90), -1)
        writer.write(cv2.add(frame, rng.integers(0, 30, frame.shape, dtype=np.uint8)))
    writer.release()
    assert path.stat().st_size > 10_000
    return path


def report_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def held_out_accuracy(model_path: Path) -> float:
    """Top-1 accuracy of an int8 digits model on all 450 held-out images, fed x = pixel / 255."""
    model = Model(model_path)
    (spec,) = model.inputs
    assert spec.quant is not None
    with np.load(MODELS / "digits_heldout.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    hits = 0
    for image, label in zip(images, labels, strict=True):
        (out,) = model.invoke([quantize(image.astype(np.float64) / 255.0, spec.quant).reshape(spec.shape)])
        hits += int(np.argmax(out) == label)
    return hits / len(labels)


def test_float_digits_become_fully_integer_within_1_5_points_and_faster(
    digit_images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "digits_int8.tflite"
    proc = optimize(FLOAT / "digits_float.tflite", "--calibration", digit_images, "--labels", LABELS,
                    "--out", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = report_of(proc)
    assert report["ok"] and report["int8"]["fully_integer"] and report["int8"]["float_ops"] == {}
    (head,) = report["verification"]["heads"]
    assert head["labelled"] == report["verification"]["samples"] == 225
    assert report["calibration"]["samples"] == 225 and report["calibration"]["kind"] == "images"
    assert head["float_accuracy"] - head["int8_accuracy"] <= 0.015
    float_row, int8_row = report["latency"]
    assert (float_row["delegate"], int8_row["delegate"]) == ("cpu", "cpu")
    assert int8_row["p50_ms"] < float_row["p50_ms"]  # what the command measured; it refuses otherwise
    assert report["int8"]["size_bytes"] < report["float"]["size_bytes"] / 3
    # what was written: the model, and its manifest beside it
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["sha256"] == sha256(out) == read_model_file(out)[0].sha256
    assert manifest["source"]["sha256"] == sha256(FLOAT / "digits_float.tflite")
    assert manifest["engine"] == report["engine"]
    assert manifest["labels"] == {"file": str(LABELS), "names": [str(i) for i in range(10)]}
    assert manifest["verification"]["heads"][0]["int8_accuracy"] == head["int8_accuracy"]
    # checked independently on all 450 held-out digits against the float model's accuracy
    float_accuracy = json.loads((FLOAT / "manifest.json").read_text())["models"]["digits"]["accuracy"][
        "float"
    ]
    assert held_out_accuracy(out) >= float_accuracy - 0.015


def test_fused_two_inputs_from_an_npz(tmp_path: Path) -> None:
    out = tmp_path / "fused_int8.tflite"
    proc = optimize(FLOAT / "fused_float.tflite", "--calibration", MODELS / "fused_heldout.npz",
                    "--out", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = report_of(proc)
    assert report["int8"]["fully_integer"] and out.exists()
    heads = {h["output"]: h for h in report["verification"]["heads"]}
    assert set(heads) == {"digit", "state"}
    for head in heads.values():
        assert head["labelled"] == 225
        assert head["float_accuracy"] - head["int8_accuracy"] <= 0.015
        assert head["agreement"] >= 0.98
    # ai-edge-quantizer leaves the Conv1D's EXPAND_DIMS in float: the legacy calibrator takes over
    first, second = report["attempts"]
    assert first["engine"] == "ai-edge-quantizer" and not first["ok"]
    assert "not fully integer" in first["error"] and "ExpandDims" in first["error"]
    assert second == {**second, "engine": "legacy", "ok": True, "error": ""}
    float_row, int8_row = report["latency"]
    assert int8_row["p50_ms"] < float_row["p50_ms"]
    model = Model(out)
    assert [s.dtype for s in model.inputs] == ["int8", "int8"]


def test_a_model_no_engine_can_quantize_ends_with_a_table_saying_why(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "face_int8.tflite"
    proc = optimize(THIRD / "face_detection_short_range.tflite", "--calibration", video, "--out", out)
    assert proc.returncode == 1
    assert "engine ai-edge-quantizer" in proc.stdout and "engine legacy" in proc.stdout
    assert "not fully integer" in proc.stdout and "float16" in proc.stdout
    assert "crashed its process with a segmentation fault (SIGSEGV, signal 11)" in proc.stdout
    assert "refused: no engine could quantize the model" in proc.stdout
    (line,) = errors(proc)
    assert line.startswith("edge-runtime: error: ") and "no engine could quantize" in line
    assert "Traceback" not in proc.stderr and not out.exists()


def test_an_int8_model_slower_than_the_float_one_is_refused_unless_forced(
    video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hand_recrop_int8.tflite"
    args = (THIRD / "hand_recrop.tflite", "--calibration", video, "--out", out, "--task", "raw")
    proc = optimize(*args)
    assert proc.returncode == 1, proc.stderr
    assert "the int8 model is slower than the float one on cpu" in proc.stdout
    assert "left to reference kernels: PRELU x13" in proc.stdout  # why: XNNPACK has no int8 PRELU
    assert "produced a model LiteRT cannot load" in proc.stdout  # ai-edge-quantizer's result
    assert "cosine" in proc.stdout
    assert not out.exists() and not out.with_suffix(".json").exists()
    (line,) = errors(proc)
    assert "refused: the int8 model is slower" in line
    forced = optimize(*args, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    report = report_of(forced)
    assert report["forced"] and out.exists()
    float_row, int8_row = report["latency"]
    assert int8_row["p50_ms"] > float_row["p50_ms"]
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert any("slower" in r for r in manifest["refusals_overridden"])
    # `inspect` tells the same story about the written model
    inspected = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "inspect", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert inspected.returncode == 0, inspected.stderr
    assert "xnnpack     50/63 ops, 14 partitions; left to reference kernels: PRELU x13" in inspected.stdout


def test_pruning_that_costs_too_much_is_refused(digit_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.tflite"
    proc = optimize(FLOAT / "digits_float.tflite", "--calibration", digit_images, "--labels", LABELS,
                    "--out", out, "--prune", "0.9", "--json")  # fmt: skip
    assert proc.returncode == 1
    report = report_of(proc)
    pruning = report["pruning"]
    assert pruning["sparsity"] >= 0.89
    for tensor in pruning["tensors"]:
        assert tensor["zeros_after"] >= 0.89 * tensor["elements"] >= tensor["zeros_before"] * 0.89
    assert any(r.startswith("pruning 0.9 costs too much on digit") for r in report["refusals"])
    assert not out.exists()


def test_captures_with_the_pipeline_preprocessing(digit_images: Path, tmp_path: Path) -> None:
    """Daemon captures (JSON + JPEG pairs) of 96x96 colour frames, preprocessed as the demo's
    digits pipeline does (crop, gray, x = pixel / 255)."""
    captures = tmp_path / "captures"
    captures.mkdir()
    for i, png in enumerate(sorted(digit_images.rglob("*.png"))[::3]):
        grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        assert grey is not None
        frame = cv2.cvtColor(cv2.resize(grey, (96, 96), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)
        assert cv2.imwrite(str(captures / f"cap{i:03d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (captures / f"cap{i:03d}.json").write_text(json.dumps({"label": png.parent.name, "ts": i}))
    out = tmp_path / "digits_int8.tflite"
    proc = optimize(FLOAT / "digits_float.tflite", "--calibration", captures, "--config",
                    ROOT / "devices" / "demo.toml", "--pipeline", "digits", "--labels", LABELS,
                    "--out", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = report_of(proc)
    assert report["calibration"]["kind"] == "captures"
    (head,) = report["verification"]["heads"]
    assert head["labelled"] == report["verification"]["samples"] == 75
    assert head["float_accuracy"] >= 0.97 and head["float_accuracy"] - head["int8_accuracy"] <= 0.015


def test_a_default_signature_is_added_to_a_model_without_one() -> None:
    from ai_edge_litert.interpreter import Interpreter

    data = (THIRD / "hand_recrop.tflite").read_bytes()
    assert rewrite.signatures(data) == []
    with_sig, added = rewrite.with_default_signature(data)
    assert added
    (sig,) = rewrite.signatures(with_sig)
    assert sig.key == "serving_default" and [n for n, _ in sig.inputs] == ["input_1"]
    listed = Interpreter(model_content=with_sig).get_signature_list()
    assert listed == {"serving_default": {"inputs": ["input_1"], "outputs": ["output_crop"]}}
    # the weights are untouched: the same outputs on the same input
    x = np.random.default_rng(0).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    a, b = Model(THIRD / "hand_recrop.tflite"), Model(THIRD / "hand_recrop.tflite")
    b._interpreter = Interpreter(model_content=with_sig)
    b._interpreter.allocate_tensors()
    np.testing.assert_array_equal(a.invoke([x])[0], b.invoke([x])[0])
    same, added_again = rewrite.with_default_signature(with_sig)
    assert same == with_sig and not added_again


def _bad_inputs(tmp_path: Path, digit_images: Path) -> dict[str, tuple[list[str | Path], str]]:
    text = tmp_path / "notes.tflite"
    text.write_text("this is not a model\n" * 10)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for i in range(5):
        (unreadable / f"img{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg " * (i + 1))
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((10, 9, 9), np.float32))
    not_video = tmp_path / "clip.mp4"
    not_video.write_bytes(b"\x00" * 1000)
    digits = FLOAT / "digits_float.tflite"
    return {
        "non-model file": ([text, "--calibration", digit_images], "not a valid TFLite flatbuffer"),
        "custom ops": ([DATA / "edgetpu_custom_op.tflite", "--calibration", digit_images], "custom ops"),
        "unreadable images": (
            [digits, "--calibration", unreadable],
            "none of its 5 image files could be read",
        ),
        "wrong shape": ([digits, "--calibration", wrong], "takes [1, 8, 8, 1]"),
        "empty folder": ([digits, "--calibration", empty], "the calibration folder is empty"),
        "missing data": ([digits, "--calibration", tmp_path / "nope"], "no such file or folder"),
        "not a video": ([digits, "--calibration", not_video], "OpenCV cannot open this video"),
        "fused from images": ([FLOAT / "fused_float.tflite", "--calibration", digit_images], "use an .npz"),
    }


def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, digit_images: Path) -> None:
    for name, (args, needle) in _bad_inputs(tmp_path, digit_images).items():
        out = tmp_path / "out.tflite"
        proc = optimize(*args, "--out", out)
        assert proc.returncode == 1, (name, proc.stderr)
        lines = errors(proc)
        assert len(lines) == 1, (name, proc.stderr)
        assert lines[0].startswith("edge-runtime: error: ") and needle in lines[0], (name, lines)
        assert "Traceback" not in proc.stderr and not out.exists(), name


def test_uint8_inputs_and_outputs_come_from_the_engine_that_makes_them(
    digit_images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "digits_uint8.tflite"
    proc = optimize(FLOAT / "digits_float.tflite", "--calibration", digit_images, "--labels", LABELS,
                    "--out", out, "--io", "uint8", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = report_of(proc)
    first, second = report["attempts"]
    assert first["error"] == "makes int8 inputs and outputs only, not uint8" and second["ok"]
    (head,) = report["verification"]["heads"]
    assert head["float_accuracy"] - head["int8_accuracy"] <= 0.015
    model = Model(out)
    assert [s.dtype for s in (*model.inputs, *model.outputs)] == ["uint8", "uint8"]


def test_an_output_that_cannot_be_written_is_one_line(digit_images: Path) -> None:
    proc = optimize(
        FLOAT / "digits_float.tflite", "--calibration", digit_images, "--out", "/proc/none/x.tflite"
    )
    assert proc.returncode == 1
    (line,) = errors(proc)
    assert line.startswith("edge-runtime: error: /proc/none") and "Traceback" not in proc.stderr


def test_a_detector_is_compared_box_by_box(tmp_path: Path) -> None:
    out = tmp_path / "detect_int8.tflite"
    proc = optimize(FLOAT / "detect_float.tflite", "--calibration", MODELS / "detect_heldout.npz",
                    "--task", "detection", "--out", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = report_of(proc)
    (head,) = report["verification"]["heads"]
    assert head["task"] == "detection" and report["verification"]["samples"] == 100
    # 100 held-out canvases hold 1..3 digits each; nearly every float box has its int8 twin
    assert 100 <= head["float_boxes"] <= 300
    assert head["matched_boxes"] >= 0.95 * head["float_boxes"]
    assert head["agreement"] >= 0.98 and head["mean_iou"] >= 0.9
    assert report["int8"]["fully_integer"]


def test_captures_with_sensor_inputs_in_their_json(tmp_path: Path) -> None:
    """Captures of the two-input fused model: the frame as JPEG, the vibration window in the JSON."""
    captures = tmp_path / "captures"
    captures.mkdir()
    with np.load(MODELS / "fused_heldout.npz") as npz:
        images, windows = npz["images"][:120], npz["vibration"][:120]
    for i, (image, window) in enumerate(zip(images, windows, strict=True)):
        assert cv2.imwrite(str(captures / f"{i:03d}.png"), image)
        meta = {"image": f"{i:03d}.png", "inputs": {"vibration": window.tolist()}}
        (captures / f"{i:03d}.json").write_text(json.dumps(meta))
    (captures / "999.json").write_text(json.dumps({"inputs": {}}))  # no image: skipped, counted
    out = tmp_path / "fused_int8.tflite"
    proc = optimize(FLOAT / "fused_float.tflite", "--calibration", captures, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = report_of(proc)
    assert report["calibration"]["kind"] == "captures" and len(report["calibration"]["skipped"]) == 1
    assert report["calibration"]["samples"] + report["verification"]["samples"] == 120
    assert all(h["agreement"] >= 0.98 for h in report["verification"]["heads"])
