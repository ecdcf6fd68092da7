"""The TensorFlow Serving REST API (v1): model status, metadata and ``:predict``.

``GET /v1/models/{name}[/versions/{v}]``, ``GET /v1/models/{name}[/versions/{v}]/metadata``,
``POST /v1/models/{name}[/versions/{v}]:predict`` with ``{"instances": [...]}`` (row format: one
entry per instance; a value, or an object by input name) or ``{"inputs": ...}`` (columnar: a
batched tensor, or an object by input name), answered with ``{"predictions": [...]}`` or
``{"outputs": ...}``. Errors are ``{"error": "message"}`` with a 4xx status, as TF Serving does.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_runtime.http.context import Context, json_response, parse_json, read_body
from edge_runtime.http.errors import ApiError
from edge_runtime.http.predict import (
    Array,
    Served,
    find_served,
    instance_shape,
    json_array,
    public_name,
    run_predict,
    split_batch,
)

SIGNATURE = "serving_default"
DT = {"float32": "DT_FLOAT", "float16": "DT_HALF", "int8": "DT_INT8", "uint8": "DT_UINT8",
      "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64", "bool": "DT_BOOL"}  # fmt: skip


def status_body(served: Served) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": served.version,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def _tensor_info(spec: Any, name: str, output: bool = False) -> dict[str, Any]:
    dtype = "float32" if spec.quant is not None else spec.dtype
    dims = [{"size": "-1"}] + [{"size": str(d)} for d in instance_shape(spec)]
    return {
        "dtype": DT.get(dtype, "DT_INVALID"),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": name,
    }


def metadata_body(served: Served) -> dict[str, Any]:
    signature = {
        "inputs": {public_name(s): _tensor_info(s, s.name) for s in served.inputs},
        "outputs": {public_name(s, True): _tensor_info(s, s.name, True) for s in served.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": served.name, "signature_name": "", "version": served.version},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }


def rows_to_named(served: Served, instances: Any) -> dict[str, Array]:
    """Row format: ``[instance, ...]``, each a tensor (one-input models) or ``{input: tensor}``."""
    if not isinstance(instances, list) or not instances:
        raise ApiError("'instances' must be a non-empty list")
    names = served.input_names()
    columns: dict[str, list[Any]] = {}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict):
            for key, value in instance.items():
                columns.setdefault(key, []).append(value)
        elif len(names) == 1:
            columns.setdefault(names[0], []).append(instance)
        else:
            raise ApiError(
                f"instances[{i}]: model {served.name!r} has inputs {names}: give an object by name"
            )
    for key, values in columns.items():
        if len(values) != len(instances):
            raise ApiError(f"input {key!r} is missing from some instances")
    return {key: json_array(values, f"input {key!r}") for key, values in columns.items()}


def columns_to_named(served: Served, inputs: Any) -> dict[str, Array]:
    """Columnar format: a batched tensor (one-input models) or ``{input: batched tensor}``."""
    if isinstance(inputs, dict):
        if not inputs:
            raise ApiError("'inputs' must not be empty")
        return {key: json_array(value, f"input {key!r}") for key, value in inputs.items()}
    names = served.input_names()
    if len(names) != 1:
        raise ApiError(f"'inputs': model {served.name!r} has inputs {names}: give an object by name")
    return {names[0]: json_array(inputs, f"input {names[0]!r}")}


def _pack(served: Served, outputs: list[Array]) -> Any:
    names = served.output_names()
    if len(names) == 1:
        return outputs[0].tolist()
    return {name: out.tolist() for name, out in zip(names, outputs, strict=True)}


def routes(ctx: Context) -> list[Route]:
    def served(request: Request) -> Served:
        name = request.path_params["name"]
        if request.method != "POST" and ":" in name:
            verb = name.rpartition(":")[2][:16]
            raise ApiError(f"Method Not Allowed: :{verb} takes POST", 405)
        pipelines = ctx.host.http_pipelines()
        return find_served(pipelines, request.path_params["name"], request.path_params.get("version"))

    async def model_status(request: Request) -> Response:
        return json_response(status_body(served(request)))

    async def metadata(request: Request) -> Response:
        return json_response(metadata_body(served(request)))

    async def predict(request: Request) -> Response:
        model = served(request)
        body = parse_json(await read_body(request, ctx.config))
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object with 'instances' or 'inputs'")
        unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
        if unknown:
            raise ApiError(f"unknown fields {unknown}; expected 'signature_name' and 'instances' or 'inputs'")
        signature = body.get("signature_name", SIGNATURE)
        if signature != SIGNATURE:
            raise ApiError(f'Serving signature name: "{str(signature)[:64]}" not found in signature def')
        if ("instances" in body) == ("inputs" in body):
            raise ApiError("give exactly one of 'instances' (row format) or 'inputs' (columnar format)")
        if "instances" in body:
            named = rows_to_named(model, body["instances"])
        else:
            named = columns_to_named(model, body["inputs"])
        instances = split_batch(model, named, batched=True)
        results = await run_predict(ctx.predictor, model, instances)
        if "instances" in body:
            return json_response({"predictions": [_pack(model, outs) for outs in results]})
        import numpy as np

        stacked = [np.stack([r[k] for r in results]) for k in range(len(model.outputs))]
        return json_response({"outputs": _pack(model, stacked)})

    return [
        Route("/v1/models/{name}", model_status),
        Route("/v1/models/{name}/versions/{version}", model_status),
        Route("/v1/models/{name}/metadata", metadata),
        Route("/v1/models/{name}/versions/{version}/metadata", metadata),
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", predict, methods=["POST"]),
    ]
