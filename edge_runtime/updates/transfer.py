"""Getting a model file onto the device: a download, or an MQTT chunked transfer.

:func:`download` fetches an http or https URL (``file://`` only when the :class:`DownloadPolicy`
allows it: a setting meant for tests) into a path the caller chooses, via a ``.part`` file that is
fsynced and renamed into place. It stops at a size limit and at one wall-clock deadline for the
whole transfer (connect, headers, redirects and every read): each read waits at most the time
left, and a timer shuts the socket down at the deadline, so a server that sends one byte a second
cannot hold an update past ``timeout_s``. Redirects go to http(s) on the same host only (never
https -> http), unless the policy names other hosts. :class:`ChunkAssembler` puts a file sent in
numbered chunks back together, under one disk quota, a bound on concurrent transfers and an
expiry. Errors are :class:`~edge_runtime.updates.protocol.UpdateError` with step ``download`` or
``size``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_runtime import fsutil
from edge_runtime.fsutil import fsync_dir
from edge_runtime.names import TRANSFER_ID_RE
from edge_runtime.updates.protocol import DownloadError, SizeLimitError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)

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


@dataclass(frozen=True)
class DownloadPolicy:
    """What a download may reach: schemes and redirect targets."""

    allow_file: bool = False
    """``file://`` URLs (tests and local tooling only: a broker user could read any file)."""
    redirect_hosts: tuple[str, ...] = ()
    """Hosts a redirect may lead to besides the URL's own host (lowercase names or addresses)."""
    max_redirects: int = 5


