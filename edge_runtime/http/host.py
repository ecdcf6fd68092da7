"""What the HTTP server needs from the daemon: a small interface the daemon implements.

The server never imports the daemon; the daemon hands it an object with these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edge_runtime.pipeline import Pipeline
    from edge_runtime.sources.base import Source

Listener = Callable[[str, dict[str, Any]], None]
"""``listener(kind, message)``: ``kind`` is ``"result"`` or ``"event"``; called on the thread that
made the message, so it must return at once (the server only queues it)."""


class Host(Protocol):
    """The daemon, as the HTTP server sees it."""

    def http_status(self) -> dict[str, Any]:
        """``{"device", "state", "version", "uptime_s", "pipelines": [names], "health"}``; ``health``
        is the derived state of the last periodic report: ``{"state", "problems"}`` (state None
        before the first report)."""

    def http_health(self) -> dict[str, Any]:
        """The health document, the same as the MQTT health topic's (made now, not marking)."""

    def http_pipelines(self) -> Sequence[Pipeline]:
        """The running pipelines (a snapshot of the list: a reload replaces it)."""

    def http_sources(self) -> Mapping[str, Source]:
        """The running sources by name."""

    def http_model_versions(self, pipeline: str) -> list[dict[str, Any]]:
        """The versions the model store keeps for ``pipeline`` (newest first), or []."""

    def http_subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every result and event from now on; returns the unsubscribe."""
