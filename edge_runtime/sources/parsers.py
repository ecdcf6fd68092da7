"""Pure line parsers for serial and replay sources: one text line in, named float values out.

Every parser takes one line (without its line ending) and returns ``{channel: value}`` with finite
floats only, or raises :class:`~edge_runtime.errors.ParseError` whose message is a short, stable
reason ("not a number", "bad checksum", ...). Sources count errors by that reason (with
:class:`ErrorTally`), so reasons never carry the offending text. No parser does I/O or keeps state.

Formats:

- ``csv``: ``0.1,0.2,0.98`` with the channel names given by ``fields`` in column order; a field
  named ``_`` is a column that is skipped (a timestamp or a status word, for instance).
- ``kv``: ``ax=0.1 ay=0.2`` or ``ax:0.1,ay:0.2`` (pairs separated by blanks, commas or semicolons;
  blanks around ``=``/``:`` are allowed).
- ``json``: one object per line. Numbers are kept, booleans become 1.0/0.0, nested objects are
  flattened with dots (``{"acc": {"x": 1}}`` gives ``acc.x``); strings, nulls and lists are ignored.
- ``nmea``: ``GGA`` and ``RMC`` sentences of any talker (``GP``, ``GN``, ``GL``, ...) with a
  mandatory, verified ``*hh`` checksum. GGA gives ``lat``, ``lon`` (signed decimal degrees),
  ``altitude`` (m), ``fix`` (the quality indicator) and ``satellites``; RMC gives ``lat``, ``lon``,
  ``speed`` (m/s), ``course`` (degrees) and ``fix`` (1 when the status is ``A``, else 0). Empty
  fields (no fix yet) are left out rather than reported as zero.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edge_runtime.errors import ParseError

Values = dict[str, float]
LineParser = Callable[[str], Values]

KNOT_M_S = 1852.0 / 3600.0
"""One knot in metres per second."""

SKIP_FIELD = "_"
"""A csv field with this name is a column that is not parsed."""

_KV_SPLIT = re.compile(r"[\s,;]+")
_KV_PAIR = re.compile(r"([^=:]+)[=:](.*)")
_KV_BLANKS = re.compile(r"[ \t]*([=:])[ \t]*")  # "ax = 0.1" is "ax=0.1"
_MAX_JSON_DEPTH = 32


def number(text: str) -> float:
    """One finite float from ``text`` (surrounding blanks allowed); ParseError otherwise."""
    text = text.strip()
    if not text:
        raise ParseError("empty value")
    if "_" in text:  # float() accepts "1_000"; a sensor never sends that
        raise ParseError("not a number")
    try:
        value = float(text)
    except ValueError:
        raise ParseError("not a number") from None
    if not math.isfinite(value):
        raise ParseError("not finite")
    return value


def parse_csv(line: str, fields: Sequence[str], delimiter: str = ",") -> Values:
    """Split on ``delimiter`` and name the columns after ``fields`` (``_`` columns are skipped)."""
    if not line.strip():
        raise ParseError("empty line")
    parts = line.split(delimiter)
    if len(parts) != len(fields):
        raise ParseError("field count")
    return {name: number(part) for name, part in zip(fields, parts, strict=True) if name != SKIP_FIELD}


def parse_kv(line: str) -> Values:
    """``key=value`` or ``key:value`` pairs separated by blanks, commas or semicolons."""
    tokens = [t for t in _KV_SPLIT.split(_KV_BLANKS.sub(r"\1", line.strip())) if t]
    if not tokens:
        raise ParseError("empty line")
    values: Values = {}
    for token in tokens:
        match = _KV_PAIR.fullmatch(token)
        if match is None:
            raise ParseError("bad pair")
        key = match.group(1)
        if key in values:
            raise ParseError("duplicate key")
        values[key] = number(match.group(2))
    return values


def _flatten(obj: Mapping[str, Any], prefix: str, out: Values, depth: int) -> None:
    if depth > _MAX_JSON_DEPTH:
        raise ParseError("json too deep")
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            try:
                number_ = float(value)
            except OverflowError:  # an integer too large for a float
                raise ParseError("not finite") from None
            if not math.isfinite(number_):
                raise ParseError("not finite")
            out[name] = number_
        elif isinstance(value, dict):
            _flatten(value, f"{name}.", out, depth + 1)
        # strings, null and lists carry no channel value: ignored


def parse_json(line: str) -> Values:
    """One JSON object; numbers and booleans kept, nested objects flattened with dots."""
    if not line.strip():
        raise ParseError("empty line")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, int digit limit, deep nesting
        raise ParseError("invalid json") from None
    if not isinstance(obj, dict):
        raise ParseError("not an object")
    values: Values = {}
    _flatten(obj, "", values, 0)
    if not values:
        raise ParseError("no numeric values")
    return values


# -- NMEA 0183 ------------------------------------------------------------------------------------


def nmea_checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    total = 0
    for char in body:
        total ^= ord(char)
    return total


def _coordinate(value: str, hemisphere: str, degree_digits: int, limit: float) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` plus N/S/E/W to signed decimal degrees (None when empty)."""
    if not value and not hemisphere:
        return None
    if hemisphere not in ("N", "S", "E", "W") or not re.fullmatch(r"\d{3,5}(\.\d+)?", value):
        raise ParseError("bad coordinate")
    dot = value.find(".")
    head = value if dot < 0 else value[:dot]
    if len(head) != degree_digits + 2:
        raise ParseError("bad coordinate")
    degrees = float(head[:degree_digits])
    minutes = float(value[degree_digits:])
    if minutes >= 60.0:
        raise ParseError("bad coordinate")
    result = degrees + minutes / 60.0
    if result > limit:
        raise ParseError("bad coordinate")
    return -result if hemisphere in ("S", "W") else result


