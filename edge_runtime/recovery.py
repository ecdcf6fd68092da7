"""Recovery as fast as the fault: waiting out a reconnect delay while watching for the peer.

A reconnect delay grows with each failure (:class:`~edge_runtime.sources.base.Backoff`), but the
wait is cut short the moment the peer is *seen again*: a probe that failed during the wait
succeeds (a device node or file that reappears, a TCP port that accepts again). A probe that
succeeds from the start (the peer is there but refuses us) never cuts the wait, so a broker that
rejects our credentials is not hammered. Probes are cheap and never raise.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

PROBE_EVERY_S = 0.25
"""How often a probe runs during a reconnect wait."""

Probe = Callable[[], bool]


def path_probe(path: str) -> Probe:
    """Seen when ``path`` exists (a /dev node, a file)."""
    return lambda: os.path.exists(path)


def tcp_probe(host: str, port: int, timeout: float = 0.25) -> Probe:
    """Seen when ``host:port`` accepts a TCP connection (closed again at once)."""

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    return probe


def wait_for_peer(
    stop: threading.Event,
    delay: float,
    probe: Probe | None,
    every: float = PROBE_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait up to ``delay`` s (or until ``stop`` is set); returns True when cut short because
    ``probe`` failed and then succeeded during the wait (the caller then resets its backoff)."""
    deadline = clock() + delay
    if probe is None:
        stop.wait(max(0.0, delay))
        return False
    missing = False
    while not stop.is_set():
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        seen = probe()
        if seen and missing:
            return True
        missing = missing or not seen
        stop.wait(min(every, max(0.0, deadline - clock())))
    return False


def why_unopenable(target: str | int, timeout: float = 1.0) -> str:
    """A likely cause when a camera or stream cannot be opened (OpenCV does not say): the device
    node's or file's state, or what a TCP connection to the stream's host says."""
    if isinstance(target, int) or target.strip().isdigit():
        target = f"/dev/video{int(target)}"
    if target.startswith("/"):
        return _why_path(target)
    return _why_stream(target, timeout)


def _why_path(path: str) -> str:
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.access(path, os.R_OK):
        return f"no permission to read {path}"
    return f"{path} is there and readable, but the backend could not use it (busy? no capture device?)"


def _why_stream(url: str, timeout: float) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        default = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}.get(parts.scheme)
        host, port = parts.hostname, parts.port or default
    except ValueError as exc:
        return f"the address does not parse ({exc})"
    if not host or port is None:
        return "OpenCV gave no reason"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            why = f"{host}:{port} accepts connections, yet no stream opened (wrong path, format, login?)"
    except socket.gaierror as exc:
        why = f"cannot resolve {host}: {exc.strerror or exc}"
    except TimeoutError:
        why = f"{host}:{port} does not answer (timed out after {timeout:g} s)"
    except OSError as exc:
        why = f"{host}:{port}: {exc.strerror or exc}"
    return why
