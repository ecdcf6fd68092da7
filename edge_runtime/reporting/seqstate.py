"""``seq`` numbering that survives a corrupt outbox, and salvage of a moved-aside outbox.

Each pipeline's last ``seq`` is stored with its message in the outbox; a corrupt outbox would
take it along. So the daemon also keeps ``seq.json`` next to it: for each pipeline a *reserved*
upper bound, written atomically (write, fsync, rename) whenever numbering passes the bound,
``block`` numbers ahead (one small write per ``block`` results). After the outbox was lost,
numbering continues above the reservation: a gap a subscriber can see, never a ``seq`` reused
with other content.

:func:`salvage` reads the intact rows of a moved-aside outbox (read-only, row by row past damaged
pages), so that they can be stored again and delivered, and says exactly how many it could not
read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000
"""Numbers reserved ahead per write of ``seq.json``."""
MAX_SALVAGE_ROWS = 200_000
"""At most this many rows are probed in a damaged outbox (its ``max_count`` bound by default)."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class SeqReservations:
    """Reserved ``seq`` upper bounds per pipeline in a small JSON file; thread-safe."""

    def __init__(self, path: Path, block: int = SEQ_BLOCK) -> None:
        if block < 1:
            raise ValueError(f"block must be positive, not {block}")
        self.path = Path(path)
        self.block = block
        self.write_errors = 0
        self._lock = threading.Lock()
        self._reserved = self._read()

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s); seq reservations start empty", self.path, exc)
            return {}
        if not isinstance(data, dict) or not isinstance(data.get("reserved"), dict):
            log.error("%s has no 'reserved' table; seq reservations start empty", self.path)
            return {}
        return {str(k): int(v) for k, v in data["reserved"].items() if isinstance(v, int) and v >= 0}

    def reserved(self, pipeline: str) -> int:
        """The highest ``seq`` that may have been used for ``pipeline`` (0: none reserved)."""
        with self._lock:
            return self._reserved.get(pipeline, 0)

    def ensure(self, pipeline: str, seq: int) -> None:
        """Make sure ``seq`` is within the reservation, writing a new one when it is not."""
        with self._lock:
            if seq <= self._reserved.get(pipeline, 0):
                return
            new = {**self._reserved, pipeline: seq + self.block}
            try:
                _atomic_write(self.path, json.dumps({"v": 1, "reserved": new}, sort_keys=True).encode())
            except OSError as exc:
                self.write_errors += 1
                log.error("cannot write %s: %s; seq %s/%d is not reserved", self.path, exc, pipeline, seq)
                return
            self._reserved = new


@dataclass(frozen=True)
class Salvage:
    """What could be read back from a moved-aside outbox."""

    rows: tuple[tuple[str, bytes, int, bool], ...]  # (topic, payload, qos, retain), oldest first
    seqs: dict[str, int]
    unreadable: int | None  # rows known to exist but unreadable; None: the file cannot say
    error: str = ""
    lost_at_most: int | None = None  # when the count is unreadable: ids up to the highest never read
    is_database: bool = True


def salvage(path: Path, max_rows: int = MAX_SALVAGE_ROWS) -> Salvage:
    """Every intact message and ``seq`` of the outbox database at ``path``, read-only.

    A plain scan is tried first; when it stops at a damaged page, each remaining id up to the
    highest one that SQLite still knows is probed by itself, so one bad page loses only its rows.
    A truncated file's header still counts the pages it lost, which makes SQLite refuse all of
    it: the header's page count is set to the pages the (moved-aside) file still has.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return Salvage((), {}, None, str(exc), is_database=False)
    if head != b"SQLite format 3\x00":
        return Salvage((), {}, None, "file is not a database", is_database=False)
    _fit_header(path)
    uri = f"file:{path}?mode=ro&immutable=1"  # its -wal is not replayed
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        return Salvage((), {}, None, str(exc), is_database=False)
    rows: dict[int, tuple[str, bytes, int, bool]] = {}
    seqs: dict[str, int] = {}
    error = ""
    try:
        try:
            for pipeline, seq in conn.execute("SELECT pipeline, seq FROM seqs"):
                seqs[str(pipeline)] = int(seq)
        except sqlite3.Error as exc:
            error = str(exc)
        try:
            cur = conn.execute("SELECT id, topic, payload, qos, retain FROM messages ORDER BY id")
            for msg_id, topic, payload, qos, retain in cur:
                rows[int(msg_id)] = (str(topic), bytes(payload), int(qos), bool(retain))
                if len(rows) >= max_rows:
                    break
            scanned = True
        except sqlite3.Error as exc:
            error = error or str(exc)
            scanned = False
        top = _highest_id(conn)
        if not scanned:
            low = max(rows, default=0)
            probed = 0
            for msg_id in range(low + 1, top + 1):
                if probed >= max_rows:
                    break
                probed += 1
                try:
                    row = conn.execute(
                        "SELECT topic, payload, qos, retain FROM messages WHERE id = ?", (msg_id,)
                    ).fetchone()
                except sqlite3.Error:
                    continue
                if row is not None:
                    rows[msg_id] = (str(row[0]), bytes(row[1]), int(row[2]), bool(row[3]))
        unreadable = _unreadable(conn, len(rows))
    except sqlite3.DatabaseError as exc:  # not a database at all
        conn.close()
        return Salvage((), {}, None, str(exc), is_database=False)
    conn.close()
    for _, payload, _, _ in rows.values():  # results carry their own seq: a lost seqs table is rebuilt
        _seq_of(payload, seqs)
    at_most = None if unreadable is not None else max(0, max(top, max(rows, default=0)) - len(rows))
    return Salvage(tuple(rows[i] for i in sorted(rows)), seqs, unreadable, error, at_most)


def _fit_header(path: Path) -> None:
    """Set a SQLite header's page count (bytes 28-31) to the pages the file holds, if larger."""
    try:
        with open(path, "r+b") as fh:
            head = fh.read(100)
            if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
                return
            page = int.from_bytes(head[16:18], "big")
            page = 65536 if page == 1 else page
            if page < 512:
                return
            pages = os.fstat(fh.fileno()).st_size // page
            if int.from_bytes(head[28:32], "big") > pages:
                fh.seek(28)
                fh.write(pages.to_bytes(4, "big"))
    except OSError as exc:
        log.warning("cannot prepare %s for salvage: %s", path, exc)


def _highest_id(conn: sqlite3.Connection) -> int:
    for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'messages'", "SELECT max(id) FROM messages"):
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute(query).fetchone()
            if row and row[0]:
                return int(row[0])
    return 0


def _unreadable(conn: sqlite3.Connection, read: int) -> int | None:
    """Rows the file says it holds minus those read; None when it cannot say."""
    try:
        row = conn.execute("SELECT count(*) FROM messages").fetchone()
    except sqlite3.Error:
        return None
    return max(0, int(row[0]) - read)


def _seq_of(payload: bytes, seqs: dict[str, int]) -> None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return
    if isinstance(doc, dict) and isinstance(doc.get("pipeline"), str) and isinstance(doc.get("seq"), int):
        name = doc["pipeline"]
        seqs[name] = max(seqs.get(name, 0), doc["seq"])
