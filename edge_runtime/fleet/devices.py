"""The fleet as the broker remembers it: retained ``status`` and ``health`` of every device."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.fleet.bus import Bus
from edge_runtime.fleet.common import FleetError, check_level, device_json, matches, short_sha, split_topic

log = logging.getLogger(__name__)


@dataclass
class Device:
    """One device: its last retained status and health payloads (None when never seen)."""

    name: str
    status: dict[str, Any] | None = None
    health: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        """``online``, ``stopping``, ``offline`` (from the status topic), or ``unknown``."""
        value = (self.status or {}).get("state")
        return value if isinstance(value, str) else "unknown"

    @property
    def online(self) -> bool:
        return self.state == "online"

    @property
    def version(self) -> str:
        for payload in (self.status, self.health):
            value = (payload or {}).get("version")
            if isinstance(value, str):
                return value
        return ""

    @property
    def health_state(self) -> str | None:
        value = (self.health or {}).get("state")
        return value if isinstance(value, str) else None

    def _health_pipelines(self) -> dict[str, dict[str, Any]]:
        pipelines = (self.health or {}).get("pipelines")
        if not isinstance(pipelines, dict):
            return {}
        return {k: v for k, v in pipelines.items() if isinstance(k, str) and isinstance(v, dict)}

    @property
    def pipelines(self) -> list[str]:
        """The pipelines the status names (the health's when the status has none)."""
        names = (self.status or {}).get("pipelines")
        if isinstance(names, list) and names:
            return [n for n in names if isinstance(n, str)]
        return sorted(self._health_pipelines())

    def runs(self, pipeline: str) -> bool:
        return pipeline in self.pipelines or pipeline in self._health_pipelines()

    def models(self, pipeline: str) -> list[dict[str, Any]]:
        """``[{"name", "sha256", "version", "delegate", ...}]`` of a pipeline, from the health."""
        models = self._health_pipelines().get(pipeline, {}).get("models")
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    def fps(self, pipeline: str) -> float | None:
        value = self._health_pipelines().get(pipeline, {}).get("fps_out")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def last_seen(self) -> float | None:
        """The newest ``ts`` (epoch seconds) of the health and status payloads."""
        stamps = [
            float(p["ts"])
            for p in (self.health, self.status)
            if p is not None and isinstance(p.get("ts"), int | float) and not isinstance(p.get("ts"), bool)
        ]
        return max(stamps) if stamps else None

    def row(self, now: float) -> dict[str, Any]:
        """The status-table row (JSON-ready)."""
        last = self.last_seen
        return {
            "device": self.name,
            "state": self.state,
            "health": self.health_state,
            "version": self.version,
            "pipelines": {
                name: {
                    "fps": self.fps(name),
                    "models": [
                        {
                            "name": m.get("name"),
                            "version": m.get("version"),
                            "sha256": m.get("sha256"),
                            "delegate": m.get("delegate"),
                        }
                        for m in self.models(name)
                    ],
                }
                for name in self.pipelines
            },
            "last_seen": last,
            "age_s": None if last is None else round(max(0.0, now - last), 1),
        }


def describe_models(device: Device, pipeline: str) -> str:
    """``digits_int8 v1 3f2a9c1d0b7e`` per model of a pipeline, joined by ``, ``."""
    parts = []
    for model in device.models(pipeline):
        version = model.get("version")
        parts.append(
            " ".join(
                p
                for p in (
                    str(model.get("name") or "?"),
                    f"v{version}" if version else "",
                    short_sha(model.get("sha256")),
                )
                if p
            )
        )
    return ", ".join(parts)


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


@dataclass
class _Collector:
    prefix: str
    devices: dict[str, Device] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    synced: threading.Event = field(default_factory=threading.Event)

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = split_topic(self.prefix, topic)
        if parts is None or len(parts[1]) != 1 or parts[1][0] not in ("status", "health"):
            return
        device, (kind,) = parts
        if not payload:
            return  # a cleared retained message
        body = device_json(topic, payload)
        if body is None:
            return
        with self.lock:
            entry = self.devices.setdefault(device, Device(device))
            if kind == "status":
                entry.status = body
            else:
                entry.health = body

    def on_sync(self, topic: str, payload: bytes) -> None:
        self.synced.set()


def collect_devices(
    bus: Bus,
    prefix: str,
    *,
    wait_s: float = 2.0,
    globs: Sequence[str] = (),
    sync_topic: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Device]:
    """Every device with a retained status or health under ``prefix`` that matches ``globs``.

    Waits at most ``wait_s``. With ``sync_topic`` (a topic this client may publish and subscribe
    to), it returns as soon as a message sent there after subscribing comes back: the broker
    delivers the retained messages of a subscription before anything published afterwards.
    """
    check_level(prefix, "prefix")
    collector = _Collector(prefix)
    if sync_topic is not None:
        bus.subscribe(sync_topic, collector.on_sync)
    bus.subscribe(f"{prefix}/+/status", collector.on_message)
    bus.subscribe(f"{prefix}/+/health", collector.on_message)
    if sync_topic is not None:
        try:
            bus.publish(sync_topic, b"sync")
        except FleetError as exc:
            log.debug("no sync message (%s); waiting %.1f s instead", exc, wait_s)
    if not collector.synced.wait(wait_s) and wait_s > 0:
        log.debug("waited %.1f s for retained messages", wait_s)
    elif collector.synced.is_set():
        sleep(0.05)  # a small grace period for a broker that interleaves queues
    bus.unsubscribe(f"{prefix}/+/status")
    bus.unsubscribe(f"{prefix}/+/health")
    if sync_topic is not None:
        bus.unsubscribe(sync_topic)
    with collector.lock:
        return {name: d for name, d in sorted(collector.devices.items()) if matches(name, globs)}


@dataclass(frozen=True)
class Targets:
    """The devices an update or rollback goes to, and the matching ones it leaves out, with why."""

    devices: list[str]
    skipped: dict[str, str]


def choose_targets(devices: dict[str, Device], pipeline: str | None, *, online_only: bool = True) -> Targets:
    """Online devices that run ``pipeline`` (any pipeline when None), sorted by name."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for name in sorted(devices):
        device = devices[name]
        if online_only and not device.online:
            skipped[name] = f"state {device.state}"
        elif pipeline is not None and not device.runs(pipeline):
            skipped[name] = f"does not run pipeline {pipeline!r}"
        else:
            chosen.append(name)
    return Targets(chosen, skipped)
