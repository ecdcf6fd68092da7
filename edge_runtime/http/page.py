"""The live page at ``/`` and ``/openapi.json``: fixed files shipped in ``static/`` (package data),
served by name from a fixed table, so no request path ever reaches the file system."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_runtime.http.context import Context, json_response
from edge_runtime.http.openapi import openapi_document

FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
}


def static_file(name: str) -> bytes:
    return resources.files("edge_runtime.http").joinpath("static").joinpath(name).read_bytes()


def routes(ctx: Context) -> list[Route]:
    cache = {path: static_file(name) for path, (name, _) in FILES.items()}  # a few KB, read once
    document = openapi_document()

    async def serve(request: Request) -> Response:
        _, media_type = FILES[request.url.path]
        return Response(cache[request.url.path], media_type=media_type, headers=HEADERS)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    return [Route(path, serve) for path in FILES] + [Route("/openapi.json", openapi)]
