"""Camera views: ``/api/sources/{name}/snapshot.jpg`` (the latest frame with the latest detections
drawn) and ``/api/sources/{name}/stream.mjpg`` (the same as MJPEG, at most ``mjpeg_fps``).

Frames are read with the camera's ``peek`` (pipelines still see them as new) and encoded in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_runtime.http.context import Context, error_response
from edge_runtime.http.stream import BoundedStream
from edge_runtime.sources.base import Frame
from edge_runtime.sources.jpeg import full_size

BOUNDARY = b"frame"
BOX_COLOR = (0, 255, 0)


def encode_jpeg(image: Any, detections: list[dict[str, Any]], quality: int) -> bytes:
    """``image`` (BGR) as JPEG with each detection's box and label drawn."""
    import cv2

    canvas = image.copy() if detections else image
    for det in detections:
        try:
            x1, y1, x2, y2 = (round(float(v)) for v in det["box"])
        except (KeyError, TypeError, ValueError):
            continue
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, 2)
        cls = det.get("class") if isinstance(det.get("class"), dict) else None
        label = str(det.get("label", ""))
        if cls and cls.get("top"):
            label += f" / {cls['top'][0].get('label', '')}"
        score = det.get("score", 0.0)
        text = f"{label} {score:.2f}" if isinstance(score, int | float) else label
        cv2.putText(canvas, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, BOX_COLOR, 1)
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(data.tobytes())


def detections_for(ctx: Context, source: str) -> list[dict[str, Any]]:
    """The latest detections of the pipelines whose models look at ``source``."""
    found: list[dict[str, Any]] = []
    for p in ctx.host.http_pipelines():
        if source in {src for r in p.runners for _, _, src in r.images}:
            result = p.last_result
            if isinstance(result, dict) and isinstance(result.get("detections"), list):
                found += result["detections"]
    return found


def routes(ctx: Context) -> list[Route]:
    def camera(name: str) -> Any:
        source = ctx.host.http_sources().get(name)
        if source is None or not hasattr(source, "peek"):
            cameras = [n for n, s in ctx.host.http_sources().items() if hasattr(s, "peek")]
            return None, error_response(
                f"no camera source {name[:64]!r}; cameras: {', '.join(cameras) or 'none'}", 404
            )
        return source, None

    async def snapshot(request: Request) -> Response:
        name = request.path_params["name"]
        source, error = camera(name)
        if error is not None:
            return error  # type: ignore[no-any-return]
        frame: Frame | None = source.peek()
        if frame is None:
            return error_response(f"source {name!r} has no frame yet", 503)
        jpeg = await run_in_threadpool(
            encode_jpeg, full_size(frame), detections_for(ctx, name), ctx.config.jpeg_quality
        )
        headers = {"Cache-Control": "no-cache, no-store", "X-Frame-Seq": str(frame.seq)}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    async def mjpeg(request: Request) -> Response | BoundedStream:
        name = request.path_params["name"]
        source, error = camera(name)
        if error is not None:
            return error  # type: ignore[no-any-return]
        if not ctx.hub.acquire_stream():
            return error_response(f"too many stream clients (at most {ctx.config.max_stream_clients})", 503)
        interval = 1.0 / ctx.config.mjpeg_fps

        async def chunks(gone: asyncio.Event) -> AsyncIterator[bytes]:
            last = -1
            loop = asyncio.get_running_loop()
            while not gone.is_set() and not ctx.is_stopping():
                started = loop.time()
                frame: Frame | None = source.peek()
                if frame is not None and frame.seq != last:
                    last = frame.seq
                    jpeg = await run_in_threadpool(
                        encode_jpeg, full_size(frame), detections_for(ctx, name), ctx.config.jpeg_quality
                    )
                    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (
                        BOUNDARY,
                        len(jpeg),
                    )
                    yield head + jpeg + b"\r\n"
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

        return BoundedStream(
            chunks, f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}", ctx.hub.release_stream
        )

    return [
        Route("/api/sources/{name}/snapshot.jpg", snapshot),
        Route("/api/sources/{name}/stream.mjpg", mjpeg),
    ]
