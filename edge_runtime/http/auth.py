"""Bearer tokens: read from a file (like the MQTT password), compared in constant time, never logged.

Off on a loopback address unless ``token_file`` is set; required elsewhere (the config refuses a
non-loopback ``host`` without one). Clients send ``Authorization: Bearer TOKEN``; browsers, which
cannot add that header to an ``EventSource`` or an ``<img>``, may send ``?access_token=TOKEN``
(RFC 6750, section 2.3). The probes (``/healthz``, ``/readyz``) and the page's static files need
no token: they carry no data.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from edge_runtime.errors import EdgeRuntimeError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/index.html", "/app.js", "/style.css", "/favicon.ico"})
MAX_TOKEN_BYTES = 4096


class HttpConfigError(EdgeRuntimeError, ValueError):
    """The HTTP server cannot start as configured (token or TLS files)."""


def read_token(path: Path) -> str:
    """The first line of ``path``; refuses a missing, unreadable, empty or huge file."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise HttpConfigError(f"http.token_file {str(path)!r}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise HttpConfigError(f"http.token_file {str(path)!r}: over {MAX_TOKEN_BYTES} bytes")
    lines = data.decode("utf-8", errors="replace").splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise HttpConfigError(f"http.token_file {str(path)!r}: the token must be at least 16 characters")
    return token


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the token (or its path is open)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _given(self, scope: Scope) -> bytes | None:
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return bytes(credentials).strip()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        values = query.get("access_token")
        return values[0].encode("latin-1") if values else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = self._given(scope)
        if given is not None and hmac.compare_digest(given, self._token):
            await self.app(scope, receive, send)
            return
        message = "a bearer token is required" if given is None else "the bearer token is not valid"
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="edge-runtime"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
