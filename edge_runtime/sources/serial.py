"""Serial sensor source: lines from a serial port (or a pyserial URL) parsed into ring buffers.

One reader thread reads bytes with a short timeout, splits them into lines on ``\\n`` (a trailing
``\\r`` is dropped), parses each line with the configured format (:mod:`.parsers`) and appends its
values to :attr:`SerialSource.buffers` at the monotonic time the line was complete. Bad lines
(undecodable, unparsable, too long) are counted by reason and skipped; they never stop the source.
A port that disappears (USB unplugged, pty closed) makes the source ``down``; it reopens the port
with backoff until it is back. pyserial is imported only when a port is opened.
"""

from __future__ import annotations

import codecs
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edge_runtime.errors import ParseError, SourceError
from edge_runtime.sources.base import Source, SourceConfigBase
from edge_runtime.sources.buffer import SensorBuffers
from edge_runtime.sources.parsers import SKIP_FIELD, CountsParseErrors, ErrorTally, make_parser

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0
"""Lines per second are measured over this many recent seconds."""

TOO_LONG = "line too long"
"""Parse-error reason of a line longer than ``max_line_bytes``."""


class SerialConfig(SourceConfigBase):
    """A serial sensor that sends one reading per line."""

    type: Literal["serial"] = Field(default="serial", description="Source type: a serial-port sensor.")
    port: str = Field(
        min_length=1,
        description="Device path (/dev/ttyUSB0, /dev/serial/by-id/...) or a pyserial URL "
        "(loop://, socket://host:port, rfc2217://host:port).",
    )
    baudrate: int = Field(default=115200, gt=0, le=10_000_000, description="Line speed in bits per second.")
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="Data bits per character.")
    parity: Literal["N", "E", "O", "M", "S"] = Field(
        default="N", description="Parity: N(one), E(ven), O(dd), M(ark), S(pace)."
    )
    stopbits: float = Field(default=1, ge=1, le=2, description="Stop bits: 1, 1.5 or 2.")
    rtscts: bool = Field(default=False, description="Hardware (RTS/CTS) flow control.")
    xonxoff: bool = Field(default=False, description="Software (XON/XOFF) flow control.")
    format: Literal["csv", "kv", "json", "nmea"] = Field(
        description="Line format: csv (columns named by 'fields'), kv (ax=0.1 ay=0.2), "
        "json (one object per line) or nmea (GGA/RMC sentences)."
    )
    fields: list[str] = Field(
        default_factory=list,
        description="csv only: one channel name per column, in order; '_' skips a column.",
    )
    delimiter: str = Field(default=",", min_length=1, description="csv only: the column separator.")
    channels: list[str] | None = Field(
        default=None, description="Parsed values to keep, by channel name; default: all of them."
    )
    max_channels: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Without 'channels': at most this many channels are discovered; values of "
        "further keys are refused, counted (channels_refused) and logged once.",
    )
    capacity: int = Field(
        default=4096, ge=2, le=10_000_000, description="Values kept per channel (ring buffer size)."
    )
    max_line_bytes: int = Field(
        default=1024,
        ge=8,
        le=1 << 20,
        description="Longer lines are discarded (up to the next newline) and counted.",
    )
    encoding: str = Field(default="utf-8", description="Text encoding of the lines (a Python codec name).")
    read_timeout_s: float = Field(
        default=0.1, gt=0, le=5, description="How long one read waits for bytes; bounds the stop latency."
    )

    @field_validator("stopbits", mode="before")
    @classmethod
    def _valid_stopbits(cls, value: object) -> object:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (1, 1.5, 2):
            raise ValueError(f"stopbits must be 1, 1.5 or 2, not {value:g}")
        return value  # before the bounds, so that 3 gets this message

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _csv_needs_fields(self) -> SerialConfig:
        if self.format == "csv" and not self.fields:
            raise ValueError("format 'csv' needs 'fields': one channel name per column")
        if self.format != "csv" and self.fields:
            raise ValueError(f"'fields' is only used by the csv format, not {self.format!r}")
        named = [f for f in self.fields if f != SKIP_FIELD]
        if len(set(named)) != len(named):
            raise ValueError("'fields' has duplicate names")
        return self


class LineSplitter:
    """Bytes in, complete lines out; over-long lines are dropped up to their next newline."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Complete lines (without ``\\n``/``\\r``) and how many over-long lines were dropped."""
        lines: list[bytes] = []
        too_long = 0
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._discarding:  # the tail of a line already counted as too long
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                too_long += 1
            else:
                lines.append(line)
        if len(self._buf) > self.max_line_bytes:
            if not self._discarding:
                too_long += 1
            self._discarding = True
            self._buf.clear()
        return lines, too_long


