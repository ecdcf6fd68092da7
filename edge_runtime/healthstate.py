"""The health state, derived from what happens: ``ok``, ``degraded`` or ``failing``, with reasons.

Pure functions over the statistics the health document already holds (no I/O, no clock): the
caller passes the current document, the counters of the previous periodic report (the window) and
the limits. Each component (pipeline, source, outbox, mqtt, model store, reload, system) gets a
state and the reasons for it; the device takes the worst of them and lists every reason.

``failing`` means results are being lost or cannot be made: results or events not stored (store
errors), a pipeline that is triggered but produces nothing, free disk below the outbox reserve.
``degraded`` means the device works with a problem a person should look at: a source down or
silent, most lines unparsable, a bound refusing input, MQTT disconnected, pipeline errors,
outbox drops, a broken model store, the last reload failed, little disk or memory left, or a
pipeline that gave no result within the start grace. See ``docs/health.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEGRADED",
    "FAILING",
    "MAX_HEALTH_BYTES",
    "OK",
    "Component",
    "DeviceHealth",
    "HealthConfig",
    "HealthLimits",
    "assess",
    "bound_document",
    "counters",
    "worst",
]

State = Literal["ok", "degraded", "failing"]
OK: State = "ok"
DEGRADED: State = "degraded"
FAILING: State = "failing"
_RANK: dict[str, int] = {OK: 0, DEGRADED: 1, FAILING: 2}


class HealthConfig(BaseModel):
    """``[health]``: the report interval and the thresholds of the derived state."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(30.0, ge=0.1, le=86400, description="Seconds between health reports.")
    start_grace_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="READY=1 waits until every pipeline gave a result or this long; a pipeline "
        "with no result by then makes the health degraded.",
    )
    stale_s: float = Field(
        10.0, gt=0, le=3600, description="A source silent, or a triggered pipeline without result, this long."
    )
    parse_error_share: float = Field(
        0.5, gt=0, le=1, description="A line source with a larger share of unparsable lines is degraded."
    )
    min_memory_available: float = Field(
        0.05, ge=0, le=1, description="Less available memory than this share of the total is degraded."
    )
    max_bytes: int = Field(
        65536, ge=4096, le=16 * 1024 * 1024, description="Bound of one health document; longer lists are cut."
    )


@dataclass(frozen=True)
class HealthLimits:
    """Thresholds of the derivation (from ``[health]`` in the config)."""

    start_grace_s: float = 30.0
    """A pipeline or source that has produced nothing this long after start is degraded."""
    stale_s: float = 10.0
    """A source silent this long, or a triggered pipeline with no result this long, is reported."""
    parse_error_share: float = 0.5
    """A serial/replay source with more than this share of its lines unparsable is degraded."""
    min_parse_errors: int = 5
    """...counting only windows with at least this many parse errors."""
    disk_reserve_bytes: int = 1 << 20
    """Free disk below this on the state directory's file system: failing (the outbox refuses)."""
    min_memory_available: float = 0.05
    """Available memory below this share of the total: degraded."""


@dataclass(frozen=True)
class Component:
    """One part of the device and its derived state."""

    kind: str  # "pipeline" | "source" | "outbox" | "mqtt" | "models" | "reload" | "system"
    name: str
    state: State
    reasons: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}" if self.name else self.kind


