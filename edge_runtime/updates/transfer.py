"""Getting a model file onto the device: a download, or an MQTT chunked transfer.

:func:`download` fetches an http, https or file:// URL into a path the caller chooses, via a
``.part`` file that is fsynced and renamed into place, stopping at a size limit and a time limit.
:class:`ChunkAssembler` puts a file sent in numbered chunks back together. Errors are
:class:`~edge_runtime.updates.protocol.UpdateError` with step ``download`` or ``size``.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException, HTTPMessage
from pathlib import Path
from typing import IO

from edge_runtime import fsutil
from edge_runtime.fsutil import fsync_dir
from edge_runtime.names import TRANSFER_ID_RE
from edge_runtime.updates.protocol import DownloadError, SizeLimitError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024

# --- download -----------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without credentials, query or fragment (presigned URLs carry tokens there)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<malformed url>"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only, and never from https down to http."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url).scheme
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new not in ("http", "https") or (old == "https" and new == "http"):
            raise DownloadError(
                f"{redact_url(req.full_url)}: refusing redirect ({code}) to {redact_url(newurl)}"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open_http(url: str, timeout_s: float, ca_file: str | Path | None) -> tuple[IO[bytes], int | None]:
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise DownloadError(f"CA file {ca_file}: cannot load: {exc}") from exc
    opener = urllib.request.build_opener(_RedirectHandler(), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(
        url, headers={"User-Agent": "edge-runtime", "Accept-Encoding": "identity"}
    )
    shown = redact_url(url)
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{shown}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise DownloadError(f"{shown}: no response within {timeout_s:g} s") from exc
    except (HTTPException, OSError) as exc:
        raise DownloadError(f"{shown}: {type(exc).__name__}: {exc}") from exc
    length = response.headers.get("Content-Length")
    try:
        announced = int(length) if length is not None else None
    except ValueError:
        announced = None
    return response, announced


def _open_file(url: str) -> tuple[IO[bytes], int | None]:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadError(f"{url}: file:// URLs must be local (file:///path)")
    path = Path(urllib.request.url2pathname(parts.path))
    if not path.is_absolute():
        raise DownloadError(f"{url}: file:// URLs need an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise DownloadError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DownloadError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb"), st.st_size


def download(
    url: str,
    dest: str | Path,
    *,
    max_bytes: int,
    timeout_s: float,
    expected_size: int | None = None,
    ca_file: str | Path | None = None,
) -> Path:
    """Fetch ``url`` (http, https or file://) to ``dest`` via ``dest.part``; returns ``dest``.

    ``timeout_s`` bounds every network read and the whole transfer (checked between reads). The
    transfer stops as soon as more than ``max_bytes`` (or ``expected_size``) bytes arrive; fewer
    bytes than ``Content-Length`` or ``expected_size`` is a truncated download. ``dest`` is
    replaced only by a complete, fsynced file. https verifies the server against the system's
    CAs, or against ``ca_file`` only when given (a fleet's private CA).
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    if expected_size is not None and expected_size > max_bytes:
        raise SizeLimitError(
            f"{shown}: announced size {expected_size} bytes exceeds the limit of {max_bytes}"
        )
    limit = max_bytes if expected_size is None else expected_size
    deadline = time.monotonic() + timeout_s
    if scheme in ("http", "https"):
        source, announced = _open_http(url, timeout_s, ca_file)
    elif scheme == "file":
        source, announced = _open_file(url)
    else:
        hint = " (write a local path as file:///path)" if not scheme else ""
        raise DownloadError(f"{shown}: unsupported URL scheme {scheme!r}; use http, https or file{hint}")
    part = dest.with_name(dest.name + ".part")
    received = 0
    try:
        with source:
            if announced is not None and announced > limit:
                what = "the limit" if expected_size is None else "the announced size"
                raise SizeLimitError(f"{shown}: {announced} bytes offered, more than {what} of {limit}")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                received = _copy(source, out, limit, deadline, shown, timeout_s)
                if announced is not None and received < announced:
                    raise DownloadError(f"{shown}: truncated: {received} of {announced} bytes received")
                if expected_size is not None and received < expected_size:
                    raise DownloadError(
                        f"{shown}: truncated: {received} bytes received, {expected_size} announced"
                    )
                out.flush()
                os.fsync(out.fileno())
        os.replace(part, dest)
        fsync_dir(dest.parent)
    except OSError as exc:  # reads are handled in _copy: this is the local side
        part.unlink(missing_ok=True)
        raise DownloadError(f"{shown}: cannot write {part}: {exc.strerror or exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    log.info("downloaded %s to %s (%d bytes)", shown, dest, received)
    return dest


def _copy(
    source: IO[bytes], out: IO[bytes], limit: int, deadline: float, shown: str, timeout_s: float
) -> int:
    received = 0
    while True:
        try:
            block = source.read(CHUNK)
        except TimeoutError as exc:
            raise DownloadError(f"{shown}: timed out after {received} bytes (limit {timeout_s:g} s)") from exc
        except (HTTPException, OSError) as exc:
            raise DownloadError(f"{shown}: after {received} bytes: {type(exc).__name__}: {exc}") from exc
        if not block:
            return received
        received += len(block)
        if received > limit:
            raise SizeLimitError(f"{shown}: more than {limit} bytes; transfer stopped")
        out.write(block)
        if time.monotonic() > deadline:
            raise DownloadError(f"{shown}: not complete within {timeout_s:g} s ({received} bytes received)")


# --- chunked transfers --------------------------------------------------------------------------


class ChunkAssembler:
    """Reassembles a file sent as numbered chunks (an MQTT chunked transfer).

    Chunk ``i`` of transfer ``T`` lands in ``{root}/T.chunks/{i:06d}`` (written to a temporary
    name and renamed, so a chunk file is whole or absent); the complete file is assembled into
    ``{root}/T.part`` and renamed to ``{root}/T.bin``. Chunks may come in any order and more than
    once (a duplicate with the same bytes is ignored; different bytes refuse the transfer).
    Partial transfers survive a restart and are resumed by later chunks, or removed by
    :meth:`cleanup`.
    """

    def __init__(self, root: str | Path, max_bytes: int, *, max_chunks: int = 4096) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self._lock = threading.Lock()

    def _dir(self, transfer_id: str) -> Path:
        if not isinstance(transfer_id, str) or not TRANSFER_ID_RE.match(transfer_id):
            raise DownloadError(f"transfer id {transfer_id!r} must be 1-64 of [A-Za-z0-9_-]")
        return self.root / f"{transfer_id}.chunks"

    def add(self, transfer_id: str, index: int, total: int, data: bytes) -> Path | None:
        """Store one chunk; returns the assembled file once every chunk is in, else None."""
        self._dir(transfer_id)  # validates the id
        what = f"transfer {transfer_id}"
        if isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= self.max_chunks:
            raise DownloadError(f"{what}: chunk count {total!r} must be 1..{self.max_chunks}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < total:
            raise DownloadError(f"{what}: chunk index {index!r} outside 0..{total - 1}")
        with self._lock:
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
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        chunks.mkdir(mode=0o700, exist_ok=True)
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

    def cleanup(self, older_than_s: float) -> list[str]:
        """Remove transfers (partial or assembled) untouched for ``older_than_s``; returns their ids."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        cutoff = time.time() - older_than_s
        with self._lock:
            for entry in self.root.iterdir():
                stem, dot, suffix = entry.name.rpartition(".")
                if not dot or suffix not in ("chunks", "part", "bin") or not TRANSFER_ID_RE.match(stem):
                    continue
                try:
                    if entry.lstat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(stem)
        if removed:
            log.info("removed stale transfers from %s: %s", self.root, sorted(set(removed)))
        return sorted(set(removed))
