"""Results and events fanned out to stream clients through bounded per-client queues.

The daemon calls :meth:`Hub.publish` on the thread that made the message (a pipeline's result
stage, a source's thread). It appends to each client's queue and wakes the client's coroutine on
the server's event loop; it never blocks, never encodes, never waits for a client. A client whose
queue holds ``limit`` messages is marked dropped: its stream ends and its memory is freed, and the
pipeline goes on at its own pace whatever the clients do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

RECENT_EVENTS = 50  # what the page shows on load


def _finite(value: Any) -> Any:
    """NaN and infinities (not JSON) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON that browsers parse: NaN and infinities become null."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        text = json.dumps(_finite(value), separators=(",", ":"), allow_nan=False, default=str)
    return text.encode()


class Message:
    """One result or event, shared by every client's queue; encoded for SSE once, on first use."""

    __slots__ = ("_sse", "data", "kind")

    def __init__(self, kind: str, data: dict[str, Any]) -> None:
        self.kind = kind
        self.data = data
        self._sse: bytes | None = None

    def sse(self) -> bytes:
        """``event: KIND`` and ``data: JSON`` lines (the event loop's thread only)."""
        if self._sse is None:
            self._sse = b"event: " + self.kind.encode() + b"\ndata: " + dumps(self.data) + b"\n\n"
        return self._sse


class StreamClient:
    """One stream client's bounded queue; filled from any thread, drained on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, kinds: frozenset[str]) -> None:
        self.loop = loop
        self.limit = limit
        self.kinds = kinds
        self.dropped = False
        self.sent = 0
        self._items: collections.deque[Message] = collections.deque()
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        self._wake_pending = False

    def offer(self, message: Message) -> None:
        """Queue ``message`` (any thread); a full queue drops the client instead."""
        if message.kind not in self.kinds:
            return
        with self._lock:
            if self.dropped:
                return
            if len(self._items) >= self.limit:
                self.dropped = True
                self._items.clear()
            else:
                self._items.append(message)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            self.loop.call_soon_threadsafe(self._event.set)

    async def next_batch(self, timeout: float) -> list[Message]:
        """What was queued since the last call, waiting up to ``timeout`` s for something."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        self._event.clear()
        with self._lock:
            batch = list(self._items)
            self._items.clear()
            self._wake_pending = False
        self.sent += len(batch)
        return batch


class Hub:
    """Stream clients, the latest result of each pipeline and the recent events."""

    def __init__(self, max_clients: int, queue_limit: int) -> None:
        self.max_clients = max_clients
        self.queue_limit = queue_limit
        self._clients: set[StreamClient] = set()
        self._lock = threading.Lock()
        self.latest: dict[str, dict[str, Any]] = {}
        self.latest_mono: dict[str, float] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self.dropped_clients = 0
        self.refused_clients = 0
        self.streams = 0  # SSE and MJPEG clients connected now (MJPEG ones do not queue messages)

    def publish(self, kind: str, message: dict[str, Any]) -> None:
        """A result or event from the daemon (any thread; returns at once)."""
        if kind == "result":
            name = str(message.get("pipeline", ""))
            self.latest[name] = message
            self.latest_mono[name] = time.monotonic()
        else:
            self.events.append(message)
        clients = tuple(self._clients)
        if clients:
            shared = Message(kind, message)
            for client in clients:
                client.offer(shared)

    def acquire_stream(self) -> bool:
        """Take one of the ``max_clients`` stream places (SSE or MJPEG); False when all are taken."""
        with self._lock:
            if self.streams >= self.max_clients:
                self.refused_clients += 1
                return False
            self.streams += 1
            return True

    def release_stream(self) -> None:
        with self._lock:
            self.streams = max(0, self.streams - 1)

    def subscribe(self, loop: asyncio.AbstractEventLoop, kinds: frozenset[str]) -> StreamClient:
        client = StreamClient(loop, self.queue_limit, kinds)
        with self._lock:
            self._clients.add(client)
        return client

    def unsubscribe(self, client: StreamClient) -> None:
        with self._lock:
            self._clients.discard(client)
            if client.dropped:
                self.dropped_clients += 1
                log.warning("http: a stream client fell %d messages behind and was dropped", client.limit)

    def stats(self) -> dict[str, Any]:
        return {
            "stream_clients": self.streams,
            "dropped_clients": self.dropped_clients,
            "refused_clients": self.refused_clients,
        }
