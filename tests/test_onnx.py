"""ONNX Runtime as a second engine: the bundled ONNX twins, their specs, providers, parity with the
TFLite models through a real video, mixed ensembles, inspect, and bad files.

Marked ``backend``: ``./dev.sh test`` runs these again under tflite-runtime (the TFLite member of
a mixed ensemble then runs on it) and under onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_run import DIGITS, heldout, run_cli

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.paths import BENCH_MODELS, MODELS
from edge_runtime.demo import write_digits_video
from edge_runtime.errors import EdgeRuntimeError, ModelFileError, ModelFormatError, ModelLoadError
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.onnxfile import parse_onnx, read_onnx_file
from edge_runtime.runtime.quant import quantize
from edge_runtime.updates.signing import generate_keypair

pytestmark = pytest.mark.backend

DIGITS_ONNX = MODELS / "digits_int8.onnx"
DIGITS_FLOAT_ONNX = MODELS / "digits.onnx"


def backend() -> str:
    return os.environ.get("EDGE_RUNTIME_TEST_BACKEND", "litert")


def onnx_manifest(folder: Path = MODELS) -> dict[str, Any]:
    models: dict[str, Any] = json.loads((folder / "manifest_onnx.json").read_text())["models"]
    return models


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- a minimal protobuf writer, for hand-made ONNX files ---------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _num(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _msg(field: int, *parts: bytes | str) -> bytes:
    body = b"".join(p.encode() if isinstance(p, str) else p for p in parts)
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _value_info(field: int, name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(_msg(1, _msg(2, d) if isinstance(d, str) else _num(1, d)) for d in dims)
    return _msg(field, _msg(1, name), _msg(2, _msg(1, _num(1, 1), _msg(2, shape))))


def identity_model(dims: list[int | str], initializer: bytes = b"") -> bytes:
    """An Identity of one float32 input ``x`` of ``dims`` (opset 17)."""
    graph = _msg(
        7,
        _msg(1, _msg(1, "x"), _msg(2, "y"), _msg(4, "Identity")),
        _msg(2, "g"),
        initializer,
        _value_info(11, "x", dims),
        _value_info(12, "y", dims),
    )
    return _num(1, 8) + _msg(2, "test") + graph + _msg(8, _msg(1, ""), _num(2, 17))


# -- the bundled twins ---------------------------------------------------------------------------------


def test_the_onnx_twins_are_the_files_their_manifests_describe() -> None:
    for folder in (MODELS, BENCH_MODELS):
        for name, entry in onnx_manifest(folder).items():
            info, data = read_onnx_file(folder / entry["file"])
            assert info.sha256 == entry["sha256"] and len(data) == entry["size_bytes"], name
            edges = entry["quantization"]["edges"] if "quantization" in entry else None
            if edges is None:
                assert name == "digits" and not info.qdq
                continue
            for kind, values in (("inputs", info.inputs), ("outputs", info.outputs)):
                for v, e in zip(values, edges[kind], strict=True):
                    assert v.quant is not None and v.name == e["name"], (name, v)
                    assert v.quant.scale == (e["scale"],) and v.quant.zero_point == (e["zero_point"],)


def test_int8_qdq_specs_are_int8_edges_with_the_scale_of_their_qdq_nodes() -> None:
    model = Model(DIGITS_ONNX, backend=backend())
    assert model.backend.name == "onnxruntime"
    (inp,), (out,) = model.inputs, model.outputs
    info, _ = read_onnx_file(DIGITS_ONNX)
    assert info.inputs[0].dims == ("batch", 8, 8, 1) and info.inputs[0].dtype == "float32"
    assert inp.shape == (1, 8, 8, 1) and inp.dtype == "int8"  # the batch fixed to 1, the QDQ edge as int8
    assert inp.quant == info.inputs[0].quant and inp.quant is not None
    assert inp.quant.scale[0] == pytest.approx(1 / 255) and inp.quant.zero_point == (-128,)
    assert out.shape == (1, 10) and out.dtype == "int8" and out.quant == info.outputs[0].quant
    float_model = Model(DIGITS_FLOAT_ONNX, backend=backend())
    assert float_model.inputs[0].dtype == "float32" and float_model.inputs[0].quant is None
    assert float_model.inputs[0].shape == (1, 8, 8, 1)


@pytest.mark.parametrize("path", [DIGITS_ONNX, DIGITS_FLOAT_ONNX], ids=["int8-qdq", "float"])
def test_the_onnx_digits_models_are_as_accurate_as_the_tflite_one(
    path: Path, manifest: dict[str, Any]
) -> None:
    model = Model(path, backend=backend())
    spec = model.inputs[0]
    images, labels = heldout()
    predicted = []
    for image in images:
        x = image.astype(np.float64)[None, ..., None] / 255.0
        (scores,) = model.invoke([quantize(x, spec.quant) if spec.quant else x.astype(np.float32)])
        predicted.append(int(np.argmax(scores)))
    accuracy = float(np.mean(np.array(predicted) == labels))
    float_accuracy = manifest["models"]["digits"]["accuracy"]["float"]
    assert accuracy >= 0.95 and accuracy >= float_accuracy - 0.015, (accuracy, float_accuracy)
    assert round(accuracy, 4) == onnx_manifest()[path.stem]["accuracy"]["heldout"]


def test_the_exact_twins_give_the_tflite_models_int8_outputs() -> None:
    rng = np.random.default_rng(3)
    for name in ("fused_int8", "detect_int8"):
        tflite = Model(MODELS / f"{name}.tflite", backend="auto")
        twin = Model(MODELS / f"{name}.onnx", backend=backend())
        assert [s.name for s in twin.inputs] == [s.name for s in tflite.inputs]
        assert [(s.shape, s.dtype, s.quant) for s in twin.inputs] == [
            (s.shape, s.dtype, s.quant) for s in tflite.inputs
        ]
        with np.load(MODELS / f"{name.split('_')[0]}_heldout.npz") as data:
            images = data["images"][:40]
        for image in images:
            feeds = []
            for s in tflite.inputs:
                assert s.quant is not None
                x = image[None, ..., None] / 255.0 if "image" in s.name else rng.normal(0, 1, s.shape)
                feeds.append(quantize(x, s.quant))
            for ours, theirs in zip(twin.invoke(feeds), tflite.invoke(feeds), strict=True):
                assert np.array_equal(ours, theirs), name


# -- parity through a real video -----------------------------------------------------------------------


def _video_config(tmp_path: Path, n: int | None = None) -> tuple[Path, np.ndarray, str]:
    """The held-out digits as a video, and the head of a config that reads it."""
    images, labels = heldout(n)
    write_digits_video(tmp_path / "digits.avi", list(images), fps=30.0)
    head = f"""
