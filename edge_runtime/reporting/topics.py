"""Topic names and payload builders: the MQTT contract of DESIGN.md, in one place.

``{prefix}/{device}/status`` (retained), ``.../pipelines/{name}/results``, ``.../health``
(retained), ``.../events``, ``.../cmd/{command}`` (inbound) and ``.../reply/{id}``. Names are
checked so that nothing a user or a command sends can inject a wildcard or a level.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from edge_runtime.names import SAFE_LEVEL_RE

SAFE = SAFE_LEVEL_RE


def safe_level(value: str, what: str) -> str:
    """``value`` when it is usable as one topic level, else ValueError (no ``+``, ``#``, ``/``)."""
    if not isinstance(value, str) or not SAFE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a safe topic level (letters, digits, _ . : - only)")
    return value


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact JSON bytes (no NaN: JSON has none)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    def __post_init__(self) -> None:
        safe_level(self.prefix, "prefix")
        safe_level(self.device, "device")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def commands(self) -> str:
        """The filter the device subscribes to."""
        return f"{self.base}/cmd/+"

    def results(self, pipeline: str) -> str:
        return f"{self.base}/pipelines/{safe_level(pipeline, 'pipeline')}/results"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{safe_level(name, 'command')}"

    def reply(self, request_id: str) -> str:
        return f"{self.base}/reply/{safe_level(request_id, 'request id')}"

    def in_reply_tree(self, topic: str) -> bool:
        """Whether ``topic`` is ``{prefix}/{device}/reply/...`` with safe levels only (no wildcard,
        no empty level): the one place an MQTT 5 response topic may point to."""
        head = f"{self.base}/reply/"
        if not topic.startswith(head):
            return False
        levels = topic[len(head) :].split("/")
        return 0 < len(levels) <= 8 and all(SAFE.fullmatch(level) for level in levels)

    def command_name(self, topic: str) -> str | None:
        """The command of an inbound topic, or None when the topic is not one of ours."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if SAFE.fullmatch(name) else None


def status_payload(state: str, version: str, pipelines: list[str], reason: str | None = None) -> bytes:
    payload: dict[str, Any] = {
        "state": state,
        "ts": round(time.time(), 3),
        "version": version,
        "pipelines": pipelines,
    }
    if reason is not None:
        payload["reason"] = reason
    return dumps(payload)


def event_payload(device: str, kind: str, message: str, **fields: Any) -> dict[str, Any]:
    """An event: ``{"v": 1, "device", "ts", "kind", "message", ...}``; ``kind`` is dotted, such as
    ``source.down``, ``delegate.fallback``, ``command.error``, ``mqtt.error``."""
    return {"v": 1, "device": device, "ts": round(time.time(), 3), "kind": kind, "message": message, **fields}
