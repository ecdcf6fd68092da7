"""Getting the model file to a device: an HTTP server on the operator's machine, or MQTT chunks.

A :class:`Delivery` is asked, per device, for the fields of ``model.update`` that say where the
file is: ``{"url": ...}`` (:class:`HttpDelivery`, backed by :class:`ModelServer`) or
``{"transfer": TID}`` after every chunk was acknowledged (:class:`ChunkDelivery`).
"""

from __future__ import annotations

import base64
import logging
import math
import queue
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from edge_runtime.fleet.bus import Reply, Requester
from edge_runtime.fleet.common import FleetError
from edge_runtime.supervision import Supervised, spawn

log = logging.getLogger(__name__)

ChunkProgress = Callable[[int, int], None]  # (chunks acknowledged, total)

DEFAULT_CHUNK = 32 * 1024  # 32 KiB -> about 44 KB of JSON; the daemon's command limit is 64 KiB
MAX_COMMAND_BYTES = 65536


class DeliveryError(FleetError):
    """The file did not reach the device; ``timed_out`` when it stopped answering."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Delivery(Protocol):
    def deliver(
        self, device: str, deadline: float, progress: ChunkProgress, cancel: threading.Event
    ) -> dict[str, Any]:
        """Make the file available to ``device`` (before the monotonic ``deadline``, giving up
        when ``cancel`` is set); returns the ``model.update`` fields that point at it."""


# --- HTTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    client: str
    status: int
    bytes: int


class ModelServer:
    """Serves one file at ``/{random token}/{file name}`` with ``ThreadingHTTPServer``; anything
    else is 404. Started on ``host`` and ``port`` (0: a free one); a context manager."""

    def __init__(
        self, path: Path, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None
    ) -> None:
        self.path = path
        self.host = host
        self.token = token or secrets.token_urlsafe(16)
        self.route = f"/{self.token}/{urllib.parse.quote(path.name)}"
        self.downloads: list[Download] = []
        self._lock = threading.Lock()
        self._thread: Supervised | None = None
        self._stopping = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "edge-fleet"
            sys_version = ""

            def do_GET(self) -> None:
                server._serve(self, body=True)

            def do_HEAD(self) -> None:
                server._serve(self, body=False)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http %s: " + format, self.client_address[0], *args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise FleetError(f"cannot serve the model on {host}:{port}: {exc.strerror or exc}") from exc
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.route}"

    def _serve(self, request: BaseHTTPRequestHandler, *, body: bool) -> None:
        client = request.client_address[0]
        if urllib.parse.urlsplit(request.path).path != self.route:
            self._record(client, 404, 0)
            request.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            f = self.path.open("rb")
        except OSError as exc:
            log.error("%s: cannot read the model: %s", self.path, exc)
            self._record(client, 500, 0)
            request.send_error(HTTPStatus.INTERNAL_SERVER_ERROR)
            return
        with f:
            size = f.seek(0, 2)
            f.seek(0)
            request.send_response(HTTPStatus.OK)
            request.send_header("Content-Type", "application/octet-stream")
            request.send_header("Content-Length", str(size))
            request.end_headers()
            sent = 0
            if body:
                try:
                    shutil.copyfileobj(f, request.wfile, 64 * 1024)
                    sent = size
                except (BrokenPipeError, ConnectionResetError) as exc:
                    log.warning("download by %s cut off: %s", client, exc)
            self._record(client, 200, sent)

    def _record(self, client: str, status: int, size: int) -> None:
        with self._lock:
            self.downloads.append(Download(client, status, size))

    def start(self) -> ModelServer:
        # supervised: a crash of the file server is logged with its traceback and the server runs
        # again (until stopped), so a rollout's downloads do not just stall
        self._stopping = False
        self._thread = spawn(
            "fleet-http", self.httpd.serve_forever, should_restart=lambda: not self._stopping
        )
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class HttpDelivery:
    """Every device downloads the same URL."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def deliver(
        self, device: str, deadline: float, progress: ChunkProgress, cancel: threading.Event
    ) -> dict[str, Any]:
        return {"url": self.server.url}