class SerialSource(CountsParseErrors, Source):
    """Reads and parses sensor lines; values land in :attr:`buffers` (a SensorBuffers)."""

    kind = "serial"

    def __init__(self, name: str, config: SerialConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, clock)
        self.cfg = config
        self.buffers = SensorBuffers(
            config.capacity, config.channels or (), None if config.channels else config.max_channels
        )
        self.lines = 0
        """Good lines stored."""
        self.ignored = 0
        """Lines parsed fine but holding none of the wanted channels."""
        self._errors = ErrorTally()
        self._parse = make_parser(config.format, config.fields, config.delimiter)
        self._wanted = frozenset(config.channels) if config.channels is not None else None
        self._splitter = LineSplitter(config.max_line_bytes)
        self._recent: collections.deque[float] = collections.deque()
        self._rate_since = 0.0
        self._port: Any = None
        self._refusal_logged = False

    # -- Source hooks ---------------------------------------------------------------------------

    def _open(self) -> None:
        import serial  # pyserial: imported here so configs load without it

        c = self.cfg
        try:
            self._port = serial.serial_for_url(
                c.port,
                baudrate=c.baudrate,
                bytesize=c.bytesize,
                parity=c.parity,
                stopbits=c.stopbits,
                rtscts=c.rtscts,
                xonxoff=c.xonxoff,
                timeout=c.read_timeout_s,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SourceError(f"cannot open serial port {c.port}: {exc}") from exc
        self._splitter.reset()
        self._rate_since = self.clock()
        log.info("serial source %s: opened %s at %d baud", self.name, c.port, c.baudrate)

    def _read_once(self) -> bool:
        import serial

        try:
            waiting = self._port.in_waiting
            data: bytes = self._port.read(max(1, min(waiting, 65536)))
        except (serial.SerialException, OSError) as exc:
            raise SourceError(f"serial port {self.cfg.port} failed: {exc}") from exc
        if data:
            self.feed(data, self.clock())
        return True

    def _peer_probe(self) -> Callable[[], bool] | None:
        from edge_runtime.recovery import path_probe

        return path_probe(self.cfg.port) if self.cfg.port.startswith("/") else None

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except OSError as exc:  # the device is already gone; nothing left to release
                log.debug("serial source %s: closing %s: %s", self.name, self.cfg.port, exc)

    # -- line handling ----------------------------------------------------------------------------

    def feed(self, data: bytes, t_mono: float) -> None:
        """Handle received bytes; complete lines are stamped ``t_mono``. Called by the reader thread."""
        lines, too_long = self._splitter.feed(data)
        for _ in range(too_long):
            self._errors.add(TOO_LONG)
        for raw in lines:
            if raw.strip():
                self._line(raw, t_mono)

    def _line(self, raw: bytes, t_mono: float) -> None:
        try:
            text = raw.decode(self.cfg.encoding)
            values = self._parse(text)
        except UnicodeDecodeError:
            self._errors.add("undecodable")
            return
        except ParseError as exc:
            self._errors.add(str(exc))
            return
        if self._wanted is not None:
            values = {k: v for k, v in values.items() if k in self._wanted}
            if not values:
                self.ignored += 1
                return
        if self.buffers.append(t_mono, values) and not self._refusal_logged:
            self._refusal_logged = True  # once: the count is in the stats and the health state
            log.warning(
                "serial source %s: more than %d channels; values of new keys are refused and counted "
                "(set 'channels' to choose, or raise 'max_channels')",
                self.name, self.cfg.max_channels,
            )  # fmt: skip
        self.lines += 1
        self._recent.append(t_mono)
        while self._recent[0] < t_mono - RATE_WINDOW_S:
            self._recent.popleft()
        self._publish(t_mono)

    # -- reporting ------------------------------------------------------------------------------------

    def rate(self) -> float:
        """Good lines per second over the last few seconds."""
        now = self.clock()
        count = sum(1 for t in list(self._recent) if t >= now - RATE_WINDOW_S)
        span = min(RATE_WINDOW_S, max(now - self._rate_since, 1e-3))
        return count / span

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(
            port=self.cfg.port,
            lines=self.lines,
            ignored=self.ignored,
            parse_errors=self.parse_errors,
            parse_errors_total=self.parse_errors_total,
            rate_hz=round(self.rate(), 2),
            channels=self.buffers.channels,
            max_channels=self.buffers.max_channels,
            channels_refused=self.buffers.refused,
        )
        return out
