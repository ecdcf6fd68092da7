"""What every API module shares: the context handed to its routes, JSON responses, bounded bodies."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from edge_runtime.http.config import HttpConfig
from edge_runtime.http.host import Host
from edge_runtime.http.hub import Hub, dumps

__all__ = ["Context", "dumps", "error_response", "json_response", "parse_json", "read_body"]
from edge_runtime.http.errors import ApiError
from edge_runtime.http.predict import Predictor


@dataclass
class Context:
    """Handed to every module's ``routes()``: the daemon, the config, the fan-out and the predictor."""

    config: HttpConfig
    host: Host
    hub: Hub
    predictor: Predictor
    started_mono: float = field(default_factory=time.monotonic)
    stopping: asyncio.Event | None = None  # set on the server's loop when it stops

    def is_stopping(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(value), status, headers=headers, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    """``{"error": message}``: the error body of TF Serving's REST API and of the Open Inference
    Protocol, and of every other endpoint here."""
    return json_response({"error": message}, status)


async def read_body(request: Request, config: HttpConfig) -> bytes:
    """The request body, at most ``max_body_bytes`` (413) and within ``body_timeout_s`` (408)."""
    limit = config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > limit:
            raise ApiError(f"request body of {int(declared)} bytes is over the limit of {limit}", 413)
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(f"request body is over the limit of {limit} bytes", 413)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), config.body_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(f"request body not received within {config.body_timeout_s:g} s", 408) from None
    except ClientDisconnect:
        raise ApiError("client disconnected before the body was complete", 400) from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """The body as JSON, or a 400 saying where it is broken."""
    if not body:
        raise ApiError("empty request body: expected JSON")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError("request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError("malformed JSON: nested too deeply") from None