[device]
state_dir = "{tmp_path / "state"}"
[sources.camera]
type = "camera"
uri = "digits.avi"
realtime = false
"""
    return tmp_path / "run.toml", labels, head


@pytest.mark.parametrize("model", ["digits_int8.onnx", "digits.onnx", "digits_int8.tflite"])
def test_the_same_pipeline_config_runs_the_onnx_and_the_tflite_model(tmp_path: Path, model: str) -> None:
    config, labels, head = _video_config(tmp_path)
    body = DIGITS.replace(f"{MODELS}/digits_int8.tflite", f"{MODELS}/{model}")
    assert f"{MODELS}/{model}" in body
    config.write_text(
        f"""{head}
[[pipelines]]
name = "digits"
trigger = "camera"
{body}"""
    )
    results, log = run_cli(config)
    assert [r["trigger"]["seq"] for r in results] == list(range(1, len(labels) + 1))
    predicted = np.array([int(r["result"]["top"][0]["label"]) for r in results])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy >= 0.95 and accuracy >= 0.9978 - 0.015, accuracy
    engine = "onnxruntime" if model.endswith(".onnx") or backend() == "onnxruntime" else backend()
    assert f"running on cpu, backend {engine} " in log, log[-2000:]
    assert set(results[0]) >= {
        "v",
        "device",
        "pipeline",
        "seq",
        "ts",
        "frame_ts",
        "model",
        "latency_ms",
        "result",
    }
    assert results[0]["model"]["sha256"] == (
        onnx_manifest()[Path(model).stem]["sha256"]
        if engine == "onnxruntime"
        else results[0]["model"]["sha256"]
    )


def test_an_ensemble_can_mix_an_onnx_and_a_tflite_model(tmp_path: Path) -> None:
    config, labels, head = _video_config(tmp_path, 150)
    member = DIGITS.replace("[[pipelines.models]]", "[[pipelines.models]]\nweight = 1.0")
    config.write_text(
        f"""{head}
