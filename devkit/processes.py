"""Helpers for tests that use real tools: socat pty pairs, ffmpeg streams, OpenCV video files.

A missing tool fails the test with the command that installs it: a skipped test would hide that
the suite did not run what it claims to.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def require_tool(binary: str, apt_package: str) -> str:
    """The path of ``binary``; fails the test (never skips) when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} not found: install it with: apt-get install -y {apt_package} (or run ./dev.sh setup)"
        )
    return path


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (returns True) or ``timeout`` s passed (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal ``proc`` and reap it (SIGKILL if it does not exit within 5 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class SocatPair:
    """Two linked ptys made by socat, reachable through the symlinks :attr:`a` and :attr:`b`.

    :meth:`kill` makes both ports vanish (socat removes its links), :meth:`start` brings them back
    under the same names, as a USB adapter that is unplugged and plugged in again. Unpacks as
    ``a, b = pair``.
    """

    def __init__(self, directory: Path) -> None:
        self.socat = require_tool("socat", "socat")
        self.a = directory / "ttyA"
        self.b = directory / "ttyB"
        self._log = directory / "socat.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __iter__(self) -> Iterator[Path]:
        return iter((self.a, self.b))

    def start(self, timeout: float = 10.0) -> None:
        """Start socat and wait until both links exist."""
        if self.proc is not None:
            raise RuntimeError("socat is already running")
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.socat,
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.a}",
                    f"pty,raw,echo=0,link={self.b}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        proc = self.proc
        if not wait_until(lambda: (self.a.exists() and self.b.exists()) or proc.poll() is not None, timeout):
            self.kill()
            pytest.fail(f"socat did not create {self.a} and {self.b} within {timeout} s")
        if proc.poll() is not None:
            self.proc = None
            pytest.fail(f"socat exited with {proc.returncode}: {self._log.read_text(errors='replace')}")

    def kill(self) -> None:
        """Stop socat; its links disappear."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)
        wait_until(lambda: not self.a.exists() and not self.b.exists(), 5.0)


@contextmanager
def socat_pair(tmp_path: Path) -> Iterator[SocatPair]:
    """A running :class:`SocatPair` in ``tmp_path``; socat is killed at the end."""
    pair = SocatPair(tmp_path)
    pair.start()
    try:
        yield pair
    finally:
        pair.kill()
