"""The outbox's room on disk: how ``[outbox] max_bytes`` is shared between payloads, the SQLite
write-ahead log and its shared memory, and the free-disk reserve (figures: ``docs/health.md``).

Measured on a 2 MB tmpfs (``tools/outbox_journal_modes.py``), the old checkpoint interval of
1000 pages let the write-ahead log alone fill the disk with an empty outbox; a checkpoint every
``wal_bytes`` (1/8 of ``max_bytes``, 64 KiB to 256 KiB), with the log truncated back to it, keeps
database, log and shared memory within ~316 KiB at full speed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

SHM_BYTES = 32 * 1024
"""Size of SQLite's shared-memory file next to a WAL database."""
PAYLOAD_SHARE = 0.6
"""Share of the on-disk bound given to payloads: rows also hold their topic and a header, and
b-tree pages are not full (measured: 1.25x to 1.5x the payload bytes for results and events)."""


def default_wal_bytes(max_bytes: int) -> int:
    """The write-ahead log bound for an outbox of ``max_bytes``: 1/8 of it, 64 KiB to 256 KiB."""
    return max(64 * 1024, min(256 * 1024, max_bytes // 8))


def payload_bound(disk_bytes: int) -> int:
    """The payload bytes an outbox may hold so that database, log and shared memory together stay
    within ``disk_bytes`` (``[outbox] max_bytes``)."""
    room = disk_bytes - default_wal_bytes(disk_bytes) - SHM_BYTES
    return max(4096, int(room * PAYLOAD_SHARE))


def files_bytes(path: Path) -> int:
    """Bytes a SQLite database takes on disk: the file, its write-ahead log, shared memory, journal."""
    total = 0
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def reserve_error(directory: Path, reserve: int, reusable: int) -> OSError | None:
    """The error to raise when free disk (plus ``reusable`` bytes inside the database, which are
    used before the file grows) is below ``reserve``, else None (also when it cannot be read)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize + reusable
    if free >= reserve:
        return None
    why = (
        f"outbox put refused, disk full: {free} bytes free (with the outbox's free pages), below the reserve"
    )
    return OSError(errno.ENOSPC, f"{why} of {reserve}")