# --- MQTT chunks -----------------------------------------------------------------------------------


def check_chunk_size(chunk_size: int, max_command_bytes: int = MAX_COMMAND_BYTES) -> int:
    """A chunk size whose ``model.chunk`` command (base64 + JSON) fits the command limit."""
    encoded = 4 * math.ceil(chunk_size / 3) + 300  # base64 plus the JSON fields around it
    if chunk_size < 1024 or encoded > max_command_bytes:
        largest = (max_command_bytes - 300) // 4 * 3 // 1024
        raise FleetError(f"--chunk-size {chunk_size}: must be 1024..{largest * 1024} bytes")
    return chunk_size


class ChunkDelivery:
    """Sends the file as ``model.chunk`` commands, ``window`` unacknowledged at a time.

    Each chunk has its own request id (``{base}-c{i}``) and is acknowledged with
    ``{"ok": true, "received": k, "total": n}``; a refusal or silence until the deadline fails
    the delivery. The transfer id is the same for every device (they each keep their own).
    """

    def __init__(
        self,
        requester: Requester,
        path: Path,
        *,
        new_id: Callable[[], str],
        chunk_size: int = DEFAULT_CHUNK,
        window: int = 4,
        transfer_id: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requester = requester
        self.path = path
        self.new_id = new_id
        self.chunk_size = check_chunk_size(chunk_size)
        self.window = max(1, window)
        self.transfer_id = transfer_id or f"fleet-{secrets.token_hex(8)}"
        self.monotonic = monotonic
        self.size = path.stat().st_size
        self.total = max(1, math.ceil(self.size / self.chunk_size))

    def _chunk(self, index: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(index * self.chunk_size)
            return f.read(self.chunk_size)

    def deliver(
        self, device: str, deadline: float, progress: ChunkProgress, cancel: threading.Event
    ) -> dict[str, Any]:
        base = self.new_id()
        sink: queue.Queue[Reply] = queue.Queue()
        pending: dict[str, int] = {}
        acked = 0
        try:
            for index in range(self.total):
                while len(pending) >= self.window:
                    acked += self._await(device, sink, pending, deadline, cancel)
                    progress(acked, self.total)
                request_id = f"{base}-c{index}"
                self.requester.register(device, request_id, sink)
                pending[request_id] = index
                data = base64.b64encode(self._chunk(index)).decode("ascii")
                body = {
                    "id": request_id,
                    "transfer": self.transfer_id,
                    "index": index,
                    "total": self.total,
                    "data": data,
                }
                self.requester.send(device, "model.chunk", body)
            while pending:
                acked += self._await(device, sink, pending, deadline, cancel)
                progress(acked, self.total)
        finally:
            for request_id in list(pending):
                self.requester.unregister(device, request_id)
        return {"transfer": self.transfer_id}

    def _await(
        self,
        device: str,
        sink: queue.Queue[Reply],
        pending: dict[str, int],
        deadline: float,
        cancel: threading.Event,
    ) -> int:
        while True:
            if cancel.is_set():
                raise DeliveryError(f"transfer {self.transfer_id} interrupted")
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                first = min(pending.values())
                raise DeliveryError(
                    f"no acknowledgement of chunk {first} of {self.total} (transfer {self.transfer_id})",
                    timed_out=True,
                )
            try:
                reply = sink.get(timeout=min(remaining, 0.2))
                break
            except queue.Empty:
                continue
        index = pending.pop(reply.request_id, None)
        self.requester.unregister(device, reply.request_id)
        if index is None:
            return 0
        if reply.body.get("ok") is not True:
            error = reply.body.get("error") or "refused"
            raise DeliveryError(f"chunk {index} of {self.total} refused: {error}")
        return 1
