"""A small HTTP/1.1 responder with written-down bounds, for the metrics endpoint.

One thread runs an asyncio loop; no thread per connection. Bounds:

- **listen backlog** ``backlog`` (the kernel caps it at ``net.core.somaxconn``);
- **connections** at most ``max_connections`` open at once: a new connection beyond the bound
  closes the *oldest* open one (so idle or slow clients cannot keep a scraper out; a scraper's
  own request takes microseconds and is answered from memory);
- **time**: each connection has ``timeout_s`` of wall-clock time in total to send its request
  head and read the answer (a slowloris client that sends one byte a second is cut off at the
  deadline, however steadily it sends);
- **size**: a request head over :data:`MAX_HEAD` bytes is answered 431 and closed; bodies are
  never read.

Every answer closes its connection (``Connection: close``). The responder calls ``respond(path)``
for ``GET``/``HEAD``; it must be cheap (the metrics endpoint returns a prepared snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_runtime.supervision import Supervised, spawn

log = logging.getLogger(__name__)

MAX_HEAD = 8192
"""Largest request line plus headers, in bytes."""

Response = tuple[int, bytes, str]
"""(status, body, content type)"""

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}


@dataclass(frozen=True)
class Limits:
    """The bounds of one server (see the module docstring)."""

    backlog: int = 128
    max_connections: int = 32
    timeout_s: float = 5.0


class BoundedHttpServer:
    """Serves ``respond(path)`` on ``host:port`` within :class:`Limits`."""

    def __init__(self, host: str, port: int, respond: Callable[[str], Response], limits: Limits) -> None:
        self.host = host
        self.requested_port = port
        self.respond = respond
        self.limits = limits
        self.port = port
        self.accepted = 0
        self.evicted = 0
        self.timed_out = 0
        self.answered = 0
        self._open: dict[asyncio.StreamWriter, float] = {}  # insertion order: oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: Supervised | None = None
        self._stopping = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        """Listen (raises OSError when the address cannot be bound), then serve on a thread."""
        loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(
                asyncio.start_server(
                    self._connection,
                    self.host,
                    self.requested_port,
                    backlog=self.limits.backlog,
                    limit=MAX_HEAD,
                    reuse_address=True,
                )
            )
        except BaseException:
            loop.close()
            raise
        self._loop, self._server = loop, server
        self.port = int(server.sockets[0].getsockname()[1])
        self._stopping = False
        self._thread = spawn(
            "metrics-http",
            lambda: self._run(loop),
            should_restart=lambda: not self._stopping,
            on_exit=loop.close,
        )

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop's thread; an unexpected exception out of the loop restarts it (supervised)."""
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; the port is free afterwards."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True
        done = threading.Event()

        async def close() -> None:
            try:
                if self._server is not None:
                    self._server.close()
                    await self._server.wait_closed()
                for writer in list(self._open):
                    writer.transport.abort()
            finally:
                done.set()
                loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(close()))
        done.wait(timeout)
        thread.join(timeout)
        self._loop = self._server = self._thread = None

    # -- one connection (on the loop's thread) ---------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        while len(self._open) >= self.limits.max_connections:
            oldest = next(iter(self._open))
            self._open.pop(oldest)
            oldest.transport.abort()
            self.evicted += 1
        self._open[writer] = time.monotonic()
        clean = False
        try:
            await asyncio.wait_for(self._serve(reader, writer), self.limits.timeout_s)
            clean = True
        except asyncio.TimeoutError:
            self.timed_out += 1
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away, or was evicted
        except Exception:  # a bug in respond(): logged, this connection closed, the server goes on
            log.exception("metrics: request failed")
        finally:
            self._open.pop(writer, None)
            if not clean:
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n", "text/plain", head=False)
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, 400, b"bad request\n", "text/plain", head=False)
            return
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"only GET and HEAD\n", "text/plain", head=False)
            return
        status, body, content_type = self.respond(target.split("?", 1)[0])
        await self._send(writer, status, body, content_type, head=method == "HEAD")
        self.answered += 1

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, *, head: bool
    ) -> None:
        header = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        writer.write(header if head else header + body)
        await writer.drain()
        writer.close()  # after what is buffered is sent, within the connection's deadline
        await writer.wait_closed()
