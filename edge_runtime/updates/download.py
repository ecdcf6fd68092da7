"""Downloading a model file: http or https (``file://`` only when the :class:`DownloadPolicy`
allows it: a setting meant for tests), into a path the caller chooses, via a ``.part`` file that
is fsynced and renamed into place.

It stops at a size limit and at one wall-clock deadline for the whole transfer (connect, headers,
redirects and every read): each read waits at most the time left, and a timer shuts the socket
down at the deadline, so a server that sends one byte a second cannot hold an update past
``timeout_s``. Redirects go to http(s) on the same host only (never https -> http), unless the
policy names other hosts. Errors are :class:`~edge_runtime.updates.protocol.UpdateError` with
step ``download`` or ``size``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
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

from edge_runtime.fsutil import fsync_dir
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


def _context(ca_file: str | Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise DownloadError(f"CA file {ca_file}: cannot load: {exc}") from exc


def _request(
    parts: urllib.parse.SplitResult, deadline: _Deadline, context: ssl.SSLContext | None
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    """GET ``parts`` within the deadline: the response (headers read) and its connection."""
    shown = redact_url(urllib.parse.urlunsplit(parts))
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=deadline.left(), context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=deadline.left())
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.connect()
        deadline.watch(conn.sock)
        conn.sock.settimeout(deadline.left())
        conn.request("GET", target, headers={"User-Agent": "edge-runtime", "Accept-Encoding": "identity"})
        return conn.getresponse(), conn
    except DownloadError:
        conn.close()
        raise
    except (http.client.HTTPException, OSError) as exc:  # timeouts and TLS errors included
        conn.close()
        if deadline.passed():
            raise deadline.error() from exc
        if isinstance(exc, TimeoutError):
            raise DownloadError(f"{shown}: no response within {deadline.timeout_s:g} s") from exc
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DownloadError(f"{shown}: {type(exc).__name__}: {reason}") from exc


def _redirect(
    parts: urllib.parse.SplitResult,
    origin: urllib.parse.SplitResult,
    location: str,
    code: int,
    policy: DownloadPolicy,
) -> urllib.parse.SplitResult:
    """Where a redirect leads, when the policy allows it."""
    new = urllib.parse.urlsplit(urllib.parse.urljoin(urllib.parse.urlunsplit(parts), location))
    scheme = new.scheme.lower()
    host = (new.hostname or "").lower()
    if scheme not in ("http", "https") or (parts.scheme.lower() == "https" and scheme == "http"):
        why = "another scheme"
    elif host != (origin.hostname or "").lower() and host not in policy.redirect_hosts:
        why = "another host (updates.redirect_hosts)"
    else:
        return new
    shown = redact_url(urllib.parse.urlunsplit(origin))
    raise DownloadError(f"{shown}: refusing redirect ({code}) to {why}: {redact_url(new.geturl())}")


def _open_http(
    parts: urllib.parse.SplitResult, deadline: _Deadline, ca_file: str | Path | None, policy: DownloadPolicy
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, int | None]:
    origin = parts
    context: ssl.SSLContext | None = None
    for _ in range(policy.max_redirects + 1):
        if parts.scheme.lower() == "https" and context is None:
            context = _context(ca_file)
        response, conn = _request(parts, deadline, context if parts.scheme.lower() == "https" else None)
        if response.status in REDIRECTS:
            location = response.getheader("Location") or ""
            response.close()
            conn.close()
            parts = _redirect(parts, origin, location, response.status, policy)
            continue
        if response.status != 200:
            response.close()
            conn.close()
            raise DownloadError(
                f"{redact_url(urllib.parse.urlunsplit(parts))}: HTTP {response.status} {response.reason}"
            )
        length = response.getheader("Content-Length")
        announced = int(length) if length is not None and length.isdigit() else None
        return response, conn, announced
    raise DownloadError(f"{deadline.shown}: more than {policy.max_redirects} redirects")


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
