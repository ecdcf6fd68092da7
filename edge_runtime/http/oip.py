"""The Open Inference Protocol (v2), as KServe, Triton and TorchServe speak it, over REST.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready``, ``POST .../infer`` with typed tensors (``FP32`` real values, or the
model's own quantized type as is), as JSON ``data`` or with Triton's binary tensor extension
(``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data_output``), which
``tritonclient`` uses by default. Errors are ``{"error": "message"}`` with a 4xx status.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_runtime import __version__
from edge_runtime.http.context import Context, dumps, json_response, parse_json, read_body
from edge_runtime.http.errors import ApiError
from edge_runtime.http.predict import (
    Array,
    Served,
    find_served,
    instance_shape,
    interface_dtype,
    public_name,
    run_predict,
    split_batch,
)
from edge_runtime.http.status import readiness

DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip
TO_DATATYPE = {v: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
MAX_DIMS = 8


def model_metadata(served: Served) -> dict[str, Any]:
    def tensor(spec: Any, output: bool) -> dict[str, Any]:
        return {
            "name": public_name(spec, output),
            "datatype": TO_DATATYPE[interface_dtype(spec)],
            "shape": [-1, *instance_shape(spec)],
        }

    return {
        "name": served.name,
        "versions": [served.version],
        "platform": "tensorflow_lite",
        "inputs": [tensor(s, False) for s in served.inputs],
        "outputs": [tensor(s, True) for s in served.outputs],
    }


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise ApiError(f"{where}: 'shape' must be a list of at most {MAX_DIMS} sizes")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 24 for d in value):
        raise ApiError(f"{where}: 'shape' sizes must be non-negative integers")
    return tuple(value)


def decode_input(tensor: Any, binary: memoryview, offset: int) -> tuple[str, Array, int]:
    """One request input as (name, array shaped as declared, new binary offset)."""
    if not isinstance(tensor, dict):
        raise ApiError("each of 'inputs' must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError("an input has no 'name'")
    where = f"input {name[:64]!r}"
    shape = _shape(tensor.get("shape"), where)
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise ApiError(f"{where}: datatype {str(datatype)[:16]!r} is not supported; send FP32")
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(f"{where}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise ApiError(f"{where}: binary_data_size {size!r} does not fit the binary data sent")
        if size != count * dtype.itemsize:
            raise ApiError(f"{where}: {size} bytes of binary data for shape {list(shape)} of {datatype}")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return name, array, offset + size
    if "data" not in tensor:
        raise ApiError(f"{where}: no 'data' and no binary_data_size")
    try:
        raw = np.asarray(tensor["data"])
    except ValueError:
        raise ApiError(f"{where}: 'data' is not a rectangular array") from None
    if raw.dtype.kind not in "biuf" or (raw.dtype.kind == "b") != (datatype == "BOOL"):
        raise ApiError(f"{where}: 'data' does not hold {datatype} values")
    if raw.size != count:
        raise ApiError(f"{where}: {raw.size} values for shape {list(shape)} ({count} values)")
    if raw.dtype.kind == "f" and dtype.kind in "iu" and not np.all(raw == np.round(raw)):
        raise ApiError(f"{where}: {datatype} data holds fractions")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ApiError(f"{where}: values out of the range of {datatype}")
    return name, raw.astype(dtype).reshape(shape), offset


def routes(ctx: Context) -> list[Route]:
    def served(request: Request) -> Served:
        pipelines = ctx.host.http_pipelines()
        return find_served(pipelines, request.path_params["name"], request.path_params.get("version"))

    async def server_metadata(request: Request) -> Response:
        return json_response(
            {"name": "edge-runtime", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        ok, _ = readiness(ctx)
        return json_response({"ready": ok}, 200 if ok else 503)

    async def metadata(request: Request) -> Response:
        return json_response(model_metadata(served(request)))

    async def model_ready(request: Request) -> Response:
        model = served(request)
        return json_response({"name": model.name, "ready": True})

    async def infer(request: Request) -> Response:
        model = served(request)
        if request.headers.get("content-encoding", "identity") != "identity":
            raise ApiError("Content-Encoding is not supported: send the body uncompressed", 415)
        body = await read_body(request, ctx.config)
        header = request.headers.get(HEADER_LENGTH)
        if header is not None:
            if not header.isdigit() or int(header) > len(body):
                raise ApiError(f"Inference-Header-Content-Length {header[:20]!r} does not fit the body")
            split = int(header)
        else:
            split = len(body)
        doc = parse_json(body[:split])
        binary = memoryview(body)[split:]
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
            raise ApiError("the request must be a JSON object with a non-empty 'inputs' list")
        named: dict[str, Array] = {}
        offset = 0
        for tensor in doc["inputs"]:
            name, array, offset = decode_input(tensor, binary, offset)
            spec = model.find_input(name)
            want = instance_shape(spec)
            if array.shape == want:
                array = array[None]
            elif array.shape[1:] != want:
                raise ApiError(
                    f"input {name!r}: expects shape {[-1, *want]} (or {list(want)}), got {list(array.shape)}"
                )
            if array.dtype.name not in ("float16", "float32", "float64", spec.dtype):
                raise ApiError(
                    f"input {name!r}: datatype {TO_DATATYPE[array.dtype.name]} is not accepted; send FP32 "
                    f"(real values) or {TO_DATATYPE.get(spec.dtype, spec.dtype)} (quantized codes)"
                )
            named[name] = array
        if offset != len(binary):
            raise ApiError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
        wanted, binary_out = _requested(model, doc)
        instances = split_batch(model, named, batched=True)
        results = await run_predict(ctx.predictor, model, instances)
        return _answer(model, doc, results, wanted, binary_out)

    prefix = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route(prefix, metadata),
        Route(versioned, metadata),
        Route(prefix + "/ready", model_ready),
        Route(versioned + "/ready", model_ready),
        Route(prefix + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
    ]


def _requested(model: Served, doc: dict[str, Any]) -> tuple[list[int], dict[int, bool]]:
    """The outputs asked for (all when none are named) and which of them go as binary data."""
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError("'parameters' must be an object")
    default_binary = params.get("binary_data_output") is True
    names = model.output_names()
    outputs = doc.get("outputs")
    if outputs is None:
        return list(range(len(names))), dict.fromkeys(range(len(names)), default_binary)
    if not isinstance(outputs, list):
        raise ApiError("'outputs' must be a list of {name}")
    wanted: list[int] = []
    binary: dict[int, bool] = {}
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in names:
            raise ApiError(f"model {model.name!r} has no output {str(name)[:64]!r}; outputs are {names}")
        index = names.index(name)
        out_params = out.get("parameters") or {}
        wanted.append(index)
        binary[index] = (
            bool(out_params.get("binary_data", default_binary)) if isinstance(out_params, dict) else False
        )
    return wanted, binary


def _answer(
    model: Served, doc: dict[str, Any], results: list[list[Array]], wanted: list[int], binary: dict[int, bool]
) -> Response:
    names = model.output_names()
    tensors = []
    chunks: list[bytes] = []
    for index in wanted:
        array = np.ascontiguousarray(np.stack([r[index] for r in results]), dtype=np.float32)
        tensor: dict[str, Any] = {"name": names[index], "datatype": "FP32", "shape": list(array.shape)}
        if binary.get(index):
            raw = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if isinstance(doc.get("id"), str):
        answer["id"] = doc["id"]
    head = dumps(answer)
    if not chunks:
        return Response(head, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(len(head))}
    return Response(head + b"".join(chunks), media_type="application/octet-stream", headers=headers)
