"""A real MQTT broker for tests: mosquitto on a free loopback port, a test PKI, a collecting client.

Every MQTT test of the project talks to a real mosquitto through this module:

- :class:`Mosquitto` runs ``mosquitto -c FILE`` in the foreground with a generated config
  (persistence, password file, ACL, TLS and mutual TLS); it can be stopped, killed, restarted on
  the same port, and paused (SIGSTOP) to play a hung broker.
- :class:`TestPki` makes a CA, server and client certificates (and an unrelated second CA) with
  ``cryptography``.
- :class:`Subscriber` is a paho-mqtt 2 client (MQTT 5 by default) that subscribes, collects every
  message thread-safely, reconnects and resubscribes on its own, and can keep a persistent session.
- :func:`publish` sends one message and returns the broker's PUBACK reason code.
- Fixtures: ``broker`` (anonymous, with persistence), ``make_broker`` (any options) and ``pki``.

A connection the broker refuses (CONNACK failure, TLS failure, no answer) raises
:class:`BrokerRefusedError`, an ``AssertionError`` that carries the reason code and the cause.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from realparts import free_port, require_tool, wait_until

__all__ = [
    "BrokerRefusedError",
    "MQTTv5",
    "MQTTv311",
    "Mosquitto",
    "Received",
    "Subscriber",
    "TestPki",
    "TlsFiles",
    "broker",
    "make_broker",
    "pki",
    "publish",
]

MQTTv5 = MQTTProtocolVersion.MQTTv5
MQTTv311 = MQTTProtocolVersion.MQTTv311

Payload = bytes | str | Mapping[str, Any] | list[Any] | None


# --------------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class TlsFiles:
    """What a client needs for TLS: the CA that verifies the broker, optionally its own cert + key."""

    ca_cert: Path
    certfile: Path | None = None
    keyfile: Path | None = None


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-runtime tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_pem(path: Path, data: bytes, mode: int) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    path.chmod(mode)
    return path


class _Ca:
    def __init__(self, common_name: str, not_before: dt.datetime, not_after: dt.datetime) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.not_before = not_before
        self.not_after = not_after

    def issue(
        self, common_name: str, *, server: bool, sans: Sequence[x509.GeneralName] = ()
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


class TestPki:
    """A throw-away PKI in ``directory``: PEM files whose paths are the attributes below.

    - ``ca_cert``/``ca_key``: the test CA (self-signed).
    - ``server_cert``/``server_key``: signed by the CA, SAN ``127.0.0.1`` (IP) and ``localhost`` (DNS).
    - ``client_cert``/``client_key``: a client certificate signed by the CA (CN ``client_name``).
    - ``other_ca_cert``/``other_ca_key``: a second, unrelated CA, for "wrong CA" tests, and
      ``other_client_cert``/``other_client_key``, a client certificate signed by it.

    Keys are EC P-256, unencrypted PKCS#8, file mode 0600.
    """

    __test__ = False  # not a test class, though its name starts with "Test"

    def __init__(self, directory: Path, *, client_name: str = "edge-test-client", days: int = 30) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.client_name = client_name
        now = dt.datetime.now(dt.timezone.utc)
        not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)
        ca = _Ca("edge-runtime test CA", not_before, not_after)
        other = _Ca("unrelated test CA", not_before, not_after)
        server_key, server_cert = ca.issue(
            "localhost",
            server=True,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        client_key, client_cert = ca.issue(client_name, server=False)
        other_client_key, other_client_cert = other.issue(client_name, server=False)

        self.ca_cert = self._cert("ca.crt", ca.cert)
        self.ca_key = self._key("ca.key", ca.key)
        self.server_cert = self._cert("server.crt", server_cert)
        self.server_key = self._key("server.key", server_key)
        self.client_cert = self._cert("client.crt", client_cert)
        self.client_key = self._key("client.key", client_key)
        self.other_ca_cert = self._cert("other-ca.crt", other.cert)
        self.other_ca_key = self._key("other-ca.key", other.key)
        self.other_client_cert = self._cert("other-client.crt", other_client_cert)
        self.other_client_key = self._key("other-client.key", other_client_key)

    def _cert(self, name: str, cert: x509.Certificate) -> Path:
        return _write_pem(self.directory / name, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _key(self, name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _write_pem(self.directory / name, data, 0o600)

    def tls(self, *, client_cert: bool = False) -> TlsFiles:
        """Client TLS settings that trust the test CA (and present the client certificate)."""
        if client_cert:
            return TlsFiles(self.ca_cert, self.client_cert, self.client_key)
        return TlsFiles(self.ca_cert)

    def wrong_ca_tls(self) -> TlsFiles:
        """Client TLS settings that trust only the unrelated CA: verifying the broker must fail."""
        return TlsFiles(self.other_ca_cert)


# ------------------------------------------------------------------------------------------ broker


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


# ------------------------------------------------------------------------------------------ client


class BrokerRefusedError(AssertionError):
    """The broker refused, or never answered, a connection, subscription or publish.

    ``reason_code`` is the CONNACK/SUBACK reason code when there was one (compare it with an int,
    e.g. ``== 0x86``, or a name, e.g. ``== "Bad user name or password"``); otherwise None, and
    ``error`` says what happened instead (TLS verification, connection refused, timeout).
    """

    def __init__(self, message: str, reason_code: ReasonCode | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.error = message


@dataclass(frozen=True)
class Received:
    """One message as the subscriber got it; ``time`` is ``time.time()`` at arrival."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...]
    response_topic: str | None
    correlation_data: bytes | None
    content_type: str | None
    time: float
    monotonic: float

    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def user_property_dict(self) -> dict[str, str]:
        return dict(self.user_properties)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _encode(payload: Payload) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


