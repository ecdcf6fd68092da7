"""Getting a model file onto the device: a download (:mod:`.download`), or an MQTT chunked transfer.

:class:`ChunkAssembler` puts a file sent in numbered chunks back together, under one disk quota, a
bound on concurrent transfers and an expiry. Errors are
:class:`~edge_runtime.updates.protocol.UpdateError` with step ``download`` or ``size``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from edge_runtime import fsutil
from edge_runtime.fsutil import fsync_dir
from edge_runtime.names import TRANSFER_ID_RE
from edge_runtime.updates.download import DownloadPolicy, check_url, download, redact_url
from edge_runtime.updates.protocol import DownloadError, SizeLimitError

__all__ = ["ChunkAssembler", "DownloadPolicy", "check_url", "download", "redact_url"]

log = logging.getLogger(__name__)


# --- chunked transfers --------------------------------------------------------------------------


class ChunkAssembler:
    """Reassembles a file sent as numbered chunks (an MQTT chunked transfer).

    Chunk ``i`` of transfer ``T`` lands in ``{root}/T.chunks/{i:06d}`` (written to a temporary
    name and renamed, so a chunk file is whole or absent); the complete file is assembled into
    ``{root}/T.part`` and renamed to ``{root}/T.bin``. Chunks may come in any order and more than
    once (a duplicate with the same bytes is ignored; different bytes refuse the transfer).

    Bounds, for anyone who can publish ``model.chunk``: one transfer holds at most ``max_bytes``;
    all transfers together at most ``quota_bytes`` on disk; at most ``max_transfers`` are in
    progress (partial or assembled and not yet used) at once; a transfer untouched for
    ``expiry_s`` is removed, checked at every chunk and by :meth:`sweep` (the updater calls it
    periodically), not only at start.
    """

    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        *,
        max_chunks: int = 4096,
        quota_bytes: int | None = None,
        max_transfers: int = 4,
        expiry_s: float = 600.0,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self.quota_bytes = quota_bytes if quota_bytes is not None else max_bytes * max(1, max_transfers)
        self.max_transfers = max_transfers
        self.expiry_s = expiry_s
        self._lock = threading.Lock()
        self._usage: dict[str, int] = {}  # transfer id -> bytes on disk
        self._rescan()

    def _dir(self, transfer_id: str) -> Path:
        if not isinstance(transfer_id, str) or not TRANSFER_ID_RE.match(transfer_id):
            raise DownloadError(f"transfer id {transfer_id!r} must be 1-64 of [A-Za-z0-9_-]")
        return self.root / f"{transfer_id}.chunks"

    def _entries(self) -> list[tuple[str, Path]]:
        """(transfer id, path) of every transfer file or folder under the root."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and suffix in ("chunks", "part", "bin") and TRANSFER_ID_RE.match(stem):
                found.append((stem, entry))
        return found

    def _rescan(self) -> None:
        usage: dict[str, int] = {}
        for transfer_id, entry in self._entries():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    size = sum(p.lstat().st_size for p in entry.iterdir() if p.name.isdigit())
                else:
                    size = entry.lstat().st_size
            except OSError:
                continue
            usage[transfer_id] = usage.get(transfer_id, 0) + size
        self._usage = usage

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._usage.values())

    def transfers(self) -> list[str]:
        """The transfers on disk (partial or assembled)."""
        with self._lock:
            return sorted(self._usage)

    def add(self, transfer_id: str, index: int, total: int, data: bytes) -> Path | None:
        """Store one chunk; returns the assembled file once every chunk is in, else None."""
        self._dir(transfer_id)  # validates the id
        what = f"transfer {transfer_id}"
        if isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= self.max_chunks:
            raise DownloadError(f"{what}: chunk count {total!r} must be 1..{self.max_chunks}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < total:
            raise DownloadError(f"{what}: chunk index {index!r} outside 0..{total - 1}")
        with self._lock:
            self._expire(self.expiry_s)
            try:
                return self._add(transfer_id, index, total, data)
            except OSError as exc:
                raise DownloadError(f"{what}: cannot store chunk {index}: {exc.strerror or exc}") from exc

    def _add(self, transfer_id: str, index: int, total: int, data: bytes) -> Path | None:
        chunks = self._dir(transfer_id)
        what = f"transfer {transfer_id}"
        done = self.root / f"{transfer_id}.bin"
        if done.exists() and not chunks.exists():
            log.debug("%s: chunk %d after assembly ignored", what, index)
            return None
        if transfer_id not in self._usage and len(self._usage) >= self.max_transfers:
            raise DownloadError(
                f"{what}: {len(self._usage)} transfers are already in progress (updates.max_transfers "
                f"= {self.max_transfers}); finish one or wait {self.expiry_s:g} s for it to expire"
            )
        used = sum(self._usage.values())
        if used + len(data) > self.quota_bytes:
            raise SizeLimitError(
                f"{what}: chunk {index} refused: transfers hold {used} bytes, the quota "
                f"(updates.transfer_quota_bytes) is {self.quota_bytes}"
            )
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        chunks.mkdir(mode=0o700, exist_ok=True)
        self._usage.setdefault(transfer_id, 0)
        total_file = chunks / "total"
        if total_file.exists():
            known = int(total_file.read_text() or 0)
            if known != total:
                raise DownloadError(f"{what}: chunk {index} says {total} chunks, earlier chunks said {known}")
        else:
            fsutil.atomic_write(total_file, str(total).encode(), durable=False)
        target = chunks / f"{index:06d}"
        if target.exists():
            if target.read_bytes() != bytes(data):
                raise DownloadError(f"{what}: chunk {index} received twice with different content")
            return None
        sizes = [p.stat().st_size for p in chunks.iterdir() if p.name.isdigit()]
        if sum(sizes) + len(data) > self.max_bytes:
            self._discard(transfer_id)
            raise SizeLimitError(f"{what}: more than {self.max_bytes} bytes; transfer discarded")
        fsutil.atomic_write(target, bytes(data), durable=False)
        self._usage[transfer_id] += len(data)
        if len(sizes) + 1 < total:
            return None
        return self._assemble(transfer_id, total)

    def _assemble(self, transfer_id: str, total: int) -> Path:
        chunks = self._dir(transfer_id)
        part = self.root / f"{transfer_id}.part"
        done = self.root / f"{transfer_id}.bin"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                for i in range(total):
                    with open(chunks / f"{i:06d}", "rb") as f:
                        shutil.copyfileobj(f, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, done)
            fsync_dir(self.root)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        shutil.rmtree(chunks, ignore_errors=True)
        log.info("transfer %s: %d chunks assembled into %s", transfer_id, total, done)
        return done

    def _discard(self, transfer_id: str) -> None:
        shutil.rmtree(self._dir(transfer_id), ignore_errors=True)
        for suffix in (".part", ".bin"):
            (self.root / f"{transfer_id}{suffix}").unlink(missing_ok=True)
        self._usage.pop(transfer_id, None)

    def take(self, transfer_id: str, dest: Path) -> None:
        """Move the assembled file of ``transfer_id`` to ``dest`` (it leaves the quota)."""
        done = self.root / f"{transfer_id}.bin"
        with self._lock:
            try:
                os.replace(done, dest)
            except FileNotFoundError:  # a partial transfer stays: its sender may still complete it
                raise DownloadError(
                    f"transfer {transfer_id!r} is not complete or has expired (send every model.chunk "
                    f"first, then model.update within {self.expiry_s:g} s)"
                ) from None
            except OSError as exc:
                self._discard(transfer_id)
                raise DownloadError(f"transfer {transfer_id}: cannot use it: {exc.strerror or exc}") from exc
            self._discard(transfer_id)

    def _expire(self, older_than_s: float) -> list[str]:
        removed: set[str] = set()
        cutoff = time.time() - older_than_s
        for transfer_id, entry in self._entries():
            try:
                if entry.lstat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.add(transfer_id)
        if removed:
            log.warning("removed expired transfers from %s: %s", self.root, sorted(removed))
            self._rescan()
        return sorted(removed)

    def sweep(self) -> list[str]:
        """Remove transfers untouched for ``expiry_s``; returns their ids."""
        with self._lock:
            return self._expire(self.expiry_s)

    def cleanup(self, older_than_s: float) -> list[str]:
        """Remove transfers (partial or assembled) untouched for ``older_than_s``; returns their ids."""
        with self._lock:
            return self._expire(older_than_s)
