"""Durable file writes, in one place.

Every state file the daemon keeps (model store pointers, transfer chunks, private keys, configs
written by ``config.update``, sequence numbers) is written through these functions: to a temporary
name in the same directory, flushed and fsynced, renamed over the target, and the directory fsynced.
After a kill -9 or a power cut at any point the target reads back whole old or whole new. Errors are
plain :class:`OSError`; callers wrap them in their own error with the context a user needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TMP_PREFIX = "."
TMP_INFIX = ".tmp-"


def tmp_name(path: Path) -> Path:
    """The temporary sibling a durable write of ``path`` goes through (hidden, per process)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_INFIX}{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush an existing file's content to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: whole old or whole new after any crash.

    The file gets ``mode`` (0600 by default: state files are the daemon's own); a symlink at the
    temporary name is never followed. With ``durable`` False the fsyncs are skipped (for files
    whose loss on a power cut is harmless, such as transfer chunks that are re-sent).
    """
    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
