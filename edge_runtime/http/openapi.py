"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json`` and committed as
``docs/openapi.json`` (``python -m edge_runtime.http.openapi > docs/openapi.json``; a test checks
that the two are equal)."""

from __future__ import annotations

import json
from typing import Any

from edge_runtime import __version__

JSON = "application/json"
ERROR = {"$ref": "#/components/schemas/Error"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request: the message names the input or field",
        401: "Missing or wrong bearer token (only when a token is configured)",
        404: "No such model, version, pipeline or source",
        408: "The body did not arrive within http.body_timeout_s",
        413: "Body over http.max_body_bytes, or more instances than predict.max_batch",
        415: "Compressed bodies are not accepted",
        503: "Not ready, busy (predict.max_pending), or too many stream clients",
    }
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _get(summary: str, schema: dict[str, Any], *codes: int, tag: str, media: str = JSON) -> dict[str, Any]:
    ok = {"description": summary, "content": {media: {"schema": schema}}}
    return {"get": {"summary": summary, "tags": [tag], "responses": {"200": ok, **_errors(401, *codes)}}}


def _param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


NAME = _param("name", "A model name (as in results) or a pipeline name (its first model)")
VERSION = _param("version", "The served model version (the config's `version`, default 1)")


def _versioned(paths: dict[str, Any], path: str, item: dict[str, Any], suffix: str = "") -> None:
    for p, params in ((path, [NAME]), (path.replace("{name}", "{name}/versions/{version}"), [NAME, VERSION])):
        paths[p + suffix] = {**item, "parameters": params}


def openapi_document() -> dict[str, Any]:
    """The document (a fresh dict)."""
    paths: dict[str, Any] = {
        "/healthz": _get("Liveness: the process answers", {"type": "object"}, tag="probes"),
        "/readyz": _get(
            "Readiness: every pipeline made a result within http.ready_max_age_s and its source is up",
            {"$ref": "#/components/schemas/Ready"},
            503,
            tag="probes",
        ),
        "/api/status": _get(
            "Device, version, uptime, pipelines, readiness, stream clients", ANY_OBJECT, tag="status"
        ),
        "/api/health": _get("The health document, as on the MQTT health topic", ANY_OBJECT, tag="status"),
        "/api/pipelines": _get(
            "Each pipeline: trigger, models, rates, counters, latest seq", ANY_OBJECT, tag="status"
        ),
        "/api/pipelines/{name}/results/latest": {
            **_get(
                "The pipeline's latest result (as on its MQTT results topic)", ANY_OBJECT, 404, tag="status"
            ),
            "parameters": [_param("name", "Pipeline name")],
        },
        "/api/models": _get(
            "Each pipeline's models: name, version, sha256, delegate, fallbacks, tensors, store versions",
            ANY_OBJECT,
            tag="status",
        ),
        "/api/events": _get("The most recent events (up to 50)", ANY_OBJECT, tag="status"),
        "/api/results/stream": {
            "get": {
                "summary": "Every result (event: result) and, with events=true, every event (event: event), "
                "as Server-Sent Events; a client that falls http.stream_queue messages behind is dropped",
                "tags": ["stream"],
                "parameters": [
                    {
                        "name": "events",
                        "in": "query",
                        "schema": {"type": "boolean"},
                        "description": "Include events",
                    },
                    {
                        "name": "pipeline",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "One pipeline",
                    },
                ],
                "responses": {
                    "200": {"description": "An endless event stream", "content": {"text/event-stream": {}}},
                    **_errors(401, 404, 503),
                },
            }
        },
        "/api/sources/{name}/snapshot.jpg": {
            **_get(
                "The latest frame with the latest detections drawn",
                {"type": "string", "format": "binary"},
                404,
                503,
                tag="media",
                media="image/jpeg",
            ),
            "parameters": [_param("name", "Camera source name")],
        },
        "/api/sources/{name}/stream.mjpg": {
            **_get(
                "MJPEG live view at most http.mjpeg_fps",
                {"type": "string", "format": "binary"},
                404,
                503,
                tag="media",
                media="multipart/x-mixed-replace",
            ),
            "parameters": [_param("name", "Camera source name")],
        },
        "/v2": _get(
            "Open Inference Protocol: server metadata", {"$ref": "#/components/schemas/V2Server"}, tag="v2"
        ),
        "/v2/health/live": _get("Open Inference Protocol: live", {"type": "object"}, tag="v2"),
        "/v2/health/ready": _get("Open Inference Protocol: ready", {"type": "object"}, 503, tag="v2"),
        "/openapi.json": _get("This document", ANY_OBJECT, tag="page"),
    }
    _versioned(
        paths, "/v1/models/{name}", _get("TF Serving: model version status", ANY_OBJECT, 404, tag="v1")
    )
    _versioned(
        paths,
        "/v1/models/{name}",
        _get("TF Serving: signature metadata", ANY_OBJECT, 404, tag="v1"),
        "/metadata",
    )
    _versioned(
        paths,
        "/v1/models/{name}",
        {
            "post": {
                "summary": "TF Serving: predict; real values in (quantized for the model), dequantized out",
                "tags": ["v1"],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/V1Predict"}}},
                },
                "responses": {
                    "200": _json(ANY_OBJECT, "predictions (row format) or outputs (columnar)"),
                    **_errors(400, 401, 404, 408, 413, 503),
                },
            }
        },
        ":predict",
    )
    _versioned(
        paths,
        "/v2/models/{name}",
        _get(
            "Open Inference Protocol: model metadata", {"$ref": "#/components/schemas/V2Model"}, 404, tag="v2"
        ),
    )
    _versioned(
        paths,
        "/v2/models/{name}",
        _get("Open Inference Protocol: model ready", ANY_OBJECT, 404, tag="v2"),
        "/ready",
    )
    _versioned(
        paths,
        "/v2/models/{name}",
        {
            "post": {
                "summary": "Open Inference Protocol: infer (JSON, or Triton's binary tensor extension)",
                "tags": ["v2"],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": {"$ref": "#/components/schemas/V2Infer"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/V2Response"}, "Outputs, FP32"),
                    **_errors(400, 401, 404, 408, 413, 415, 503),
                },
            }
        },
        "/infer",
    )
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {
                "type": "string",
                "enum": ["FP16", "FP32", "FP64", "INT8", "UINT8", "INT16", "INT32"],
            },
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Ready": {
            "type": "object",
            "properties": {"ready": {"type": "boolean"}, "pipelines": {"type": "object"}},
        },
        "V1Predict": {
            "type": "object",
            "properties": {
                "signature_name": {"type": "string", "enum": ["serving_default"]},
                "instances": {"type": "array", "description": "Row format: one entry per instance"},
                "inputs": {"description": "Columnar format: a batched tensor or an object by input name"},
            },
        },
        "V2Server": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2Model": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array"},
                "platform": {"type": "string"},
                "inputs": {"type": "array"},
                "outputs": {"type": "array"},
            },
        },
        "V2Tensor": tensor,
        "V2Infer": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
                "outputs": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                },
            },
        },
        "V2Response": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-runtime local HTTP API",
            "version": __version__,
            "description": "Status, health, results stream, camera views and predict on demand (TensorFlow "
            "Serving REST v1 and the Open Inference Protocol v2). See docs/http.md.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }


def main() -> None:
    print(json.dumps(openapi_document(), indent=2))


if __name__ == "__main__":
    main()