@dataclass(frozen=True)
class DeviceHealth:
    """The device's state (the worst component's), every reason, and the components."""

    state: State
    reasons: tuple[str, ...]
    components: tuple[Component, ...] = field(default=())

    def component(self, kind: str, name: str = "") -> Component | None:
        return next((c for c in self.components if c.kind == kind and c.name == name), None)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{"pipeline/digits": {"state": ..., "reasons": [...]}, ...}`` for the health document."""
        return {c.key: {"state": c.state, "reasons": list(c.reasons)} for c in self.components}


def worst(states: list[State] | tuple[State, ...]) -> State:
    best: State = OK
    for s in states:
        if _RANK[s] > _RANK[best]:
            best = s
    return best


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def counters(doc: Mapping[str, Any]) -> dict[str, int]:
    """The counters whose growth between two reports the derivation looks at."""
    out: dict[str, int] = {}
    for name, p in (doc.get("pipelines") or {}).items():
        out[f"pipeline/{name}/errors"] = _int(p.get("errors"))
    for name, s in (doc.get("sources") or {}).items():
        out[f"source/{name}/parse_errors"] = _int(s.get("parse_errors_total"))
        out[f"source/{name}/lines"] = _int(s.get("lines", s.get("rows")))
        out[f"source/{name}/channels_refused"] = _int(s.get("channels_refused"))
    outbox = doc.get("outbox")
    if outbox is not None:
        out["outbox/dropped"] = _int(outbox.get("dropped"))
        out["outbox/store_errors"] = _int(outbox.get("store_errors"))
    return out


def _delta(now: Mapping[str, int], before: Mapping[str, int], key: str) -> int:
    """Growth of a counter; one that went backwards (restarted, reloaded) counts from zero."""
    n, b = now.get(key, 0), before.get(key, 0)
    return n - b if n >= b else n


def _pipeline(
    name: str, p: Mapping[str, Any], uptime: float, d: Mapping[str, int], lim: HealthLimits
) -> Component:
    failing: list[str] = []
    degraded: list[str] = []
    if p.get("paused") or p.get("finished"):
        return Component("pipeline", name, OK)
    results, triggers = _int(p.get("results")), _int(p.get("triggers"))
    result_age = _float(p.get("last_result_age_s"))
    trigger_age = _float(p.get("last_trigger_age_s"))
    if results == 0 and uptime >= lim.start_grace_s:
        if triggers:
            failing.append(f"pipeline {name}: {_count(triggers, 'trigger')} but no result since start")
        else:
            degraded.append(f"pipeline {name}: no result in the {lim.start_grace_s:g} s start grace")
    elif results and result_age is not None and result_age > lim.stale_s:
        if trigger_age is not None and trigger_age <= lim.stale_s:
            failing.append(f"pipeline {name}: triggered but no result for {result_age:.0f} s")
        else:
            degraded.append(f"pipeline {name}: no trigger and no result for {result_age:.0f} s")
    errors = d.get("errors", 0)
    if errors > 0:
        last = p.get("last_error") or "unknown error"
        degraded.append(f"pipeline {name}: {_count(errors, 'error')} since the last report (last: {last})")
    state = FAILING if failing else DEGRADED if degraded else OK
    return Component("pipeline", name, state, tuple(failing + degraded))


def _source(
    name: str, s: Mapping[str, Any], uptime: float, d: Mapping[str, int], lim: HealthLimits
) -> Component:
    reasons: list[str] = []
    state = str(s.get("state", "unknown"))
    age = _float(s.get("last_sample_age_s"))
    if state == "down":
        first, latest = s.get("down_cause") or "", s.get("last_error") or ""
        if first and latest and latest != first:
            reasons.append(f"source {name} is down: {first} (now: {latest})")
        else:
            reasons.append(f"source {name} is down: {first or latest or 'no data'}")
    elif state in ("finished", "stopped"):
        pass
    elif age is None:
        if uptime >= lim.start_grace_s:
            why = f" ({s['last_error']})" if s.get("last_error") else ""
            reasons.append(f"source {name}: no data in the {lim.start_grace_s:g} s since start{why}")
    elif age > lim.stale_s:
        reasons.append(f"source {name}: no data for {age:.0f} s")
    errors, lines = d.get("parse_errors", 0), d.get("lines", 0)
    if errors >= lim.min_parse_errors and errors > lim.parse_error_share * (errors + lines):
        share = 100.0 * errors / (errors + lines)
        reasons.append(
            f"source {name}: {errors} of {errors + lines} lines unparsable ({share:.0f}%)"
            " since the last report"
        )
    refused = d.get("channels_refused", 0)
    if refused > 0:
        cap = s.get("max_channels")
        reasons.append(
            f"source {name}: {_count(refused, 'new channel')} refused since the last report "
            f"(cap of {cap} channels reached)"
        )
    return Component("source", name, DEGRADED if reasons else OK, tuple(reasons))


def _outbox(
    outbox: Mapping[str, Any], free: int | None, d: Mapping[str, int], lim: HealthLimits
) -> Component:
    failing: list[str] = []
    degraded: list[str] = []
    store_errors = d.get("store_errors", 0)
    if store_errors > 0:
        last = outbox.get("last_store_error") or "store failed"
        failing.append(f"outbox: {_count(store_errors, 'message')} not stored since the last report ({last})")
    if free is not None:  # pages the outbox frees inside its file are room for it too
        free += _int(outbox.get("reusable_bytes"))
    if free is not None and free < lim.disk_reserve_bytes:
        failing.append(f"disk: {free} bytes free, below the reserve of {lim.disk_reserve_bytes}")
    elif free is not None and free < 2 * lim.disk_reserve_bytes:
        degraded.append(f"disk: {free} bytes free, near the reserve of {lim.disk_reserve_bytes}")
    dropped = d.get("dropped", 0)
    if dropped > 0:
        degraded.append(f"outbox dropped {_count(dropped, 'message')} since the last report")
    state = FAILING if failing else DEGRADED if degraded else OK
    return Component("outbox", "", state, tuple(failing + degraded))


def _system(system: Mapping[str, Any], lim: HealthLimits) -> Component:
    reasons: list[str] = []
    available, total = _float(system.get("mem_available_bytes")), _float(system.get("mem_total_bytes"))
    if available is not None and total and available < lim.min_memory_available * total:
        reasons.append(
            f"memory: {available / 2**20:.0f} MiB available of {total / 2**20:.0f} MiB "
            f"(below {lim.min_memory_available:.0%})"
        )
    return Component("system", "", DEGRADED if reasons else OK, tuple(reasons))


def assess(
    doc: Mapping[str, Any], before: Mapping[str, int] | None, limits: HealthLimits = HealthLimits()
) -> DeviceHealth:
    """The device health of one health document.

    ``before`` holds :func:`counters` of the previous periodic report (None: the first report,
    every counter counts from zero). Besides the standard sections, ``doc`` may carry
    ``model_store`` (``{"problems": {pipeline: text}}``) and ``reload``
    (``{"ok": bool, "error": text}``).
    """
    now = counters(doc)
    prior = before or {}
    uptime = _float(doc.get("uptime_s")) or 0.0

    def window(prefix: str) -> dict[str, int]:
        return {key.removeprefix(prefix): _delta(now, prior, key) for key in now if key.startswith(prefix)}

    components: list[Component] = []
    for name, s in (doc.get("sources") or {}).items():
        components.append(_source(name, s, uptime, window(f"source/{name}/"), limits))
    for name, p in (doc.get("pipelines") or {}).items():
        components.append(_pipeline(name, p, uptime, window(f"pipeline/{name}/"), limits))
    system = doc.get("system") or {}
    outbox = doc.get("outbox")
    if outbox is not None:
        components.append(_outbox(outbox, system.get("disk_free_bytes"), window("outbox/"), limits))
    mqtt = doc.get("mqtt")
    reasons: tuple[str, ...]
    if mqtt is not None:
        reasons = (
            ()
            if mqtt.get("connected")
            else (f"mqtt disconnected: {mqtt.get('last_error') or 'not connected'}",)
        )
        components.append(Component("mqtt", "", DEGRADED if reasons else OK, reasons))
    store = doc.get("model_store")
    if isinstance(store, Mapping):
        problems = store.get("problems") or {}
        reasons = tuple(f"model store {name}: {text}" for name, text in sorted(problems.items()))
        components.append(Component("models", "", DEGRADED if reasons else OK, reasons))
    reload = doc.get("reload")
    if isinstance(reload, Mapping) and reload.get("ok") is False:
        components.append(
            Component("reload", "", DEGRADED, (f"last reload failed: {reload.get('error') or 'unknown'}",))
        )
    components.append(_system(system, limits))
    state = worst([c.state for c in components])
    ranked = sorted(components, key=lambda c: -_RANK[c.state])  # failing reasons first
    listed = tuple(r for c in ranked for r in c.reasons)
    return DeviceHealth(state, listed, tuple(components))


MAX_HEALTH_BYTES = 64 * 1024
"""Default bound of one serialised health document."""
_KEEP_ITEMS = 16


def bound_document(doc: dict[str, Any], max_bytes: int) -> bool:
    """Cut the per-source lists and tallies (channel names, parse-error reasons) of a document
    over ``max_bytes``; returns whether anything was cut."""
    if len(json.dumps(doc, default=str)) <= max_bytes:
        return False
    for s in (doc.get("sources") or {}).values():
        channels = s.get("channels")
        if isinstance(channels, list) and len(channels) > _KEEP_ITEMS:
            s["channels"] = channels[:_KEEP_ITEMS]
            s["channels_count"] = len(channels)
        errors = s.get("parse_errors")
        if isinstance(errors, dict) and len(errors) > _KEEP_ITEMS:
            top = sorted(errors.items(), key=lambda kv: -int(kv[1]))[:_KEEP_ITEMS]
            s["parse_errors"] = dict(top)
    doc["truncated"] = True
    return True
