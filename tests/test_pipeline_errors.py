"""The ``pipeline.error`` path on a real daemon: an inference that fails is counted, reported once
as an event (and once in the log), gives no result and no ``seq``, and the pipeline goes on.

The failure is a real runtime error, driven by the data: a small TFLite model, written here with
the flatbuffers schema shipped in the LiteRT wheel, casts its 1x1 int8 image input to an index and
GATHERs a row of a constant table with it. A bright frame (pixel 230 -> q = 102) picks a row; a
dark one (pixel 30 -> q = -98) is a negative index, which LiteRT refuses at invoke ("gather index
out of bounds"). The camera plays a video of bright and dark frames without pacing, so every frame
is inferred once.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, stats_line
from devkit.mqtt_client import Subscriber

ROWS = 128  # valid indices 0..127: q = pixel - 128 is valid for pixels 128..255
BRIGHT, DARK = 230, 30
PATTERN = [BRIGHT] * 10 + [DARK] * 5 + [BRIGHT] * 10 + [DARK] * 3 + [BRIGHT] * 10


def gather_model(path: Path) -> Path:
    """image int8 [1,1,1,1] (scale 1/255, zero point -128) -> CAST int32 -> GATHER from a
    [128, 4] table whose row i is one-hot at class i // 32 -> scores float32 [1,1,1,1,4]."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    table = np.zeros((ROWS, 4), np.float32)
    table[np.arange(ROWS), np.arange(ROWS) // 32] = 1.0

    def tensor(
        name: str, shape: list[int], kind: int, buffer: int, quant: tuple[float, int] | None = None
    ) -> Any:
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, kind, buffer
        if quant is not None:
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [quant[0]], [quant[1]]
        return t

    def code(op: int) -> Any:
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = op, op, 1
        return c

    cast = fb.OperatorT()
    cast.opcodeIndex, cast.inputs, cast.outputs = 0, [0], [2]
    cast.builtinOptionsType = fb.BuiltinOptions.CastOptions
    cast.builtinOptions = fb.CastOptionsT()
    cast.builtinOptions.inDataType, cast.builtinOptions.outDataType = fb.TensorType.INT8, fb.TensorType.INT32
    gather = fb.OperatorT()
    gather.opcodeIndex, gather.inputs, gather.outputs = 1, [1, 2], [3]
    gather.builtinOptionsType = fb.BuiltinOptions.GatherOptions
    gather.builtinOptions = fb.GatherOptionsT()
    subgraph = fb.SubGraphT()
    subgraph.tensors = [
        tensor("image", [1, 1, 1, 1], fb.TensorType.INT8, 0, (1 / 255, -128)),
        tensor("table", [ROWS, 4], fb.TensorType.FLOAT32, 1),
        tensor("index", [1, 1, 1, 1], fb.TensorType.INT32, 0),
        tensor("scores", [1, 1, 1, 1, 4], fb.TensorType.FLOAT32, 0),
    ]
    subgraph.inputs, subgraph.outputs, subgraph.operators = [0], [3], [cast, gather]
    constant = fb.BufferT()
    constant.data = list(table.tobytes())
    model = fb.ModelT()
    model.version, model.description = 3, "edge-runtime test: gather by pixel value"
    model.operatorCodes = [code(fb.BuiltinOperator.CAST), code(fb.BuiltinOperator.GATHER)]
    model.subgraphs, model.buffers = [subgraph], [fb.BufferT(), constant]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def gray_video(path: Path, levels: list[int]) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (32, 32))
    for level in levels:
        writer.write(np.full((32, 32, 3), level, np.uint8))
    writer.release()
    return path


def config(tmp_path: Path, port: int, device: str) -> Path:
    model = gather_model(tmp_path / "gather.tflite")
    video = gray_video(tmp_path / "levels.avi", PATTERN)
    path = tmp_path / "gather.toml"
    path.write_text(
        f"""
[device]
id = "{device}"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "127.0.0.1"
port = {port}

[health]
interval_s = 1.0

[sources.camera]
type = "camera"
uri = "{video}"
realtime = false

[[pipelines]]
name = "gather"
trigger = "camera"

[[pipelines.models]]
path = "{model}"
inputs = [{{ kind = "image", source = "camera", resize = "stretch", color = "gray", std = 255.0 }}]
postprocess = {{ type = "classification", top_k = 1 }}
"""
    )
    return path


def test_an_invoke_error_is_counted_reported_once_and_the_pipeline_goes_on(
    tmp_path: Path, broker: Mosquitto
) -> None:
    device = f"errors-{uuid.uuid4().hex[:8]}"
    bright = [i + 1 for i, level in enumerate(PATTERN) if level == BRIGHT]  # frame numbers
    dark = [i + 1 for i, level in enumerate(PATTERN) if level == DARK]
    with Subscriber(broker.host, broker.port, [f"edge/{device}/events"]) as sub:
        with Daemon(config(tmp_path, broker.port, device)) as daemon:
            assert daemon.proc.wait(120) == 0, daemon.log()[-3000:]  # the video ends: finished
        log = daemon.log()
        stats = stats_line(log, "pipeline", "gather")
        # every dark frame failed, every bright one gave a result: nothing else happened
        assert (stats["triggers"], stats["errors"], stats["results"]) == (
            len(PATTERN),
            len(dark),
            len(bright),
        ), stats
        assert "gather index out of bounds" in stats["last_error"], stats
        results = daemon.results
        assert [r["trigger"]["seq"] for r in results] == bright  # results after each error: it went on
        assert [r["seq"] for r in results] == list(range(1, len(bright) + 1))  # a failure takes no seq
        assert {r["result"]["top"][0]["index"] for r in results} == {3}  # q = 102 -> row 102 -> class 3
        # reported once: one event, one ERROR line, for eight failures
        assert sub.wait_for(lambda ms: any(m.json()["kind"] == "pipeline.error" for m in ms), 30)
        reported = [m.json() for m in sub.messages() if m.json()["kind"] == "pipeline.error"]
    assert len(reported) == 1, [e["message"] for e in reported]
    assert reported[0]["pipeline"] == "gather"
    assert reported[0]["message"].startswith("pipeline gather: gather.tflite: invoke failed: "), reported[0]
    assert "gather index out of bounds" in reported[0]["message"]
    errors = [
        line for line in log.splitlines() if re.search(r" ERROR edge_runtime\S*: pipeline gather: ", line)
    ]
    assert len(errors) == 1, errors
    assert "Traceback" not in log
    json.dumps(reported)  # the event is plain JSON


def test_the_same_invoke_error_reads_the_same_every_time(tmp_path: Path) -> None:
    """LiteRT's error reporter keeps every earlier message in its buffer: without care, the n-th
    failure's message holds n copies (and the pipeline reports each as a new error)."""
    from edge_runtime.errors import InvokeError
    from edge_runtime.runtime.model import Model

    model = Model(gather_model(tmp_path / "gather.tflite"), delegates=["cpu"])
    messages = []
    for q in (-98, 102, -1, -3, 5, -98):
        try:
            (scores,) = model.invoke([np.full((1, 1, 1, 1), q, np.int8)])
        except InvokeError as exc:
            messages.append(str(exc))
        else:
            assert int(np.argmax(scores)) == q // 32
    assert len(messages) == 4 and len(set(messages)) == 1, messages
    assert messages[0].startswith("gather.tflite: invoke failed: ")
    assert messages[0].count("gather index out of bounds") == 1, messages[0]
    with pytest.raises(InvokeError, match="gather index out of bounds"):
        model.invoke([np.full((1, 1, 1, 1), -128, np.int8)])