def check_url(url: str, policy: DownloadPolicy) -> urllib.parse.SplitResult:
    """The parsed URL, or :class:`DownloadError` when the policy does not allow it."""
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except (ValueError, TypeError) as exc:
        raise DownloadError(f"{shown}: malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    allowed = ("http", "https", "file") if policy.allow_file else ("http", "https")
    if scheme not in allowed:
        hint = "" if scheme != "file" else " (file:// is off: updates.allow_file_urls is for tests only)"
        raise DownloadError(
            f"{shown}: URL scheme {scheme!r} is not allowed; use {' or '.join(allowed)}{hint}"
        )
    if scheme != "file" and not parts.hostname:
        raise DownloadError(f"{shown}: no host in the URL")
    return parts


class _Deadline:
    """The wall-clock end of one download; shuts the connection's socket down when it passes."""

    def __init__(self, timeout_s: float, shown: str) -> None:
        self.timeout_s = timeout_s
        self.shown = shown
        self.end = time.monotonic() + timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.name = "download-deadline"
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def passed(self) -> bool:
        return time.monotonic() >= self.end

    def error(self, received: int | None = None) -> DownloadError:
        got = f" ({received} bytes received)" if received is not None else ""
        return DownloadError(f"{self.shown}: not complete within {self.timeout_s:g} s{got}")

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
        if self.passed():
            self._expire()

    def _expire(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # the base class's: wakes a blocked read, also under TLS
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _same_host(a: urllib.parse.SplitResult, b: urllib.parse.SplitResult) -> bool:
    return (a.hostname or "").lower() == (b.hostname or "").lower()


def _open_http(
    parts: urllib.parse.SplitResult, deadline: _Deadline, ca_file: str | Path | None, policy: DownloadPolicy
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, int | None]:
    origin = parts
    shown = deadline.shown
    context: ssl.SSLContext | None = None
    for _ in range(policy.max_redirects + 1):
        url = urllib.parse.urlunsplit(parts)
        conn: http.client.HTTPConnection
        if parts.scheme.lower() == "https":
            if context is None:
                try:
                    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
                except (OSError, ssl.SSLError) as exc:
                    raise DownloadError(f"CA file {ca_file}: cannot load: {exc}") from exc
            conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=deadline.left(), context=context
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=deadline.left())
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            conn.connect()
            deadline.watch(conn.sock)
            conn.sock.settimeout(deadline.left())
            conn.request("GET", target, headers={"User-Agent": "edge-runtime", "Accept-Encoding": "identity"})
            response = conn.getresponse()
        except DownloadError:
            conn.close()
            raise
        except TimeoutError as exc:
            conn.close()
            if deadline.passed():
                raise deadline.error() from exc
            raise DownloadError(f"{redact_url(url)}: no response within {deadline.timeout_s:g} s") from exc
        except ssl.SSLError as exc:
            conn.close()
            raise DownloadError(f"{redact_url(url)}: {exc}") from exc
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            if deadline.passed():
                raise deadline.error() from exc
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise DownloadError(f"{redact_url(url)}: {type(exc).__name__}: {reason}") from exc
        if response.status in REDIRECTS:
            location = response.getheader("Location") or ""
            response.close()
            conn.close()
            new = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
            scheme = new.scheme.lower()
            allowed_host = _same_host(new, origin) or (new.hostname or "").lower() in policy.redirect_hosts
            if scheme not in ("http", "https") or (parts.scheme == "https" and scheme == "http"):
                why = "another scheme"
            elif not allowed_host:
                why = "another host (updates.redirect_hosts)"
            else:
                parts = new
                continue
            raise DownloadError(
                f"{shown}: refusing redirect ({response.status}) to {why}: {redact_url(new.geturl())}"
            )
        if response.status != 200:
            response.close()
            conn.close()
            raise DownloadError(f"{redact_url(url)}: HTTP {response.status} {response.reason}")
        length = response.getheader("Content-Length")
        try:
            announced = int(length) if length is not None else None
        except ValueError:
            announced = None
        return response, conn, announced
    raise DownloadError(f"{shown}: more than {policy.max_redirects} redirects")


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
    policy: DownloadPolicy | None = None,
) -> Path:
    """Fetch ``url`` (http or https; file:// when ``policy`` allows) to ``dest`` via ``dest.part``.

    ``timeout_s`` bounds the whole transfer, wall-clock: connecting, redirects, headers and the
    body. The transfer stops as soon as more than ``max_bytes`` (or ``expected_size``) bytes
    arrive; fewer bytes than ``Content-Length`` or ``expected_size`` is a truncated download.
    ``dest`` is replaced only by a complete, fsynced file. https verifies the server against the
    system's CAs, or against ``ca_file`` only when given (a fleet's private CA).
    """
    dest = Path(dest)
    policy = policy or DownloadPolicy()
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    parts = check_url(url, policy)
    if expected_size is not None and expected_size > max_bytes:
        raise SizeLimitError(
            f"{shown}: announced size {expected_size} bytes exceeds the limit of {max_bytes}"
        )
    limit = max_bytes if expected_size is None else expected_size
    deadline = _Deadline(timeout_s, shown)
    conn: http.client.HTTPConnection | None = None
    part = dest.with_name(dest.name + ".part")
    received = 0
    try:
        source: IO[bytes]
        if parts.scheme.lower() == "file":
            source, announced = _open_file(url)
        else:
            source, conn, announced = _open_http(parts, deadline, ca_file, policy)
        with source:
            if announced is not None and announced > limit:
                what = "the limit" if expected_size is None else "the announced size"
                raise SizeLimitError(f"{shown}: {announced} bytes offered, more than {what} of {limit}")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                received = _copy(source, conn, out, limit, deadline)
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
    finally:
        deadline.cancel()
        if conn is not None:
            conn.close()
    log.info("downloaded %s to %s (%d bytes)", shown, dest, received)
    return dest


def _copy(
    source: IO[bytes],
    conn: http.client.HTTPConnection | None,
    out: IO[bytes],
    limit: int,
    deadline: _Deadline,
) -> int:
    received = 0
    shown = deadline.shown
    read1 = getattr(source, "read1", None)
    while True:
        left = deadline.left()
        try:
            if conn is not None and conn.sock is not None:
                conn.sock.settimeout(left)  # one read waits at most the time left
            block = read1(CHUNK) if read1 is not None else source.read(CHUNK)
        except (TimeoutError, http.client.HTTPException, OSError, ValueError) as exc:
            if conn is not None and deadline.passed():
                raise deadline.error(received) from exc
            raise DownloadError(f"{shown}: after {received} bytes: {type(exc).__name__}: {exc}") from exc
        if not block:
            if conn is not None and deadline.passed():  # the deadline shut the socket down
                raise deadline.error(received)
            return received
        received += len(block)
        if received > limit:
            raise SizeLimitError(f"{shown}: more than {limit} bytes; transfer stopped")
        out.write(block)
        if conn is not None and deadline.passed():
            raise deadline.error(received)


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
