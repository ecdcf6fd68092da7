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
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.http.config import HttpConfig

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


def http_problems(config: HttpConfig, resolve: Callable[[str], Path]) -> list[str]:
    """What the HTTP server would refuse at start, as ``path: value: message`` lines: a token file
    that cannot be read or is too short, TLS files that do not load (for the daemon's preflight)."""
    if not config.enabled:
        return []
    problems = []
    if config.token_file:
        try:
            read_token(resolve(config.token_file))
        except HttpConfigError as exc:
            problems.append(f"http.token_file: {config.token_file!r}: {str(exc).split(': ', 1)[1]}")
    if config.tls.cert:
        cert, key = resolve(config.tls.cert), resolve(config.tls.key)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"http.tls.cert: {config.tls.cert!r}: cannot load it with {key}: {exc}")
    return problems


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
