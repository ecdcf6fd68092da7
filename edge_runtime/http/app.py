"""The ASGI application (every module's routes, errors as JSON, the token check) and the h11
protocol that bounds connections and header time. Imported when the server starts, so that the
daemon's pipelines are running before Starlette and uvicorn are loaded."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_runtime.http import media, oip, page, status, stream, tfserving
from edge_runtime.http.auth import BearerAuth
from edge_runtime.http.context import Context, error_response
from edge_runtime.http.errors import ApiError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a hard cap on connections and a deadline on request headers."""

    max_connections = 32
    header_timeout_s = 10.0
    cut_off = 0  # connections closed by either guard (all instances)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            GuardedH11Protocol.cut_off += 1
            transport.abort()
            return
        self._arm(None)

    def data_received(self, data: bytes) -> None:
        """Refuse request headers over ``MAX_HEADER_BYTES`` even when they come in one piece."""
        if self.conn.their_state is h11.IDLE:
            pending = bytes(self.conn.trailing_data[0]) + data
            if len(pending) > MAX_HEADER_BYTES and b"\r\n\r\n" not in pending[: MAX_HEADER_BYTES + 4]:
                GuardedH11Protocol.cut_off += 1
                body = b'{"error":"request headers over %d bytes"}' % MAX_HEADER_BYTES
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
                self.transport.close()
                return
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm(self.cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _arm(self, cycle: Any) -> None:
        """Close the connection unless a new request's headers are in within the deadline (one
        timer per connection: re-arming cancels the previous one)."""
        timer: asyncio.TimerHandle | None = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._deadline, cycle)

    def _deadline(self, armed_cycle: Any) -> None:
        if self.transport.is_closing() or self.cycle is not armed_cycle:
            return  # a request arrived (its body has its own deadline in the app)
        GuardedH11Protocol.cut_off += 1
        self.transport.close()


def build_app(ctx: Context, token: str | None) -> Any:
    """The ASGI application: every module's routes, errors as JSON, and the token check."""
    routes: list[BaseRoute] = [
        *status.routes(ctx),
        *stream.routes(ctx),
        *media.routes(ctx),
        *tfserving.routes(ctx),
        *oip.routes(ctx),
        *page.routes(ctx),
    ]

    async def predict_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(str(exc), exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        code = int(getattr(exc, "status_code", 500))
        detail = str(getattr(exc, "detail", "")) or "error"
        return error_response(detail if code != 404 else f"no such path: {request.url.path[:200]}", code)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("http %s %s failed: %s", request.method, request.url.path[:200], exc, exc_info=exc)
        return error_response(f"internal error: {type(exc).__name__}", 500)

    app: Any = Starlette(
        routes=routes,
        exception_handlers={ApiError: predict_error, HTTPException: http_error, Exception: unexpected},
    )
    if token is not None:
        app = BearerAuth(app, token)
    return app
