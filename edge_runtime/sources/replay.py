"""Replay source: recorded sensor rows played back in real time into ring buffers.

A recording is a CSV file with a header row or a JSON-lines file; each row holds a time in
seconds (``time_field``) and named values. Rows are released on the schedule their times give,
relative to the first row and divided by ``speed``, and stored in :attr:`ReplaySource.buffers` at
their scheduled monotonic time (so the recorded spacing survives thread jitter; the schedule
restarts from "now" when playback falls more than a second behind). Bad rows are counted by
reason and skipped, as serial lines are. At the end of the file the source is finished, or with
``loop`` starts over, one mean row interval after the last row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import IO, Any, Literal

from pydantic import Field

from edge_runtime.errors import ParseError, SourceError
from edge_runtime.sources.base import Source, SourceConfigBase
from edge_runtime.sources.buffer import SensorBuffers
from edge_runtime.sources.parsers import CountsParseErrors, ErrorTally, Values, parse_csv, parse_json

log = logging.getLogger(__name__)

RESYNC_S = 1.0
"""Playback this far behind schedule restarts the schedule from now instead of bursting."""


class ReplayConfig(SourceConfigBase):
    """A recorded sensor stream played back as if it were live."""

    type: Literal["replay"] = Field(
        default="replay", description="Source type: play back a recorded sensor file."
    )
    path: str = Field(min_length=1, description="The recording (relative paths: see the config loader).")
    format: Literal["csv", "jsonl"] = Field(
        description="csv: comma-separated numbers with a header row of channel names; "
        "jsonl: one JSON object per line (nested objects flattened with dots)."
    )
    time_field: str = Field(
        default="t", min_length=1, description="Column or key holding each row's time, in seconds."
    )
    speed: float = Field(
        default=1.0, ge=0.001, le=1000, description="Playback speed: 2.0 plays twice as fast."
    )
    loop: bool = Field(default=False, description="Start over at the end instead of finishing.")
    channels: list[str] | None = Field(
        default=None, description="Values to keep, by channel name; default: every column but the time."
    )
    capacity: int = Field(
        default=4096, ge=2, le=10_000_000, description="Values kept per channel (ring buffer size)."
    )
    max_channels: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Without 'channels': at most this many channels are discovered; values of "
        "further keys are refused, counted (channels_refused) and logged once.",
    )


class ReplaySource(CountsParseErrors, Source):
    """Plays a recording; values land in :attr:`buffers` (a SensorBuffers)."""

    kind = "replay"

    def __init__(self, name: str, config: ReplayConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, config, clock)
        self.cfg = config
        self.buffers = SensorBuffers(
            config.capacity, config.channels or (), None if config.channels else config.max_channels
        )
        self.rows = 0
        """Rows played (stored)."""
        self.ignored = 0
        """Rows holding none of the wanted channels."""
        self.loops = 0
        self.resyncs = 0
        self._errors = ErrorTally()
        self._refusal_logged = False
        self._wanted = frozenset(config.channels) if config.channels is not None else None
        self._file: IO[bytes] | None = None
        self._header: list[str] = []
        self._anchor_mono: float | None = None
        self._anchor_t: float | None = None
        self._pass_rows = 0
        self._first_t: float | None = None
        self._prev_t: float | None = None
        self._last_due = 0.0

    # -- Source hooks -------------------------------------------------------------------------------

    def _open(self) -> None:
        self.finished = False
        self._open_file()
        self._anchor_mono = None

    def _open_file(self) -> None:
        path = self.cfg.path
        try:
            handle = open(path, "rb")  # noqa: SIM115 (kept open across _read_once calls)
        except OSError as exc:
            raise SourceError(f"cannot open replay file {path}: {exc}") from exc
        self._header = []
        if self.cfg.format == "csv":
            try:
                self._header = self._read_header(handle)
            except SourceError:
                handle.close()
                raise
        self._file = handle
        self._anchor_t = None
        self._pass_rows = 0
        self._first_t = None
        self._prev_t = None

    def _read_header(self, handle: IO[bytes]) -> list[str]:
        path = self.cfg.path
        try:
            first = handle.readline().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"replay file {path}: unreadable header: {exc}") from exc
        header = [name.strip() for name in first.split(",")]
        if self.cfg.time_field not in header:
            raise SourceError(f"replay file {path}: no {self.cfg.time_field!r} column in the header")
        return header

    def _close(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    def _read_once(self) -> bool:
        assert self._file is not None
        try:
            raw = self._file.readline()
        except OSError as exc:
            raise SourceError(f"reading replay file {self.cfg.path} failed: {exc}") from exc
        if not raw:
            return self._end_of_file()
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            return True
        try:
            t, values = self._row(raw)
        except ParseError as exc:
            self._errors.add(str(exc))
            return True
        self._play(t, values)
        return True

    # -- rows ---------------------------------------------------------------------------------------------

    def _row(self, raw: bytes) -> tuple[float, Values]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("undecodable") from None
        values = parse_csv(line, self._header) if self.cfg.format == "csv" else parse_json(line)
        t = values.pop(self.cfg.time_field, None)
        if t is None:
            raise ParseError("missing time")
        if self._prev_t is not None and t < self._prev_t:
            raise ParseError("time goes backwards")
        self._prev_t = t
        if self._wanted is not None:
            values = {k: v for k, v in values.items() if k in self._wanted}
        return t, values

    def _play(self, t: float, values: Values) -> None:
        now = self.clock()
        if self._anchor_t is None:
            self._anchor_t = t
            self._first_t = t
        if self._anchor_mono is None:
            self._anchor_mono = now
        due = self._anchor_mono + (t - self._anchor_t) / self.cfg.speed
        if now - due > RESYNC_S:
            self._anchor_mono += now - due
            due = now
            self.resyncs += 1
            log.warning("replay %s: playback of %s fell behind; schedule restarted", self.name, self.cfg.path)
        if self._stop.wait(max(0.0, due - now)):
            return
        self._pass_rows += 1
        self._last_due = due
        if not values:
            self.ignored += 1
            return
        if self.buffers.append(due, values) and not self._refusal_logged:
            self._refusal_logged = True  # once: the count is in the stats and the health state
            log.warning(
                "replay %s: more than %d channels; values of new keys are refused and counted",
                self.name, self.cfg.max_channels,
            )  # fmt: skip
        self.rows += 1
        self._publish(due)

    def _end_of_file(self) -> bool:
        path = self.cfg.path
        if self._pass_rows == 0:
            raise SourceError(f"replay file {path} has no playable rows")
        if not self.cfg.loop:
            log.info("replay %s: end of %s after %d rows", self.name, path, self._pass_rows)
            self.finished = True
            return False
        rows = self._pass_rows
        span = 0.0 if self._first_t is None or self._prev_t is None else self._prev_t - self._first_t
        interval = span / (rows - 1) if rows > 1 and span > 0 else 1.0
        self.loops += 1
        self._close()
        self._open_file()  # SourceError when the file is gone: down, then retried with backoff
        self._anchor_mono = self._last_due + interval / self.cfg.speed
        return True

    # -- reporting ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(
            path=self.cfg.path,
            rows=self.rows,
            ignored=self.ignored,
            loops=self.loops,
            resyncs=self.resyncs,
            parse_errors=self.parse_errors,
            parse_errors_total=self.parse_errors_total,
            channels=self.buffers.channels,
            max_channels=self.buffers.max_channels,
            channels_refused=self.buffers.refused,
        )
        return out
