"""Predict on demand through a real daemon: the official Triton client (``tritonclient[http]``)
against the Open Inference Protocol v2, TF Serving's documented request and response formats
against /v1, and both checked against the model run directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.daemon import digits_config, digits_video
from devkit.httpd import HttpDaemon
from devkit.paths import MODELS, ROOT
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.quant import dequantize, quantize

pytestmark = pytest.mark.slow


def heldout() -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "digits_heldout.npz") as data:
        return data["images"], data["labels"]


def reference(model_file: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model run directly: real values quantized, outputs dequantized (one instance)."""
    model = Model(MODELS / model_file)
    quantized = []
    for spec, x in zip(model.inputs, inputs, strict=True):
        assert spec.quant is not None
        quantized.append(quantize(x, spec.quant).reshape(spec.shape))
    outputs = model.invoke(quantized)
    return [dequantize(o, s.quant)[0] for o, s in zip(outputs, model.outputs, strict=True) if s.quant]


def _refusals(client: Any, x: np.ndarray, good: Any) -> None:
    """What the Triton client gets back for a wrong shape, datatype, model and input name."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    bad_shape = triton.InferInput("image", [1, 8, 8], "FP32")
    bad_shape.set_data_from_numpy(x[:1, :, :, 0])
    with pytest.raises(InferenceServerException, match=r"input 'image': expects shape \[-1, 8, 8, 1\]"):
        client.infer("digits", [bad_shape])
    bad_type = triton.InferInput("image", [1, 8, 8, 1], "INT32")
    bad_type.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.int32))
    with pytest.raises(InferenceServerException, match="input 'image': datatype INT32 is not accepted"):
        client.infer("digits", [bad_type])
    with pytest.raises(InferenceServerException, match="no model 'mnist'"):
        client.infer("mnist", [good])
    wrong_name = triton.InferInput("pixels", [1, 8, 8, 1], "FP32")
    wrong_name.set_data_from_numpy(x[:1])
    with pytest.raises(InferenceServerException, match="has no input 'pixels'; inputs are \\['image'\\]"):
        client.infer("digits", [wrong_name])


def test_tritonclient_infers_digits_like_the_pipeline(tmp_path: Path) -> None:
    import tritonclient.http as triton

    images, labels = heldout()
    digits_video(tmp_path / "all.avi", count=len(images), fps=30.0)
    labels_file = MODELS / "digits_labels.txt"
    model = f"""
