"""Store-and-forward outbox on SQLite: every result and event is stored before it is published.

A message is inserted (one transaction, WAL journal, ``synchronous=NORMAL``) before the MQTT
client sees it and deleted only when the broker acknowledges it, so undelivered messages survive a
``kill -9`` or a broker outage. With ``synchronous=NORMAL`` a power cut can lose the last commits
before a checkpoint, never the database. Each pipeline's last ``seq`` is upserted in the same
transaction as its message, so a restart neither repeats nor skips a sequence number.

The outbox is bounded (message count and payload bytes): when full, the oldest messages are dropped
and counted in a persisted ``dropped`` counter. The write-ahead log is bounded by ``wal_bytes``,
and below ``reserve_bytes`` of free disk nothing new is stored (:class:`OutboxError`, ``ENOSPC``)
until space returns: see :mod:`.diskbudget`. One connection serves every thread behind a lock;
a ``<name>.lock`` file (flock) keeps a second process or instance off the same database.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.reporting.diskbudget import default_wal_bytes, files_bytes, reserve_error

log = logging.getLogger(__name__)

PutItem: TypeAlias = tuple[str, bytes, int, bool, tuple[str, int] | None]
"""``(topic, payload, qos, retain, seq)`` as given to :meth:`Outbox.put_many`."""

SCHEMA_VERSION = 1
_CHUNK = 500  # ids per IN (...) list: below SQLITE_MAX_VARIABLE_NUMBER of old builds (999)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seqs (pipeline TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_INSERT = "INSERT INTO messages (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)"
_UPSERT_SEQ = (
    "INSERT INTO seqs (pipeline, seq) VALUES (?, ?) ON CONFLICT (pipeline) DO UPDATE SET seq = excluded.seq"
)
_ADD_DROPPED = (
    "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
    "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value"
)
_PEEK = "SELECT id, topic, payload, qos, retain, created FROM messages WHERE id > ? ORDER BY id LIMIT ?"
_TOTALS = "SELECT count(*), coalesce(sum(length(payload)), 0) FROM messages"
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26


class OutboxError(EdgeRuntimeError, OSError):
    """The outbox database cannot be opened, read or written (disk full: ``errno == ENOSPC``)."""


class OutboxCorruptError(OutboxError):
    """The outbox file is not a SQLite database or is damaged; :func:`open_outbox` moves it aside."""


@dataclass(frozen=True)
class OutboxMessage:
    id: int  # increasing; publish order
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # time.time() at put


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code: int | None = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF
    text = str(exc)
    if "file is not a database" in text:
        return _SQLITE_NOTADB
    if "malformed" in text:
        return _SQLITE_CORRUPT
    return _SQLITE_FULL if "database or disk is full" in text else None


def _error(path: Path, what: str, exc: sqlite3.Error) -> OutboxError:
    code = _sqlite_code(exc)
    if code == _SQLITE_FULL:
        return OutboxError(
            errno.ENOSPC, f"outbox {what} failed, disk full ({exc}); the outbox is unchanged", str(path)
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return OutboxCorruptError(f"{path}: outbox database is corrupt ({exc}) during {what}")
    return OutboxError(f"{path}: outbox {what} failed: {exc}")


def _make_dirs(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)


class Outbox:
    """A bounded, durable FIFO of MQTT messages plus each pipeline's last ``seq``; thread-safe."""

    def __init__(
        self,
        path: Path,
        max_bytes: int = 64 * 1024 * 1024,
        max_count: int = 200_000,
        *,
        wal_bytes: int | None = None,
        reserve_bytes: int = 0,
    ) -> None:
        if max_bytes < 1 or max_count < 1:
            raise ValueError(f"outbox bounds must be positive: max_bytes={max_bytes}, max_count={max_count}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.wal_bytes = wal_bytes if wal_bytes is not None else default_wal_bytes(max_bytes)
        self.reserve_bytes = reserve_bytes
        self.refused_reserve = 0
        """Puts refused because free disk was below ``reserve_bytes``."""
        self.corrupt_moved_to: Path | None = None  # set by open_outbox when it replaced a corrupt file
        self._lock = threading.Lock()
        self._closed = False
        self._count = self._bytes = self._dropped = self._puts = self._acks = 0
        self._dropping = False
        self._watchers: list[threading.Event] = []
        try:
            _make_dirs(self.path.parent)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create the outbox: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            why = "is already open (another process or instance)" if exc.errno == errno.EWOULDBLOCK else exc
            raise OutboxError(f"{self.path}: outbox {why}") from exc
        try:
            self._conn = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "rb") as f:
                head = f.read(16)
            if head and head != b"SQLite format 3\x00":  # before SQLite opens it and drops its -wal
                raise OutboxCorruptError(f"{self.path}: outbox database is corrupt (file is not a database)")
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except OutboxError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise OutboxError(f"{self.path}: outbox cannot use a WAL journal on this filesystem")
            conn.execute("PRAGMA synchronous=NORMAL")
            # keep the write-ahead log small: a checkpoint every wal_bytes (at least 16 pages),
            # and the log file truncated back to wal_bytes after it
            page = conn.execute("PRAGMA page_size").fetchone()[0] or 4096
            pages = max(16, self.wal_bytes // page)
            conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
            conn.execute(f"PRAGMA journal_size_limit={int(max(self.wal_bytes, 16 * page))}")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxCorruptError(f"{self.path}: outbox database is corrupt: {check}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(f"{self.path}: outbox schema {version} is newer than {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:  # written once, so a full disk does not stop a reopen
                conn.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            count, nbytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM messages"
            ).fetchone()
            row = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
            self._count, self._bytes = count, nbytes
            self._dropped = row[0] if row else 0
            with self._transaction(conn, "open"):
                dropped, count, nbytes = self._evict(conn, count, nbytes)
            self._count, self._bytes, self._dropped = count, nbytes, self._dropped + dropped
        except sqlite3.Error as exc:
            conn.close()
            raise _error(self.path, "open", exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, what: str) -> Iterator[None]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _error(self.path, what, exc) from exc
            raise

    def _live(self) -> sqlite3.Connection:
        if self._closed:
            raise OutboxError(f"{self.path}: outbox is closed")
        return self._conn

    def _evict(self, conn: sqlite3.Connection, count: int, nbytes: int) -> tuple[int, int, int]:
        """Delete the oldest messages until within bounds; returns (dropped, count, bytes)."""
        if count <= self.max_count and nbytes <= self.max_bytes:
            return 0, count, nbytes
        dropped, last = 0, 0
        cur = conn.execute("SELECT id, length(payload) FROM messages ORDER BY id")
        try:
            for msg_id, size in cur:
                if count <= self.max_count and nbytes <= self.max_bytes:
                    break
                dropped, count, nbytes, last = dropped + 1, count - 1, nbytes - size, msg_id
        finally:
            cur.close()
        conn.execute("DELETE FROM messages WHERE id <= ?", (last,))
        conn.execute(_ADD_DROPPED, (dropped,))
        return dropped, count, nbytes

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        seq: tuple[str, int] | None = None,
    ) -> int:
        """Store one message (and the pipeline's ``seq``) durably; returns its id."""
        return self.put_many([(topic, payload, qos, retain, seq)])[0]

    def put_many(self, items: Sequence[PutItem], *, retried: bool = False) -> list[int]:
        """Store a batch in one transaction; on :class:`OutboxError` nothing of it was written.
        ``refused_reserve`` counts the messages the reserve refused, unless the caller stores each
        of them again on its own after a refusal (``retried``: that attempt counts them)."""
        added = 0
        for topic, payload, _, _, _ in items:
            if len(payload) > self.max_bytes:
                raise OutboxError(
                    f"{self.path}: payload of {len(payload)} bytes for {topic} exceeds the outbox "
                    f"bound max_bytes={self.max_bytes}"
                )
            added += len(payload)
        if not items:
            return []
        now = time.time()
        ids: list[int] = []
        with self._lock:
            conn = self._live()
            self._check_reserve(0 if retried else len(items))
            with self._transaction(conn, "put"):
                for topic, payload, qos, retain, seq in items:
                    ids.append(conn.execute(_INSERT, (topic, payload, qos, int(retain), now)).lastrowid or 0)
                    if seq is not None:
                        conn.execute(_UPSERT_SEQ, seq)
                dropped, count, nbytes = self._evict(conn, self._count + len(items), self._bytes + added)
            self._count, self._bytes = count, nbytes
            self._dropped += dropped
            self._puts += len(items)
            for event in self._watchers:
                event.set()
            if dropped and not self._dropping:
                log.warning("outbox %s is full: dropping the oldest messages until acks make room", self.path)
            self._dropping = self._dropping or dropped > 0
        return ids

    def _check_reserve(self, messages: int) -> None:
        low = (
            reserve_error(self.path.parent, self.reserve_bytes, self._reusable())
            if self.reserve_bytes
            else None
        )
        if low is not None:
            self.refused_reserve += messages
            raise OutboxError(low.errno, low.strerror, str(self.path))

    def _reusable(self) -> int:
        try:
            page = self._conn.execute("PRAGMA page_size").fetchone()[0]
            return int(self._conn.execute("PRAGMA freelist_count").fetchone()[0] * page)
        except sqlite3.Error:
            return 0

    def reusable_bytes(self) -> int:
        """Free pages inside the database file: room for new messages without growing it."""
        with self._lock:
            return 0 if self._closed else self._reusable()

    def disk_bytes(self) -> int:
        """Bytes the outbox takes on disk: the database, its write-ahead log and shared memory file."""
        return files_bytes(self.path)

    def peek(self, limit: int = 100, after_id: int = 0) -> list[OutboxMessage]:
        """Up to ``limit`` messages with ``id > after_id``, oldest first."""
        with self._lock:
            try:
                rows = self._live().execute(_PEEK, (after_id, limit)).fetchall()
            except sqlite3.Error as exc:
                raise _error(self.path, "peek", exc) from exc
        return [OutboxMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages; returns how many of ``ids`` still existed."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        removed = freed = 0
        with self._lock:
            conn = self._live()
            with self._transaction(conn, "ack"):
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    n, size = conn.execute(
                        f"{_TOTALS} WHERE id IN ({marks})",
                        chunk,
                    ).fetchone()
                    if n:
                        conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
                    removed, freed = removed + n, freed + size
            self._count -= removed
            self._bytes -= freed
            self._acks += removed
            if self._count < self.max_count and self._bytes < self.max_bytes:
                self._dropping = False
        return removed

    def last_seq(self, pipeline: str) -> int:
        """The last ``seq`` stored for ``pipeline``; 0 when it never stored one."""
        with self._lock:
            try:
                row = self._live().execute("SELECT seq FROM seqs WHERE pipeline = ?", (pipeline,)).fetchone()
            except sqlite3.Error as exc:
                raise _error(self.path, "last_seq", exc) from exc
        return int(row[0]) if row else 0

    def stats(self) -> dict[str, Any]:
        """Depth, payload bytes, age of the oldest message, drops (ever), puts and acks (since open)."""
        with self._lock:
            try:
                row = self._live().execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                raise _error(self.path, "stats", exc) from exc
            return {
                "depth": self._count,
                "bytes": self._bytes,
                "oldest_age_s": max(0.0, time.time() - row[0]) if row else None,
                "dropped": self._dropped,
                "put": self._puts,
                "acked": self._acks,
            }

    def watch(self, event: threading.Event) -> None:
        """Set ``event`` after every put (and on close): a forwarder waits on it together with
        whatever else should wake it, such as acknowledgements."""
        with self._lock:
            self._watchers.append(event)
            if self._closed:
                event.set()

    def unwatch(self, event: threading.Event) -> None:
        with self._lock:
            if event in self._watchers:
                self._watchers.remove(event)

    def close(self) -> None:
        """Close the database (idempotent); sets every watched event."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for event in self._watchers:
                event.set()
            try:
                self._conn.close()
            finally:
                os.close(self._lock_fd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-journal"):  # a stale journal must never be replayed into the new file
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}-shm")
    return target


def open_outbox(
    path: Path,
    max_bytes: int = 64 * 1024 * 1024,
    max_count: int = 200_000,
    *,
    wal_bytes: int | None = None,
    reserve_bytes: int = 0,
) -> Outbox:
    """Open the outbox; a corrupt file is moved to ``<name>.corrupt-<UTC time>`` and a fresh one started.

    The returned outbox's ``corrupt_moved_to`` names the moved file (for the daemon's event), else None.
    Other failures (permissions, disk full) raise :class:`OutboxError`.
    """
    path = Path(path)
    try:
        return Outbox(path, max_bytes, max_count, wal_bytes=wal_bytes, reserve_bytes=reserve_bytes)
    except OutboxCorruptError as exc:
        moved = _move_aside(path)
        log.warning("%s; moved it to %s and started an empty outbox", exc, moved)
    box = Outbox(path, max_bytes, max_count, wal_bytes=wal_bytes, reserve_bytes=reserve_bytes)
    box.corrupt_moved_to = moved
    return box
