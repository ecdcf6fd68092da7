"""systemd integration without libsystemd: sd_notify, the watchdog interval, journald logging.

``sd_notify`` is a datagram to the unix socket named by ``$NOTIFY_SOCKET`` (``@name`` is an
abstract socket). With ``$JOURNAL_STREAM`` set, stderr goes to the journal: lines carry a
``<N>`` syslog priority prefix and no timestamp (journald adds its own).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping

from edge_runtime.redaction import RedactingFilter

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd with Type=notify."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when disabled or the socket is gone."""
        if self.address is None:
            return False
        message = "\n".join(lines)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def watchdog_timeout(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds (``$WATCHDOG_USEC``), or None when there is no watchdog
    or it is meant for another process (``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000


# -- logging ----------------------------------------------------------------------------------------

SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``: a syslog priority prefix journald understands, no timestamp."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        # every line of a multi-line message keeps the priority
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def setup_logging(level: str, environ: Mapping[str, str] | None = None) -> None:
    """Log to stderr: journald style under systemd (``$JOURNAL_STREAM``), else with timestamps."""
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(sys.stderr)
    if env.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())  # no credentials in any log line, whoever logs it
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("edge_runtime.paho").setLevel(max(logging.INFO, root.level))
