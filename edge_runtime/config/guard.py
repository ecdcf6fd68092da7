"""What a remote ``config.update`` may change without an operator's signature.

:data:`POLICY` is the one list of decisions: each leaf of the schema (by the patterns of
:mod:`edge_runtime.config.fields`) is covered by exactly one most specific entry, a leaf pattern
or a whole table. ``tests/test_attacks_config.py`` fails when a field is added to the schema
without an entry here, and when an entry matches no field. Whole-table entries are only used for
tables that are guarded as a whole (``mqtt.tls``, ``metrics``, ``http``, ``monitor``,
``updates``), so a new field there is guarded until someone decides otherwise.

The rules:

- ``FREE``: may change.
- ``GUARDED``: may only take values the running config already has at that pattern (for a single
  field: may not change; for a field of a list or table item: also the field's default, so tables
  can be added, removed and reordered without inventing a new value).
- ``ENDPOINT``: ``GUARDED`` while the running config authenticates the broker or itself to it
  (TLS, a user name or a password file): the broker's address then protects a secret.
- ``FILE``: a path may only name a file (symlinks followed) that the running config already
  names in a ``FILE`` field, or a file shipped with the package: a sender cannot make the daemon
  read a file of its choice (a password file as a labels file would be published as labels).
- ``CAMERA_URI``: devices and stream URLs are ``FREE``, files are ``FILE``, GStreamer pipelines
  (which can read and write any file) are ``GUARDED``.

The top-level ``include`` list of the TOML text is ``GUARDED`` too (see :func:`check_includes`).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from edge_runtime.config.fields import config_leaves, schema_leaves
from edge_runtime.config.schema import BUNDLED_MODELS, Config


class Rule(enum.Enum):
    FREE = "free"
    GUARDED = "guarded"
    ENDPOINT = "endpoint"
    FILE = "file"
    CAMERA_URI = "camera-uri"


@dataclass(frozen=True)
class Decision:
    rule: Rule
    why: str


def _d(rule: Rule, why: str) -> Decision:
    return Decision(rule, why)


FREE, GUARDED, ENDPOINT, FILE = Rule.FREE, Rule.GUARDED, Rule.ENDPOINT, Rule.FILE

_LIBRARY = _d(GUARDED, "a shared library the daemon loads: whoever picks it runs code on the device")
_OPTIONS = _d(GUARDED, "options handed to a native delegate library")
_MODEL_FILE = _d(FILE, "a model file the daemon reads")
_LABELS = _d(FILE, "a labels file: its lines are published in results")
_TUNING = _d(FREE, "how a pipeline runs; bounded by the schema")
_PROVIDER = _d(FREE, "an ONNX Runtime execution provider built into the installed engine; no file or library")


_INPUT_TUNING = [
    "kind",
    "source",
    "input",
    "resize",
    "pad_value",
    "color",
    "mean",
    "std",
    "channels",
    "sample",
    "max_age_s",
    "stale",
    "window_s",
    "samples",
]
_HEAD_TUNING = [
    "type",
    "output",
    "outputs",
    "outputs.boxes",
    "outputs.classes",
    "outputs.scores",
    "outputs.count",
    "top_k",
    "min_score",
    "softmax",
    "format",
    "iou",
    "max_detections",
    "class_offset",
    "event.labels",
    "event.min_score",
]


def _model_entries(prefix: str) -> dict[str, Decision]:
    """The decisions for one model table (a pipeline's models, a cascade's classifier)."""
    entries = {
        f"{prefix}.path": _MODEL_FILE,
        f"{prefix}.name": _TUNING,
        f"{prefix}.version": _TUNING,
        f"{prefix}.threads": _TUNING,
        f"{prefix}.weight": _TUNING,
        f"{prefix}.delegates[].type": _d(FREE, "which built-in delegate; its library is guarded"),
        f"{prefix}.delegates[].device": _TUNING,
        f"{prefix}.delegates[].backends": _TUNING,
        f"{prefix}.delegates[].library": _LIBRARY,
        f"{prefix}.delegates[].options": _OPTIONS,
        f"{prefix}.delegates[].name": _PROVIDER,
    }
    for name in _INPUT_TUNING:
        entries[f"{prefix}.inputs[].{name}"] = _TUNING
    for head in (f"{prefix}.postprocess", f"{prefix}.postprocess.*"):
        entries[f"{head}.labels"] = _LABELS
        for name in _HEAD_TUNING:
            entries[f"{head}.{name}"] = _TUNING
    return entries


_SOURCE_TUNING = [
    "api",
    "fps",
    "width",
    "height",
    "realtime",
    "loop",
    "stall_timeout_s",
    "format",
    "time_field",
    "speed",
    "channels",
    "capacity",
    "max_channels",
    "baudrate",
    "bytesize",
    "parity",
    "stopbits",
    "rtscts",
    "xonxoff",
    "fields",
    "delimiter",
    "max_line_bytes",
    "encoding",
    "read_timeout_s",
    "reduced_decode",
]

POLICY: dict[str, Decision] = {
    "base_dir": _d(FREE, "set by the loader to the config file's folder, never read from the file"),
    "device.id": _d(FREE, "the device's topic name; the broker's ACL decides what it may use"),
    "device.state_dir": _d(
        GUARDED, "where the daemon writes files, keeps its models and its anti-rollback record"
    ),
    "device.log_level": _d(FREE, "log verbosity; secrets are never logged"),
    "device.stop_timeout_s": _d(FREE, "shutdown bound"),
    "runtime.backend": _d(FREE, "which installed inference runtime"),
    "runtime.share_models": _d(FREE, "one loaded model for pipelines that name the same one"),
    "runtime.malloc_arenas": _d(FREE, "an allocator setting, bounded by the schema"),
    "defaults.threads": _TUNING,
    "defaults.delegates[].type": _d(FREE, "which built-in delegate; its library is guarded"),
    "defaults.delegates[].device": _TUNING,
    "defaults.delegates[].backends": _TUNING,
    "defaults.delegates[].library": _LIBRARY,
    "defaults.delegates[].options": _OPTIONS,
    "defaults.delegates[].name": _PROVIDER,
    "mqtt.enabled": _d(GUARDED, "off cuts the device from its operators for good"),
    "mqtt.host": _d(ENDPOINT, "with TLS or credentials, the broker is who receives the password"),
    "mqtt.port": _d(ENDPOINT, "with TLS or credentials, the broker is who receives the password"),
    "mqtt.username": _d(GUARDED, "the identity the device authenticates as"),
    "mqtt.password_file": _d(GUARDED, "a file whose first line is sent to the broker"),
    "mqtt.tls": _d(GUARDED, "broker authentication and encryption (CA, client cert and key, checks)"),
    "mqtt.prefix": _d(FREE, "topic prefix; the broker's ACL decides what it may use"),
    "mqtt.qos": _d(FREE, "delivery guarantee"),
    "mqtt.client_id": _d(FREE, "session name on the broker"),
    "mqtt.protocol": _d(FREE, "MQTT version"),
    "mqtt.keepalive_s": _d(FREE, "bounded by the schema"),
    "mqtt.session_expiry_s": _d(FREE, "bounded by the schema"),
    "mqtt.reconnect.initial_s": _d(FREE, "bounded by the schema"),
    "mqtt.reconnect.max_s": _d(FREE, "bounded by the schema"),
    "mqtt.reconnect.factor": _d(FREE, "bounded by the schema"),
    "mqtt.reconnect.jitter": _d(FREE, "bounded by the schema"),
    "mqtt.results.qos": _d(FREE, "delivery guarantee"),
    "mqtt.results.retain": _d(FREE, "retain flag"),
    "mqtt.events.qos": _d(FREE, "delivery guarantee"),
    "mqtt.events.retain": _d(FREE, "retain flag"),
    "mqtt.health.qos": _d(FREE, "delivery guarantee"),
    "mqtt.health.retain": _d(FREE, "retain flag"),
    "mqtt.max_inflight": _d(FREE, "bounded by the schema"),
    "mqtt.max_command_bytes": _d(FREE, "bounded by the schema"),
    "outbox.max_bytes": _d(FREE, "bounded by the schema"),
    "outbox.max_count": _d(FREE, "bounded by the schema"),
    "outbox.reserve_bytes": _d(FREE, "free disk kept for the daemon's own state; bounded by the schema"),
    "health.interval_s": _d(FREE, "bounded by the schema"),
    **{
        f"health.{name}": _d(FREE, "a threshold of the derived health state; bounded by the schema")
        for name in ("max_bytes", "min_memory_available", "parse_error_share", "stale_s", "start_grace_s")
    },
    "metrics": _d(GUARDED, "a listening socket: what the device exposes on the network, and where"),
    "http": _d(GUARDED, "a listening socket with predict, camera views and its token and TLS files"),
    "monitor": _d(GUARDED, "tamper detection: a sender must not blind it before covering the camera"),
    "monitor.capture": _d(
        GUARDED, "data capture keeps camera frames on the device's disk: what is recorded, and how much"
    ),
    "updates": _d(GUARDED, "who may change the device's models, and how (keys, sources of downloads)"),
    "updates.max_bytes": _d(FREE, "bounded by the schema"),
    "updates.download_timeout_s": _d(FREE, "bounded by the schema"),
    "updates.keep": _d(FREE, "bounded by the schema"),
    "updates.probation_s": _d(FREE, "bounded by the schema"),
    "updates.probation_results": _d(FREE, "bounded by the schema"),
    "updates.max_latency_factor": _d(FREE, "bounded by the schema"),
    "updates.latency_floor_ms": _d(FREE, "bounded by the schema"),
    "updates.fail_on_constant": _d(FREE, "probation strictness"),
    "updates.allow_file_urls": _d(GUARDED, "file:// lets whoever sends model.update choose a local file"),
    "updates.redirect_hosts": _d(GUARDED, "where downloads may be redirected"),
    "updates.max_transfers": _d(FREE, "bounded by the schema"),
    "updates.transfer_quota_bytes": _d(FREE, "bounded by the schema"),
    "updates.transfer_expiry_s": _d(FREE, "bounded by the schema"),
    "sources.*.type": _TUNING,
    "sources.*.reconnect.initial_s": _TUNING,
    "sources.*.reconnect.max_s": _TUNING,
    "sources.*.reconnect.factor": _TUNING,
    "sources.*.reconnect.jitter": _TUNING,
    "sources.*.uri": _d(Rule.CAMERA_URI, "a device, a stream URL, a file, or a GStreamer pipeline"),
    "sources.*.path": _d(FILE, "a recording the daemon reads"),
    "sources.*.port": _d(GUARDED, "a device node or network address the daemon opens"),
    **{f"sources.*.{name}": _TUNING for name in _SOURCE_TUNING},
    "pipelines[].name": _TUNING,
    "pipelines[].trigger.source": _TUNING,
    "pipelines[].trigger.sources": _TUNING,
    "pipelines[].trigger.min_interval_s": _TUNING,
    "pipelines[].trigger.batch": _TUNING,
    "pipelines[].trigger.every_s": _TUNING,
    "pipelines[].ensemble.combine": _TUNING,
    "pipelines[].max_results": _TUNING,
    "pipelines[].cascade.padding": _TUNING,
    "pipelines[].cascade.max_crops": _TUNING,
    **_model_entries("pipelines[].models[]"),
    **_model_entries("pipelines[].cascade.classifier"),
}


def _covers(entry: str, pattern: str) -> bool:
    return pattern == entry or pattern.startswith(entry + ".") or pattern.startswith(entry + "[")


def decision(pattern: str) -> Decision | None:
    """The most specific entry of :data:`POLICY` that covers a leaf pattern."""
    best = max((e for e in POLICY if _covers(e, pattern)), key=len, default=None)
    return POLICY[best] if best is not None else None


def undecided(schema: type[BaseModel] = Config) -> list[str]:
    """Leaf patterns of the schema that no entry covers (must be empty)."""
    return sorted({leaf.pattern for leaf in schema_leaves(schema) if decision(leaf.pattern) is None})


def unused_entries(schema: type[BaseModel] = Config) -> list[str]:
    """Entries that cover no leaf of the schema (must be empty: the list stays true)."""
    patterns = {leaf.pattern for leaf in schema_leaves(schema)}
    return sorted(e for e in POLICY if not any(_covers(e, p) for p in patterns))


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _defaults(pattern: str) -> set[str]:
    found: set[str] = set()
    for leaf in schema_leaves(Config):
        if leaf.pattern == pattern and not leaf.info.is_required():
            found.add(_key(leaf.info.get_default(call_default_factory=True)))
    return found


def _real(config: Config, value: str) -> str:
    return os.path.realpath(config.resolve(value))


def _named_files(config: Config) -> set[str]:
    """Every file the running config names in a FILE field (real paths), for the FILE rule."""
    found: set[str] = set()
    for pattern, _, value in config_leaves(config):
        d = decision(pattern)
        if d is None or not isinstance(value, str) or not value:
            continue
        if d.rule is FILE or (d.rule is Rule.CAMERA_URI and _camera_kind(value) == "file"):
            found.add(_real(config, value))
    return found


def _camera_kind(uri: str | int) -> str:
    from edge_runtime.sources.camera import uri_kind

    return str(uri_kind(uri))


def _file_allowed(old: Config, new: Config, value: str, named: set[str]) -> bool:
    if value.startswith("bundled:"):
        return True
    real = _real(new, value)
    if real in named:
        return True
    roots = [os.path.realpath(BUNDLED_MODELS), os.path.realpath(old.device.state_dir / "demo")]
    return any(real.startswith(root + os.sep) for root in roots)


def protected_changes(old: Config, new: Config) -> list[str]:
    """Changes from ``old`` to ``new`` that need an operator's signature, as
    ``path: value: why`` lines (empty: the change is free)."""
    old_values: dict[str, set[str]] = {}
    for pattern, _, value in config_leaves(old):
        old_values.setdefault(pattern, set()).add(_key(value))
    authenticated = bool(old.mqtt.tls.ca or old.mqtt.username or old.mqtt.password_file)
    named = _named_files(old)
    problems: list[str] = []
    for pattern, where, value in config_leaves(new):
        d = decision(pattern)
        if d is None:  # a field without a decision is guarded (the tests keep this from happening)
            d = Decision(GUARDED, "no decision is recorded for this field")
        rule = d.rule
        if rule is Rule.CAMERA_URI:
            kind = _camera_kind(value)
            rule = FILE if kind == "file" else GUARDED if kind == "pipeline" else FREE
        if rule is ENDPOINT:
            rule = GUARDED if authenticated else FREE
        if rule is FREE:
            continue
        if rule is FILE:
            if not isinstance(value, str) or not value or _file_allowed(old, new, value, named):
                continue
            problems.append(f"{where}: {value!r}: names a file the running config does not ({d.why})")
            continue
        allowed = old_values.get(pattern, set())
        if "[]" in pattern or "*" in pattern:
            allowed = allowed | _defaults(pattern)
        if _key(value) not in allowed:
            shown = "***" if "password" in pattern or "key" in pattern.rsplit(".", 1)[-1] else repr(value)
            problems.append(f"{where}: {shown}: guarded ({d.why})")
    problems += _removed(old, new)
    return problems


def _removed(old: Config, new: Config) -> list[str]:
    """Guarded single fields that are absent from ``new`` (a table of them was dropped)."""
    present = {pattern for pattern, _, _ in config_leaves(new)}
    missing: list[str] = []
    for pattern, where, _ in config_leaves(old):
        d = decision(pattern)
        single = "[]" not in pattern and "*" not in pattern
        if d is not None and d.rule is GUARDED and single and pattern not in present:
            missing.append(f"{where}: (removed): guarded ({d.why})")
    return missing


def check_includes(old: Iterable[str], new: Iterable[str]) -> list[str]:
    """The ``include`` lists of the running and the new config file must be the same: an include
    reads another file, and can bring in any setting."""
    if list(old) == list(new):
        return []
    return [f"include: {list(new)!r}: guarded (reads other files into the config)"]


def includes_of(data: dict[str, Any]) -> list[str]:
    value = data.get("include", [])
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else [repr(value)]