class Subscriber:
    """A paho-mqtt 2 client that subscribes to ``topics`` at ``qos`` and collects every message.

    Connects (and waits for the SUBACK) on construction unless ``connect=False``; raises
    :class:`BrokerRefusedError` if the broker refuses or TLS fails. Reconnects by itself (paho's loop,
    1-2 s backoff) and subscribes again after every connect. ``persistent=True`` keeps the session
    on the broker across disconnects (MQTT 5: clean start off + ``session_expiry`` s; MQTT 3.1.1:
    clean session off) and needs a fixed ``client_id``. ``topics=()`` makes a plain client
    (see :meth:`publish`). Thread-safe; a context manager (:meth:`close` on exit).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: str | Sequence[str] = (),
        *,
        qos: int = 1,
        client_id: str | None = None,
        persistent: bool = False,
        session_expiry: int = 3600,
        protocol: MQTTProtocolVersion = MQTTv5,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        keepalive: int = 10,
        connect: bool = True,
        timeout: float = 10.0,
    ) -> None:
        if persistent and client_id is None:
            raise ValueError("a persistent session needs a fixed client_id")
        self.host = host
        self.port = port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self.client_id = client_id if client_id is not None else f"test-{uuid.uuid4().hex[:10]}"
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.protocol = protocol
        self.keepalive = keepalive
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._acks: dict[int, ReasonCode] = {}
        self._errors: deque[str] = deque(maxlen=50)
        self._connected = False
        self._connections = 0
        self._subscribed_on = 0
        self._failure: BrokerRefusedError | None = None
        self._started = False
        self._closed = False
        self.session_present: bool | None = None
        self.granted: list[ReasonCode] = []

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if protocol == MQTTv5 else not persistent,
            protocol=protocol,
        )
        client.reconnect_delay_set(1, 2)
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            client.tls_set(
                ca_certs=str(tls.ca_cert),
                certfile=None if tls.certfile is None else str(tls.certfile),
                keyfile=None if tls.keyfile is None else str(tls.keyfile),
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        self.client = client
        if connect:
            self.start(timeout)

    # -- paho callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._cond:
                if self._connections == 0:
                    self._failure = BrokerRefusedError(
                        f"{self.host}:{self.port} refused {self.client_id!r}: CONNACK {reason_code} "
                        f"(0x{reason_code.value:02x})",
                        reason_code,
                    )
                self._errors.append(f"CONNACK {reason_code}")
                self._cond.notify_all()
            return
        with self._cond:
            self._connected = True
            self._connections += 1
            self.session_present = flags.session_present
            if not self.topics:
                self._subscribed_on = self._connections
            self._cond.notify_all()
        if self.topics:
            client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self.granted = list(reason_codes)
            refused = [(t, rc) for t, rc in zip(self.topics, reason_codes, strict=False) if rc.is_failure]
            if refused:
                self._failure = BrokerRefusedError(
                    f"{self.host}:{self.port} refused subscriptions of {self.client_id!r}: "
                    + ", ".join(f"{t} -> {rc} (0x{rc.value:02x})" for t, rc in refused),
                    refused[0][1],
                )
            else:
                self._subscribed_on = self._connections
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if self._connections == 0 and self._failure is None:
                errors = "; ".join(self._errors) or "no error logged"
                self._failure = BrokerRefusedError(
                    f"{self.host}:{self.port} closed the connection of {self.client_id!r} before CONNACK "
                    f"({reason_code}): {errors}"
                )
            self._connected = False
            self._cond.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        received = Received(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            user_properties=tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", [])),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
            content_type=getattr(props, "ContentType", None),
            time=time.time(),
            monotonic=time.monotonic(),
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING) or "failed" in buf:
            with self._cond:
                self._errors.append(buf)

    # -- lifecycle

    def start(self, timeout: float = 10.0) -> None:
        """Connect, wait for the CONNACK, start paho's network thread, wait for the SUBACK.

        The first connection is driven in this thread (``loop()``), so a refusal is reported at
        once instead of being retried by paho's reconnect loop.
        """
        if self._started:
            raise RuntimeError("Subscriber.start() called twice")
        self._started = True
        deadline = time.monotonic() + timeout
        connect_kwargs: dict[str, Any] = {}
        if self.protocol == MQTTv5:
            connect_kwargs["clean_start"] = not self.persistent
            if self.persistent:
                props = _properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                connect_kwargs["properties"] = props
        try:
            self.client.connect(self.host, self.port, self.keepalive, **connect_kwargs)
        except OSError as exc:  # ssl.SSLError included
            self._closed = True
            raise BrokerRefusedError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        while True:
            with self._cond:
                if self._failure is not None or self._connections > 0:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            rc = self.client.loop(min(0.1, remaining))
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                with self._cond:
                    if self._failure is None and self._connections == 0:
                        errors = "; ".join(self._errors) or "no error logged"
                        self._failure = BrokerRefusedError(
                            f"{self.host}:{self.port}: connection of {self.client_id!r} lost before "
                            f"CONNACK ({mqtt.error_string(rc)}): {errors}"
                        )
        with self._cond:
            failure, connected = self._failure, self._connections > 0
        if failure is None and connected:
            self.client.loop_start()
            with self._cond:
                self._cond.wait_for(
                    lambda: self._failure is not None or self._is_ready(0),
                    max(0.0, deadline - time.monotonic()),
                )
                failure, ready = self._failure, self._is_ready(0)
            if failure is None and ready:
                return
        self.close()
        if failure is not None:
            raise failure
        raise BrokerRefusedError(
            f"{self.host}:{self.port}: {self.client_id!r} not connected and subscribed within {timeout} s: "
            + ("; ".join(self.errors()) or ("no SUBACK" if connected else "no CONNACK"))
        )

    def close(self) -> None:
        """Disconnect normally (a persistent session stays on the broker) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self.client.disconnect()
        self.client.loop_stop()  # lets the thread send the DISCONNECT; a no-op if never started

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- state

    def _is_ready(self, after: int) -> bool:
        return self._connected and self._connections > after and self._subscribed_on == self._connections

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def connections(self) -> int:
        """How many successful CONNACKs this client got (1 + reconnects)."""
        with self._cond:
            return self._connections

    def wait_ready(self, timeout: float = 10.0, *, after: int = 0) -> bool:
        """Whether it is connected and subscribed on a connection later than the ``after``-th.

        After a broker restart: ``n = sub.connections; broker.restart(); sub.wait_ready(after=n)``.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._is_ready(after), timeout)

    def errors(self) -> list[str]:
        """paho's error log lines and refused CONNACKs (the cause of a failed reconnect)."""
        with self._cond:
            return list(self._errors)

    # -- messages

    def messages(self, topic_filter: str = "#") -> list[Received]:
        """The messages so far whose topic matches ``topic_filter`` (MQTT wildcards), in order."""
        with self._cond:
            return [m for m in self._messages if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def payloads(self, topic_filter: str = "#") -> list[bytes]:
        return [m.payload for m in self.messages(topic_filter)]

    def json(self, topic_filter: str = "#") -> list[dict[str, Any]]:
        """The JSON object payloads of :meth:`messages` (an error names a payload that is not one)."""
        out = []
        for message in self.messages(topic_filter):
            try:
                value = message.json()
            except ValueError as exc:
                raise AssertionError(f"{message.topic}: payload is not JSON: {message.payload!r}") from exc
            if not isinstance(value, dict):
                raise AssertionError(f"{message.topic}: payload is not a JSON object: {message.payload!r}")
            out.append(value)
        return out

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        """Whether ``predicate(all messages so far)`` becomes true within ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(list(self._messages)), timeout)

    def expect(self, topic_filter: str = "#", count: int = 1, timeout: float = 10.0) -> list[Received]:
        """Wait for ``count`` messages matching ``topic_filter`` and return them all (at least
        ``count``); raises AssertionError listing what did arrive."""

        def enough(messages: list[Received]) -> bool:
            return sum(mqtt.topic_matches_sub(topic_filter, m.topic) for m in messages) >= count

        if not self.wait_for(enough, timeout):
            seen = [(m.topic, m.payload[:80]) for m in self.messages()]
            raise AssertionError(
                f"{len(self.messages(topic_filter))} of {count} messages on {topic_filter!r} "
                f"within {timeout} s; all received: {seen}"
            )
        return self.messages(topic_filter)

    # -- publishing on this connection

    def publish(
        self,
        topic: str,
        payload: Payload = b"",
        qos: int = 1,
        retain: bool = False,
        *,
        user_properties: Sequence[tuple[str, str]] = (),
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
        timeout: float = 10.0,
    ) -> ReasonCode:
        """Publish and wait until the broker took it: the PUBACK reason code for QoS 1 (MQTT 5:
        0x10 "No matching subscribers" and 0x87 "Not authorized" are possible; MQTT 3.1.1 always
        says Success), Success once sent for QoS 0. A dict or list payload is sent as JSON."""
        properties = None
        if self.protocol == MQTTv5 and (
            user_properties or response_topic or correlation_data or content_type
        ):
            properties = _properties(PacketTypes.PUBLISH)
            if user_properties:
                properties.UserProperty = list(user_properties)
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
            if content_type is not None:
                properties.ContentType = content_type
        info = self.client.publish(topic, _encode(payload), qos, retain, properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):  # NO_CONN: queued
            raise BrokerRefusedError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._acks, timeout):
                raise BrokerRefusedError(
                    f"no PUBACK for {topic!r} from {self.host}:{self.port} within {timeout} s"
                )
            return self._acks.pop(info.mid)


def publish(
    host: str,
    port: int,
    topic: str,
    payload: Payload = b"",
    qos: int = 1,
    retain: bool = False,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: TlsFiles | None = None,
    protocol: MQTTProtocolVersion = MQTTv5,
    client_id: str | None = None,
    user_properties: Sequence[tuple[str, str]] = (),
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 10.0,
) -> ReasonCode:
    """Connect, publish one message, wait for the PUBACK, disconnect; returns its reason code.

    Raises :class:`BrokerRefusedError` when the connection is refused or nothing answers in ``timeout`` s.
    """
    with Subscriber(
        host,
        port,
        (),
        client_id=client_id,
        protocol=protocol,
        username=username,
        password=password,
        tls=tls,
        timeout=timeout,
    ) as client:
        return client.publish(
            topic,
            payload,
            qos,
            retain,
            user_properties=user_properties,
            response_topic=response_topic,
            correlation_data=correlation_data,
            content_type=content_type,
            timeout=timeout,
        )


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running anonymous mosquitto with persistence, stopped after the test."""
    with Mosquitto(tmp_path, persistence=True) as running:
        yield running


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """A factory ``make_broker(**Mosquitto options) -> started Mosquitto``; all stopped afterwards."""
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        options.setdefault("name", f"mosquitto{len(brokers)}" if brokers else "mosquitto")
        started = Mosquitto(tmp_path, **options)
        brokers.append(started)
        started.start()
        return started

    yield make
    for started in reversed(brokers):
        started.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """One :class:`TestPki` for the session (read-only: do not modify its files)."""
    return TestPki(tmp_path_factory.mktemp("pki"))