path = "{MODELS}/digits_int8.tflite"
version = "1"
inputs = [{{ kind = "image", source = "camera", resize = "crop", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", labels = "{labels_file}", top_k = 1 }}
"""
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
[device]
id = "dev1"
state_dir = "{tmp_path / "state"}"
[mqtt]
enabled = false
[sources.camera]
type = "camera"
uri = "{tmp_path / "all.avi"}"
realtime = false
[[pipelines]]
name = "digits"
trigger = "camera"
[[pipelines.models]]
{model}
[[pipelines]]
name = "tick"           # keeps the daemon running after the video's last frame
trigger = {{ every_s = 1.0 }}
[[pipelines.models]]
name = "tick"
{model}
"""
    )
    with HttpDaemon(config) as d:
        d.wait_results(len(images), timeout=90)
        with d._lock:
            by_frame = {r["trigger"]["seq"]: r for r in d.results if r["pipeline"] == "digits"}
        assert sorted(by_frame) == list(range(1, len(images) + 1)), "every frame once"
        tops = [by_frame[i + 1]["result"]["top"][0]["label"] for i in range(len(images))]
        pipeline_top = np.array([int(t) for t in tops])

        client = triton.InferenceServerClient(url=f"127.0.0.1:{d.port}", network_timeout=30.0)
        assert client.is_server_live() and client.is_model_ready("digits")
        assert not client.is_server_ready()  # the video has ended: the camera is not up
        assert d.json("/readyz", expect=503)["pipelines"]["digits"] == "source camera is finished"
        meta = client.get_model_metadata("digits")
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
        assert meta["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}]

        x = (images.astype(np.float32) / 255.0)[..., None]
        scores = []
        for start in range(0, len(x), 30):  # binary tensors both ways: tritonclient's default
            batch = x[start : start + 30]
            tensor = triton.InferInput("image", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            result = client.infer("digits_int8", [tensor], model_version="1", request_id=f"r{start}")
            assert result.get_response()["id"] == f"r{start}"
            scores.append(result.as_numpy("output_0"))
        served = np.concatenate(scores)
        assert served.shape == (len(images), 10) and served.dtype == np.float32
        top = served.argmax(axis=1)
        agreement = float(np.mean(top == pipeline_top))
        accuracy = float(np.mean(top == labels))
        assert agreement >= 0.95, agreement
        assert accuracy >= 0.95, accuracy
        ref = reference("digits_int8.tflite", [x[7]])[0]
        np.testing.assert_array_equal(served[7], ref)

        tensor = triton.InferInput("image", [2, 8, 8, 1], "FP32")
        tensor.set_data_from_numpy(x[:2], binary_data=False)  # JSON both ways
        wanted = [triton.InferRequestedOutput("output_0", binary_data=False)]
        as_json = client.infer("digits", [tensor], outputs=wanted)
        np.testing.assert_array_equal(as_json.as_numpy("output_0"), served[:2])
        codes = triton.InferInput("image", [1, 8, 8, 1], "INT8")  # the model's own quantized codes, as is
        codes.set_data_from_numpy((images[:1, :, :, None].astype(np.int16) - 128).astype(np.int8))
        np.testing.assert_array_equal(client.infer("digits", [codes]).as_numpy("output_0"), served[:1])

        _refusals(client, x, tensor)
        assert not client.is_model_ready("digits", model_version="9")
        client.close()
        count = d.count()
        d.wait_results(count + 2)  # the tick pipeline goes on
        assert d.stop() == 0


def demo_daemon(tmp_path: Path, *args: str) -> HttpDaemon:
    demo = tmp_path / "demo.toml"  # a copy: the daemon's log goes beside its config
    demo.write_bytes((ROOT / "edge_runtime" / "demo.toml").read_bytes())
    return HttpDaemon(
        demo, "--set", f"device.state_dir={tmp_path / 'state'}", "--set", "mqtt.enabled=false", *args
    )


def test_tf_serving_documented_formats(tmp_path: Path) -> None:
    """The request and response formats of TF Serving's REST API documentation (model status,
    metadata, predict in the row format with named inputs, the columnar format, errors), on the
    demo's two-input ``fused`` model and its one-input ``digits`` model."""
    images, _ = heldout()
    rng = np.random.default_rng(3)
    image = [(images[i].astype(np.float64) / 255.0)[..., None] for i in range(3)]
    vibration = [rng.normal(0.0, 0.5, (64, 3)) for _ in range(3)]
    with demo_daemon(tmp_path) as d:
        status = d.json("/v1/models/fused_int8")
        assert status == {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }
        assert d.json("/v1/models/machine/versions/1") == status  # the pipeline's name works too
        missing = d.json("/v1/models/fused_int8/versions/7", expect=404)
        assert list(missing) == ["error"] and "version '7' is not served" in missing["error"]
        meta = d.json("/v1/models/fused_int8/metadata")
        signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
        assert [d_["size"] for d_ in signature["inputs"]["vibration"]["tensor_shape"]["dim"]] == [
            "-1",
            "64",
            "3",
        ]
        assert meta["model_spec"] == {"name": "fused_int8", "signature_name": "", "version": "1"}

        rows = {
            "signature_name": "serving_default",
            "instances": [
                {"image": i.tolist(), "vibration": v.tolist()} for i, v in zip(image, vibration, strict=True)
            ],
        }
        predictions = d.json("/v1/models/fused_int8:predict", rows)["predictions"]
        assert len(predictions) == 3 and sorted(predictions[0]) == ["output_0", "output_1"]
        for k in range(3):
            state, digit = reference("fused_int8.tflite", [image[k], vibration[k]])
            np.testing.assert_array_equal(np.float32(predictions[k]["output_0"]), state)
            np.testing.assert_array_equal(np.float32(predictions[k]["output_1"]), digit)

        columns = {
            "inputs": {"image": [i.tolist() for i in image], "vibration": [v.tolist() for v in vibration]}
        }
        outputs = d.json("/v1/models/fused_int8/versions/1:predict", columns)["outputs"]
        assert outputs == {
            "output_0": [p["output_0"] for p in predictions],
            "output_1": [p["output_1"] for p in predictions],
        }
        single = d.json("/v1/models/digits:predict", {"instances": [i.tolist() for i in image]})[
            "predictions"
        ]
        assert [int(np.argmax(p)) for p in single] == [int(np.argmax(p["output_1"])) for p in predictions]
        batched = d.json("/v1/models/digits:predict", {"inputs": [i.tolist() for i in image]})
        assert batched == {"outputs": single}

        for body, message in (
            ({"instances": [{"image": image[0].tolist()}]}, "missing inputs ['vibration']"),
            ({"instances": rows["instances"], "inputs": columns["inputs"]}, "exactly one of 'instances'"),
            (
                {"signature_name": "classify", "instances": rows["instances"]},
                'signature name: "classify" not found',
            ),
            (
                {"instances": [{"image": "AAAA", "vibration": vibration[0].tolist()}]},
                "input 'image': expects numbers",
            ),
            ({"inputs": {"image": [image[0].tolist()], "vibration": []}}, "input 'vibration': empty tensor"),
        ):
            error = d.json("/v1/models/fused_int8:predict", body, expect=400)
            assert list(error) == ["error"] and message in error["error"], (message, error)
        assert d.stop() == 0


def test_an_interpreter_of_its_own_gives_the_same_outputs(tmp_path: Path) -> None:
    images, _ = heldout()
    x = [(images[i].astype(np.float64) / 255.0)[..., None] for i in range(4)]
    config = digits_config(tmp_path, port=None)
    with HttpDaemon(config, "--set", 'http.predict.interpreter="own"') as d:
        got = d.json("/v1/models/digits:predict", {"instances": [i.tolist() for i in x]})["predictions"]
        for k in range(4):
            np.testing.assert_array_equal(np.float32(got[k]), reference("digits_int8.tflite", [x[k]])[0])
        assert "loaded an interpreter of its own for digits_int8" in d.log()
        d.wait_results(d.count() + 3)
        assert d.stop() == 0
