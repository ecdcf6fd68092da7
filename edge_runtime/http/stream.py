"""``GET /api/results/stream``: every result (and with ``?events=true`` every event) as Server-Sent
Events, and the bounded streaming response that MJPEG live views use too.

A client gets ``event: result`` (and ``event: event``) messages whose data is the JSON the MQTT
topics carry; ``?pipeline=NAME`` keeps one pipeline's results. A client that falls
``stream_queue`` messages behind, or does not take a chunk within ``SEND_TIMEOUT_S``, is sent
``event: dropped`` when possible and disconnected; at most ``max_stream_clients`` streams are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge_runtime.http.context import Context, dumps, error_response

SEND_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0
POLL_S = 1.0


class BoundedStream:
    """An endless response whose every chunk must leave within ``send_timeout`` s; ends when the
    client disconnects, the server stops, or the chunks end. ``on_close`` runs exactly once."""

    def __init__(
        self,
        chunks: Callable[[asyncio.Event], AsyncIterator[bytes]],
        media_type: str,
        on_close: Callable[[], None],
        send_timeout: float = SEND_TIMEOUT_S,
    ) -> None:
        self.chunks = chunks
        self.media_type = media_type
        self.on_close = on_close
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        chunks = self.chunks(gone)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", self.media_type.encode()),
                        (b"cache-control", b"no-cache, no-store"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            async for chunk in chunks:
                if gone.is_set():
                    break
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": chunk, "more_body": True}), self.send_timeout
                )
            if not gone.is_set():
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}), self.send_timeout
                )
        except (asyncio.TimeoutError, OSError):
            pass  # a client too slow to take one chunk: dropped (the connection is closed)
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
            self.on_close()


def routes(ctx: Context) -> list[Route]:
    async def results_stream(request: Request) -> Response | BoundedStream:
        with_events = request.query_params.get("events", "false").lower() in ("1", "true", "yes")
        only = request.query_params.get("pipeline")
        names = {p.name for p in ctx.host.http_pipelines()}
        if only is not None and only not in names:
            return error_response(f"no pipeline {only[:64]!r}; pipelines: {', '.join(sorted(names))}", 404)
        if not ctx.hub.acquire_stream():
            return error_response(f"too many stream clients (at most {ctx.config.max_stream_clients})", 503)
        kinds = frozenset({"result", "event"} if with_events else {"result"})
        client = ctx.hub.subscribe(asyncio.get_running_loop(), kinds)

        async def chunks(gone: asyncio.Event) -> AsyncIterator[bytes]:
            yield b"retry: 2000\n: connected\n\n"
            quiet_since = time.monotonic()
            while not gone.is_set() and not ctx.is_stopping():
                batch = await client.next_batch(POLL_S)
                if client.dropped:
                    message = {"error": f"this client fell {client.limit} messages behind and was dropped"}
                    yield b"event: dropped\ndata: " + dumps(message) + b"\n\n"
                    return
                parts = []
                for item in batch:
                    if only is not None and item.kind == "result" and item.data.get("pipeline") != only:
                        continue
                    parts.append(item.sse())
                if parts:
                    quiet_since = time.monotonic()
                    yield b"".join(parts)
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"

        def close() -> None:
            ctx.hub.unsubscribe(client)
            ctx.hub.release_stream()

        return BoundedStream(chunks, "text/event-stream", close)

    return [Route("/api/results/stream", results_stream)]