def _optional(text: str) -> float | None:
    return None if not text.strip() else number(text)


def _position(out: Values, lat: str, ns: str, lon: str, ew: str) -> None:
    latitude = _coordinate(lat, ns, 2, 90.0)
    longitude = _coordinate(lon, ew, 3, 180.0)
    if (latitude is None) != (longitude is None):
        raise ParseError("bad coordinate")
    if latitude is not None and longitude is not None:
        out["lat"] = latitude
        out["lon"] = longitude


def _gga(fields: list[str]) -> Values:
    # GGA,time,lat,N,lon,E,quality,satellites,hdop,altitude,M,geoid,M,age,station
    if len(fields) < 10:
        raise ParseError("field count")
    out: Values = {}
    _position(out, fields[2], fields[3], fields[4], fields[5])
    quality = fields[6].strip()
    if not quality.isdigit():
        raise ParseError("bad fix quality")
    out["fix"] = float(int(quality))
    satellites = fields[7].strip()
    if satellites:
        if not satellites.isdigit():
            raise ParseError("bad satellite count")
        out["satellites"] = float(int(satellites))
    altitude = _optional(fields[9])
    if altitude is not None:
        out["altitude"] = altitude
    return out


def _rmc(fields: list[str]) -> Values:
    # RMC,time,status,lat,N,lon,E,speed(knots),course,date,magvar,E/W[,mode[,navstatus]]
    if len(fields) < 10:
        raise ParseError("field count")
    status = fields[2]
    if status not in ("A", "V"):
        raise ParseError("bad status")
    out: Values = {"fix": 1.0 if status == "A" else 0.0}
    _position(out, fields[3], fields[4], fields[5], fields[6])
    knots = _optional(fields[7])
    if knots is not None:
        out["speed"] = knots * KNOT_M_S
    course = _optional(fields[8])
    if course is not None:
        out["course"] = course
    return out


_NMEA_SENTENCES: dict[str, Callable[[list[str]], Values]] = {"GGA": _gga, "RMC": _rmc}


def parse_nmea(line: str) -> Values:
    """A GGA or RMC sentence of any talker, checksum verified."""
    line = line.strip()
    if not line.startswith("$"):
        raise ParseError("not nmea")
    star = line.rfind("*")
    if star < 0 or len(line) - star != 3:
        raise ParseError("missing checksum")
    body, given = line[1:star], line[star + 1 :]
    if not body.isascii() or not re.fullmatch(r"[0-9A-Fa-f]{2}", given):
        raise ParseError("bad checksum")
    if nmea_checksum(body) != int(given, 16):
        raise ParseError("bad checksum")
    fields = body.split(",")
    address = fields[0]
    if len(address) != 5 or not address.isalpha() or address.startswith("P"):
        raise ParseError("unsupported sentence")
    handler = _NMEA_SENTENCES.get(address[2:])
    if handler is None:
        raise ParseError("unsupported sentence")
    return handler(fields)


MAX_REASONS = 32
"""Distinct parse-error reasons kept by an :class:`ErrorTally`; later new ones count as ``other``."""


class ErrorTally:
    """Thread-safe counts of rejected lines by reason (the ParseError message), at most
    :data:`MAX_REASONS` reasons (the rest are counted under ``other``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.total = 0

    def add(self, reason: str) -> None:
        with self._lock:
            if reason not in self._counts and len(self._counts) >= MAX_REASONS - 1:
                reason = "other"
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self.total += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class CountsParseErrors:
    """For a line source that tallies its rejected lines in ``_errors``."""

    _errors: ErrorTally

    @property
    def parse_errors(self) -> dict[str, int]:
        """Rejected lines by reason (a copy)."""
        return self._errors.snapshot()

    @property
    def parse_errors_total(self) -> int:
        return self._errors.total


# -- registry --------------------------------------------------------------------------------------

PARSERS: dict[str, Callable[..., Values]] = {
    "csv": parse_csv,
    "kv": parse_kv,
    "json": parse_json,
    "nmea": parse_nmea,
}
"""Line formats by config key; ``csv`` also needs ``fields`` (and optionally ``delimiter``)."""


def make_parser(fmt: str, fields: Sequence[str] = (), delimiter: str = ",") -> LineParser:
    """A one-argument parser for ``fmt`` with its options bound."""
    if fmt not in PARSERS:
        raise ValueError(f"unknown line format {fmt!r}; expected one of {sorted(PARSERS)}")
    if fmt == "csv":
        if not fields:
            raise ValueError("the csv format needs 'fields' (one channel name per column)")
        names = tuple(fields)

        def csv_parser(line: str) -> Values:
            return parse_csv(line, names, delimiter)

        return csv_parser
    parser: LineParser = PARSERS[fmt]
    return parser
