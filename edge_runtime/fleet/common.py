"""What every part of the fleet tool shares: the error type, topic names, device globs, ids."""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import logging
import secrets
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from edge_runtime.names import NAME_RE, SAFE_LEVEL_RE
from edge_runtime.reporting.inbound import InboundError, parse_json_object
from edge_runtime.terminal import clean_text, clean_tree
from edge_runtime.updates.protocol import STEPS

log = logging.getLogger(__name__)

__all__ = ["NAME_RE", "SAFE_LEVEL", "STEPS", "FleetError"]

SAFE_LEVEL = SAFE_LEVEL_RE


class FleetError(Exception):
    """A failure the operator must act on; the CLI prints its one-line message and exits 1."""


def check_level(value: str, what: str) -> str:
    """``value`` when it is usable as one topic level (no wildcard, no ``/``), else FleetError."""
    if not SAFE_LEVEL.match(value):
        raise FleetError(f"{what} {value!r} is not a valid topic level (letters, digits, _ . : - only)")
    return value


def check_pipeline(name: str) -> str:
    if not NAME_RE.match(name):
        raise FleetError(f"pipeline {name!r} is not a valid pipeline name")
    return name


def device_topic(prefix: str, device: str, *rest: str) -> str:
    """``{prefix}/{device}/...``."""
    return "/".join((prefix, device, *rest))


def split_topic(prefix: str, topic: str) -> tuple[str, list[str]] | None:
    """``(device, remaining levels)`` of a topic under ``prefix``, or None for another topic."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) < 2 or not SAFE_LEVEL.match(levels[0]):
        return None
    return levels[0], levels[1:]


MAX_DEVICE_PAYLOAD = 4 * 1024 * 1024
"""Largest status, health or reply payload the tool reads from a device."""


def device_json(topic: str, payload: bytes) -> dict[str, Any] | None:
    """A device's JSON object, with every string made safe to print (no escape sequences, control
    or bidi characters: :func:`edge_runtime.terminal.clean_text`); None, with a warning, for what
    is not a JSON object (deep nesting, huge numbers, invalid text included). Everything the tool
    reads from a device passes here, so nothing a device sends reaches the terminal uncleaned."""
    try:
        body = parse_json_object(payload, max_bytes=MAX_DEVICE_PAYLOAD)
    except InboundError as exc:
        log.warning("%s: ignored: %s", clean_text(topic, 200), exc)
        return None
    cleaned: dict[str, Any] = clean_tree(body)
    return cleaned


def parse_globs(text: str | None) -> list[str]:
    """``--devices``: comma-separated shell patterns (``cam-*,dock-0[1-3]``); empty means all."""
    if not text:
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def matches(device: str, globs: Sequence[str]) -> bool:
    """Whether ``device`` matches any pattern (case-sensitive); every device when there is none."""
    return not globs or any(fnmatch.fnmatchcase(device, pattern) for pattern in globs)


def select(devices: Iterable[str], globs: Sequence[str]) -> list[str]:
    """The matching devices, sorted."""
    return sorted(d for d in devices if matches(d, globs))


class RequestIds:
    """Unique command ids: ``fl{random}-{n}`` (usable as a topic level)."""

    def __init__(self, prefix: str = "fl") -> None:
        self.base = f"{prefix}{secrets.token_hex(5)}"
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return f"{self.base}-{next(self._counter)}"


def short_sha(sha256: str | None, length: int = 12) -> str:
    return (sha256 or "")[:length]


def canary_arg(text: str) -> str:
    """``--canary`` as an argparse type: ``text`` when :func:`parse_canary` takes it."""
    import argparse

    try:
        parse_canary(text)
    except FleetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_canary(spec: str) -> tuple[int, bool]:
    """``--canary``: ``N`` devices or ``N%`` of them; returns (N, is_percent)."""
    text = spec.strip()
    percent = text.endswith("%")
    number = text[:-1].strip() if percent else text
    if not number.isdigit():
        raise FleetError(f"--canary {spec!r}: expected a count (2) or a percentage (10%)")
    value = int(number)
    if percent and value > 100:
        raise FleetError(f"--canary {spec!r}: a percentage must be 0..100")
    return value, percent


def canary_count(spec: str, devices: int) -> int:
    """How many of ``devices`` are canaries: ``N`` (at most all of them) or ``N%`` rounded up."""
    value, percent = parse_canary(spec)
    if percent:
        value = -(-value * devices // 100)  # ceiling without floats
    return min(value, devices)


# -- argparse types ---------------------------------------------------------------------------


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(text)
