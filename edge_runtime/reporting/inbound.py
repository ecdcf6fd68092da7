"""Strict parsing of inbound JSON: every byte a broker user sends is parsed here, or refused.

:func:`parse_json_object` is the only way a command payload becomes Python data. It refuses, with
one :class:`InboundError` naming the cause, everything ``json`` would let through or raise on in a
way a caller does not expect: invalid UTF-8, lone surrogates (``"\\ud800"``), ``NaN`` and
``Infinity`` tokens, numbers that overflow to infinity (``1e999999``), integers of more than
:data:`MAX_INT_DIGITS` digits (``10**100000``: a ``ValueError`` from Python's digit limit, or
seconds of CPU on Pythons without it), duplicate keys, nesting deeper than ``max_depth``
(``[[[[...`` is a ``RecursionError`` inside ``json``), payloads over ``max_bytes`` and anything that
is not a JSON object. No other exception leaves it.

:func:`peek_request_id` reads the ``id`` of a payload that was refused, without parsing it, so
the refusal can still be answered on ``reply/{id}``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.names import SAFE_LEVEL_RE

MAX_DEPTH = 16
"""Deepest nesting of objects and arrays a command may have (the deepest real one has 3)."""

MAX_INT_DIGITS = 20
"""Longest integer literal (digits): more than any 64-bit value needs."""

MAX_FLOAT_CHARS = 40
"""Longest number literal with a fraction or an exponent."""

_ID_RE = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})"')


class InboundError(EdgeRuntimeError, ValueError):
    """An inbound payload that is refused; the message says why, in words a sender can act on."""


def _constant(token: str) -> Any:
    raise InboundError(f"{token} is not a JSON number")


def _float(text: str) -> float:
    if len(text) > MAX_FLOAT_CHARS:
        raise InboundError(f"a number of {len(text)} characters is too long (at most {MAX_FLOAT_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise InboundError(f"number {text[:20]!r} is out of range")
    return value


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise InboundError(f"an integer of {digits} digits is too long (at most {MAX_INT_DIGITS})")
    return int(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InboundError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _check_tree(value: Any, max_depth: int) -> None:
    """Depth and strings of a parsed value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise InboundError(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InboundError("a string holds a lone surrogate (\\ud800-\\udfff), which is not text") from None


def parse_json_object(payload: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """``payload`` as a JSON object, or :class:`InboundError` (and nothing else) with the cause."""
    if len(payload) > max_bytes:
        raise InboundError(f"payload of {len(payload)} bytes is over the limit of {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InboundError(f"payload is not JSON: not UTF-8 text at byte {exc.start}") from None
    try:
        body = json.loads(
            text,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
            object_pairs_hook=_pairs,
        )
    except InboundError:
        raise
    except RecursionError:
        raise InboundError(f"payload is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise InboundError(f"payload is not JSON: {exc}") from None
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise InboundError(f"payload is not usable JSON: {type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(body, dict):
        raise InboundError(f"payload must be a JSON object, not {type(body).__name__}")
    _check_tree(body, max_depth)
    return body


def peek_request_id(payload: bytes, max_bytes: int) -> str | None:
    """The first ``"id": "..."`` of a payload that could not be parsed, when it is a safe topic
    level; never raises (used to answer a refusal)."""
    if len(payload) > max_bytes:
        return None
    match = _ID_RE.search(payload)
    if match is None:
        return None
    request_id = match.group(1).decode("ascii")
    return request_id if SAFE_LEVEL_RE.fullmatch(request_id) else None
