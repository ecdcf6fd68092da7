"""A real MQTT broker for tests: mosquitto on a free loopback port, and its pytest fixtures.

Every MQTT test of the project talks to a real mosquitto through this module:

- :class:`Mosquitto` runs ``mosquitto -c FILE`` in the foreground with a generated config
  (persistence, password file, ACL, TLS and mutual TLS); it can be stopped, killed, restarted on
  the same port, and paused (SIGSTOP) to play a hung broker.
- The tests' fixtures ``broker``, ``make_broker`` and ``pki`` (tests/conftest.py) are built on it.

The test PKI is in :mod:`pki`, the paho clients (``Subscriber``, ``publish``) in :mod:`mqtt_client`
and what they share (``Received``, ``BrokerRefusedError``, ...) in :mod:`mqtt_types`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from devkit.mqtt_client import Subscriber, publish
from devkit.mqtt_types import Payload
from devkit.pki import TestPki, TlsFiles
from devkit.processes import free_port, require_tool, wait_until

__all__ = ["Mosquitto", "make_password_file"]


def make_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file at ``path`` with ``users`` (name -> password), by mosquitto_passwd."""
    if not users:
        raise ValueError("make_password_file needs at least one user")
    tool = require_tool("mosquitto_passwd", "mosquitto")
    path.unlink(missing_ok=True)
    for index, (user, password) in enumerate(users.items()):
        create = ["-c"] if index == 0 else []
        result = subprocess.run(
            [tool, "-b", *create, str(path), user, password],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"mosquitto_passwd failed for user {user!r}: {result.stderr.strip()}")
    path.chmod(0o600)
    return path


class Mosquitto:
    """``mosquitto -c FILE`` on ``127.0.0.1`` and a free port; its files live in ``directory/name``.

    Options: ``persistence`` (sessions, subscriptions, queued QoS 1/2 and retained messages survive
    :meth:`restart`; saved every second and on a clean :meth:`stop`), ``users`` (name -> password,
    written with mosquitto_passwd; then anonymous clients are refused) or an existing
    ``password_file``, ``acl`` (the text of an ACL file), ``tls`` (a :class:`TestPki`: TLS-only
    listener with its server certificate) with ``require_certificate`` (mutual TLS),
    ``allow_anonymous`` (default: only when no password file), ``extra_config`` (appended verbatim).
    Everything is logged (``log_type all``) to a file: :meth:`log_text`, :meth:`wait_for_log`.

    A context manager: starts on enter, stops on exit.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "mosquitto",
        port: int | None = None,
        persistence: bool = False,
        users: Mapping[str, str] | None = None,
        password_file: Path | None = None,
        acl: str | None = None,
        tls: TestPki | None = None,
        require_certificate: bool = False,
        allow_anonymous: bool | None = None,
        extra_config: str = "",
    ) -> None:
        if users and password_file is not None:
            raise ValueError("give users or password_file, not both")
        if require_certificate and tls is None:
            raise ValueError("require_certificate needs tls")
        self.binary = require_tool("mosquitto", "mosquitto")
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.stderr_path = self.directory / "mosquitto.stderr"
        self.persistence_dir = self.directory / "db"
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.persistence = persistence
        self.password_file = make_password_file(self.directory / "passwd", users) if users else password_file
        self.acl_file: Path | None = None
        if acl is not None:
            self.acl_file = self.directory / "acl"
            self.acl_file.write_text(acl if acl.endswith("\n") else acl + "\n")
        self.tls = tls
        self.require_certificate = require_certificate
        self.allow_anonymous = self.password_file is None if allow_anonymous is None else allow_anonymous
        self.extra_config = extra_config
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started_once = False

    # -- config and files

    def config_text(self) -> str:
        """The mosquitto configuration for the current port and options."""
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
        ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence:
            self.persistence_dir.mkdir(exist_ok=True)
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",  # mosquitto wants the trailing slash
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += [
            f"log_dest file {self.log_path}",
            "log_type all",
            "log_timestamp true",
            "log_timestamp_format %H:%M:%S",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # as root, mosquitto 2 otherwise drops to "mosquitto": no access to tmp
        if self.extra_config:
            lines.append(self.extra_config.strip())
        return "\n".join(lines) + "\n"

    def log_text(self) -> str:
        """Everything mosquitto logged (all starts), then whatever it printed on stderr."""
        parts = [p.read_text(errors="replace") for p in (self.log_path, self.stderr_path) if p.exists()]
        return "".join(parts)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Whether ``text`` appears in the log within ``timeout`` s (e.g. a client id connecting)."""
        return wait_until(lambda: text in self.log_text(), timeout, 0.05)

    # -- process

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _sizes(self) -> tuple[int, int]:
        def size(path: Path) -> int:
            return path.stat().st_size if path.exists() else 0

        return size(self.log_path), size(self.stderr_path)

    def _output_since(self, sizes: tuple[int, int]) -> str:
        out = []
        for path, size in zip((self.log_path, self.stderr_path), sizes, strict=True):
            if path.exists():
                with path.open("rb") as file:
                    file.seek(size)
                    out.append(file.read().decode(errors="replace"))
        return "".join(out)

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> None:
        """Start mosquitto and wait until it listens; fails the test with its log if it exits."""
        if self._proc is not None:
            raise RuntimeError(f"mosquitto is already running on port {self.port}")
        for _attempt in range(5):
            self.config_path.write_text(self.config_text())
            sizes = self._sizes()
            with self.stderr_path.open("ab") as err:
                proc = subprocess.Popen(
                    [self.binary, "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                )

            def up(proc: subprocess.Popen[bytes] = proc, sizes: tuple[int, int] = sizes) -> bool:
                if proc.poll() is not None:
                    return True
                return " running" in self._output_since(sizes) and self._accepts_tcp()

            wait_until(up, timeout, 0.02)
            if proc.poll() is None and self._accepts_tcp():
                self._proc = proc
                self._paused = False
                self._started_once = True
                return
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            output = self._output_since(sizes)
            if "Address already in use" in output and not self._fixed_port and not self._started_once:
                self.port = free_port()  # lost the race for the free port: take another one
                continue
            pytest.fail(
                f"mosquitto did not start on {self.host}:{self.port} within {timeout} s "
                f"(exit code {proc.returncode}):\n{output}"
            )
        pytest.fail(f"mosquitto found no free port after 5 attempts:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (mosquitto saves its persistence database on a clean exit)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash. With persistence, only what the last autosave (1 s) wrote survives."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            if self._paused:
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False
        self.returncode = proc.returncode

    def restart(self, *, hard: bool = False, timeout: float = 15.0) -> None:
        """Stop (or kill, when ``hard``) and start again on the same port with the same config."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP connections but nothing answers (a hung broker)."""
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<Mosquitto {self.host}:{self.port} {state} dir={self.directory}>"

    # -- clients of this broker

    def client_tls(self) -> TlsFiles | None:
        """The TLS settings a client of this broker needs (client certificate when required)."""
        if self.tls is None:
            return None
        return self.tls.tls(client_cert=self.require_certificate)

    def subscriber(self, topics: str | Sequence[str] = (), **options: Any) -> Subscriber:
        """A connected :class:`Subscriber` of this broker (TLS settings filled in by default)."""
        options.setdefault("tls", self.client_tls())
        return Subscriber(self.host, self.port, topics, **options)

    def publish(self, topic: str, payload: Payload = b"", **options: Any) -> ReasonCode:
        """:func:`publish` to this broker (TLS settings filled in by default)."""
        options.setdefault("tls", self.client_tls())
        return publish(self.host, self.port, topic, payload, **options)