[[pipelines]]
name = "mixed"
trigger = "camera"
ensemble = {{ combine = "mean" }}
{member.replace("digits_int8.tflite", "digits_int8.onnx")}
{member}"""
    )
    results, log = run_cli(config)
    assert len(results) == len(labels)
    tflite_engine = "onnxruntime" if backend() == "onnxruntime" else backend()
    placements = [line for line in log.splitlines() if "pipeline mixed: model digits_int8" in line]
    assert any("backend onnxruntime" in line for line in placements), log[-2000:]
    assert any(f"backend {tflite_engine}" in line for line in placements), log[-2000:]
    correct = 0
    for r in results:
        first, second = r["result"]["members"]
        assert len(first["top"]) == len(second["top"]) == 1
        correct += int(r["result"]["top"][0]["label"]) == int(labels[r["trigger"]["seq"] - 1])
    assert correct / len(results) >= 0.95


# -- providers, threads, backend choice ----------------------------------------------------------------


def test_execution_providers_are_the_delegate_chain_with_every_failure_kept() -> None:
    chain: list[Any] = ["xnnpack", {"type": "provider", "name": "CUDAExecutionProvider"}, "edgetpu", "cpu"]
    model = Model(DIGITS_ONNX, delegates=chain, backend=backend())
    assert model.delegate == "cpu"
    causes = {f.delegate: f.cause for f in model.failures}
    assert list(causes) == ["xnnpack", "provider:CUDAExecutionProvider", "edgetpu"]
    assert causes["xnnpack"].startswith("XnnpackExecutionProvider is not in this onnxruntime build (it has ")
    assert "CPUExecutionProvider" in causes["xnnpack"]
    assert causes["provider:CUDAExecutionProvider"].startswith(
        "CUDAExecutionProvider is not in this onnxruntime"
    )
    assert causes["edgetpu"].startswith("libedgetpu.so.1: a TFLite delegate; onnxruntime runs .onnx models")
    with pytest.raises(
        ModelLoadError, match="no delegate in the chain could run it: xnnpack failed: Xnnpack"
    ):
        Model(DIGITS_ONNX, delegates=["xnnpack"], backend=backend())


def test_a_provider_in_a_tflite_models_chain_is_a_failure_with_its_cause() -> None:
    engine = "litert" if backend() == "onnxruntime" else backend()
    model = Model(MODELS / "digits_int8.tflite", delegates=["acl", "cpu"], backend=engine)
    assert model.delegate == "cpu" and model.backend.name == engine
    assert model.failures[0].cause == (
        f"ACLExecutionProvider is an onnxruntime execution provider; {engine} runs .tflite models "
        "with TFLite delegates"
    )


def test_provider_entries_are_validated_like_any_config() -> None:
    from edge_runtime.config import validate

    def config(entry: Any) -> dict[str, Any]:
        model: dict[str, Any] = {
            "path": str(DIGITS_ONNX),
            "delegates": [entry, "cpu"],
            "inputs": [{"kind": "image", "source": "c"}],
            "postprocess": {"type": "raw"},
        }
        return {
            "sources": {"c": {"type": "camera", "uri": "x.avi"}},
            "pipelines": [{"name": "p", "trigger": "c", "models": [model]}],
        }

    validate(
        config({"type": "provider", "name": "OpenVINOExecutionProvider", "options": {"device_type": "CPU"}}),
        MODELS,
    )
    validate(config("xnnpack"), MODELS)
    with pytest.raises(
        EdgeRuntimeError, match=r"delegates\[0\]\.name: '\.\./\.\./lib/evil\.so': String should match"
    ):
        validate(config({"type": "provider", "name": "../../lib/evil.so"}), MODELS)


def test_threads_set_the_intra_op_pool_and_one_session_serves_every_invoke() -> None:
    model = Model(DIGITS_ONNX, threads=2, backend=backend())
    session = model._interpreter.session
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    default = Model(DIGITS_ONNX, backend=backend())._interpreter.session.get_session_options()
    assert default.intra_op_num_threads == 1  # one core unless asked, as LiteRT
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 127, (1, 8, 8, 1), dtype=np.int8)
    first = model.invoke([x])[0]
    for _ in range(100):
        model.invoke([rng.integers(-128, 127, (1, 8, 8, 1), dtype=np.int8)])
    assert model._interpreter.session is session
    assert np.array_equal(model.invoke([x])[0], first)
    assert model.summary()["threads"] == 2 and model.summary()["backend"] == "onnxruntime"


def test_the_model_file_picks_the_engine(tmp_path: Path) -> None:
    assert Model(DIGITS_ONNX, backend="litert").backend.name == "onnxruntime"
    twin = Model(MODELS / "digits_int8.tflite", backend="onnxruntime")
    assert twin.path == DIGITS_ONNX and twin.backend.name == "onnxruntime"
    lonely = tmp_path / "digits_int8.tflite"
    shutil.copy(MODELS / "digits_int8.tflite", lonely)
    with pytest.raises(ModelFileError, match=r"no ONNX twin digits_int8\.onnx next to it"):
        Model(lonely, backend="onnxruntime")


def test_symbolic_dimensions_are_resolved_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.onnx"
    path.write_bytes(identity_model(["N", 4]))
    model = Model(path, backend=backend())
    assert model.inputs[0].shape == (1, 4) and model.outputs[0].shape == (1, 4)
    x = np.arange(4, dtype=np.float32)
    assert np.array_equal(model.invoke([x])[0], x[None])
    path.write_bytes(identity_model(["N", "height"]))
    with pytest.raises(ModelLoadError, match=r"input 'x' has symbolic dimensions \['N', 'height'\]"):
        Model(path, backend=backend())


def test_a_model_pointing_at_external_data_is_refused(tmp_path: Path) -> None:
    # TensorProto: dims 4, float, name "w", external_data {location: /etc/passwd}, data_location EXTERNAL
    tensor = _msg(
        5, _num(1, 4), _num(2, 1), _msg(8, "w"), _msg(13, _msg(1, "location"), _msg(2, "/etc/passwd"))
    )
    path = tmp_path / "external.onnx"
    path.write_bytes(identity_model(["N", 4], tensor + _num(14, 1)))
    with pytest.raises(
        ModelFormatError, match="initializer 'w' refers to an external data file, which is refused"
    ):
        read_onnx_file(path)


# -- inspect and bad files -----------------------------------------------------------------------------


def test_inspect_describes_an_onnx_model() -> None:
    proc = cli("inspect", str(DIGITS_ONNX), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["format"] == "onnx" and report["opsets"]["ai.onnx"] == 17
    assert report["sha256"] == onnx_manifest()["digits_int8"]["sha256"]
    assert report["size_bytes"] == DIGITS_ONNX.stat().st_size
    assert report["qdq"] is True and report["ops"]["QuantizeLinear"] >= 2 and report["ops"]["Conv"] == 2
    assert report["ops"] == onnx_manifest()["digits_int8"]["operators"]
    (inp,) = report["inputs"]
    assert inp["dtype"] == "int8" and inp["graph_dtype"] == "float32" and inp["shape"] == [1, 8, 8, 1]
    assert inp["zero_point"] == -128 and inp["scale"] == pytest.approx(1 / 255)
    assert report["weight_sparsity"]["total"] >= 0.45
    assert {w["op"] for w in report["weight_sparsity"]["per_tensor"]} == {"Conv", "MatMul"}
    probes = {d["delegate"]: d for d in report["delegates"]}
    assert probes["cpu"]["loads"] is True and probes["xnnpack"]["loads"] is False
    assert "XnnpackExecutionProvider is not in this onnxruntime build" in probes["xnnpack"]["cause"]
    text = cli("inspect", str(DIGITS_FLOAT_ONNX)).stdout
    for needle in (
        "format      ONNX (ir_version",
        "quantized   no",
        "inputs        0 image  float32 [1, 8, 8, 1]",
    ):
        assert needle in text, text
    assert "providers   xnnpack   no: XnnpackExecutionProvider" in text and "cpu       loads" in text


def _bad_onnx_files(tmp_path: Path) -> dict[str, Path]:
    good = DIGITS_ONNX.read_bytes()
    files = {
        "empty": b"",
        "text": b"this is not a model\n" * 20,
        "random": np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated": good[: len(good) // 2],
        "header only": good[:12],
        "no graph": _num(1, 8) + _msg(8, _msg(1, ""), _num(2, 17)),
        "a tflite file": (MODELS / "digits_int8.tflite").read_bytes(),
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.onnx"
        path.write_bytes(data)
        paths[name] = path
    return paths


@pytest.mark.parametrize("command", ["inspect", "bench", "run"])
def test_bad_onnx_files_give_exit_1_and_one_line(tmp_path: Path, command: str) -> None:
    for name, path in _bad_onnx_files(tmp_path).items():
        if command == "run":
            config = tmp_path / "run.toml"
            config.write_text(
                f'[device]\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\nenabled = false\n'
                f'[sources.camera]\ntype = "camera"\nuri = "nothing.avi"\n[[pipelines]]\nname = "p"\n'
                f'trigger = "camera"\n{DIGITS.replace(f"{MODELS}/digits_int8.tflite", str(path))}'
            )
            proc = cli("run", "--config", str(config), "--max-results", "1", timeout=60)
        else:
            proc = cli(command, str(path))
        assert proc.returncode == 1, (name, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (name, proc.stderr)
        assert lines[0].startswith("edge-runtime: error: ") and str(path) in lines[0], (name, lines)
        assert "not a valid ONNX model" in lines[0] or "empty file" in lines[0], (name, lines)


def _mutate(data: st.DataObject, original: bytes) -> bytes:
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 16))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    return bytes(mutated[:cut] if data.draw(st.booleans()) else mutated)


@pytest.mark.fuzz
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_onnx_files_are_read_or_refused_never_crash(data: st.DataObject) -> None:
    with contextlib.suppress(ModelFormatError):  # anything else fails the test
        parse_onnx(_mutate(data, DIGITS_ONNX.read_bytes()))


@pytest.mark.fuzz
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_mutated_onnx_files_through_the_cli_exit_0_or_1_with_one_line(
    tmp_path: Path, data: st.DataObject
) -> None:
    # bench loads the file into onnxruntime in the process: a crash there would show as a signal
    path = tmp_path / "mutated.onnx"
    path.write_bytes(_mutate(data, DIGITS_ONNX.read_bytes()))
    proc = cli("bench", str(path), "--runs", "1", "--warmup", "0")
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr[-2000:])
    if proc.returncode == 1:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("edge-runtime: error: "), proc.stderr[-2000:]


def test_set_input_copies_so_the_caller_may_reuse_its_array_at_once() -> None:
    # the pipeline builds the next frame into the same staging array while the model runs
    model = Model(DIGITS_FLOAT_ONNX, backend=backend())
    images, _ = heldout(2)
    staging = np.zeros((1, 8, 8, 1), np.float32)
    staging[:] = images[0][None, ..., None] / 255.0
    alone = model.invoke([staging.copy()])[0]
    model.set_input(0, staging)
    staging[:] = images[1][None, ..., None] / 255.0
    model.run()
    assert np.array_equal(model.output(0), alone)


def test_initializers_in_typed_fields_are_read_and_checked(tmp_path: Path) -> None:
    def tensor(values: list[float]) -> bytes:
        packed = np.asarray(values, "<f4").tobytes()
        return _msg(5, _num(1, 4), _num(2, 1), _msg(8, "w"), _msg(4, packed))

    info = parse_onnx(identity_model(["N", 4], tensor([0.0, 1.0, 0.0, 2.0])))
    assert info.initializer_count == 1 and info.inputs[0].name == "x"
    with pytest.raises(ModelFormatError, match="initializer 'w': 3 values for 4 elements"):
        parse_onnx(identity_model(["N", 4], tensor([0.0, 1.0, 2.0])))


def test_optimize_refuses_an_onnx_model_and_names_the_tool_that_does_it(tmp_path: Path) -> None:
    proc = cli(
        "optimize", str(DIGITS_FLOAT_ONNX), "--calibration", str(MODELS / "digits_heldout.npz"),
        "--out", str(tmp_path / "out.onnx"),
    )  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "onnxruntime.quantization.quantize_static" in lines[0], proc.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_update_can_move_a_pipeline_to_the_onnx_twin(tmp_path: Path, broker: Mosquitto) -> None:
    # the store keeps every model as {sha256}.tflite: the ONNX content is recognised as such
    from test_update_daemon import request, serving, update_body

    private, public = generate_keypair()
    extra = (
        f'[updates]\npublic_keys = ["{public}"]\nprobation_s = 5\nprobation_results = 10\n'
        "allow_file_urls = true\n"
    )
    config = digits_config(tmp_path, port=broker.port, extra=extra)
    # the pipeline starts on the TFLite model (under onnxruntime it would already serve the twin)
    config.write_text(config.read_text().replace('backend = "onnxruntime"', 'backend = "auto"'))
    data = DIGITS_ONNX.read_bytes()
    with Subscriber(broker.host, broker.port, ["edge/dev1/#"]) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/health") for m in ms), 30), daemon.log()
        replies = request(sub, "to-onnx", update_body(DIGITS_ONNX, data, "2", private))
        assert replies[-1]["ok"] and replies[-1]["step"] == "commit", replies[-1].get("error")
        sha = onnx_manifest()["digits_int8"]["sha256"]
        assert sub.wait_for(lambda ms: serving(sub) == (sha, "2"), 30)

        def onnx_results(ms: list[Any]) -> list[dict[str, Any]]:
            return [
                m.json() for m in ms if m.topic.endswith("/results") and m.json()["model"]["sha256"] == sha
            ]

        # results of the ONNX content, which only onnxruntime can run
        assert sub.wait_for(lambda ms: len(onnx_results(ms)) >= 5, 30), daemon.log()[-2000:]
        assert all(r["result"]["top"] for r in onnx_results(sub.messages("edge/dev1/pipelines/+/results")))
        assert daemon.stop() == 0


def test_a_model_with_huge_tensors_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    path = tmp_path / "huge.onnx"
    path.write_bytes(identity_model(["N", 100_000, 100_000]))  # 40 GB of float32 per input
    with pytest.raises(
        ModelLoadError, match=r"tensor 'x' \[1, 100000, 100000\] takes 38147 MiB, over the bound"
    ):
        Model(path, backend=backend())


def test_validate_config_checks_an_onnx_model_like_a_tflite_one(tmp_path: Path) -> None:
    config, _, head = _video_config(tmp_path, 5)
    body = DIGITS.replace(f"{MODELS}/digits_int8.tflite", str(DIGITS_ONNX))
    config.write_text(f'{head}\n[[pipelines]]\nname = "digits"\ntrigger = "camera"\n{body}')
    proc = cli("validate-config", str(config))
    assert proc.returncode == 0, proc.stderr
    # the ONNX input's shape (read without onnxruntime) is checked against the binding
    config.write_text(config.read_text().replace('color = "gray"', 'color = "rgb"'))
    proc = cli("validate-config", str(config))
    assert proc.returncode == 1, proc.stdout
    assert "input 'image' has 1 channels but color = 'rgb' gives 3" in proc.stderr, proc.stderr
