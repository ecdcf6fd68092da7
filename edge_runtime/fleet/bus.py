"""The operator's MQTT connection (paho-mqtt 2, MQTT 5) and request/reply routing.

:class:`Bus` is the small interface the rest of the tool uses (subscribe with a callback,
publish and wait for the broker's acknowledgement); :class:`MqttBus` implements it with paho.
:class:`Requester` sends commands to ``{prefix}/{device}/cmd/{name}`` and routes what comes back
on ``{prefix}/{device}/reply/{id}`` to whoever waits for that id.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.fleet.common import FleetError, check_level, device_json, device_topic, split_topic

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
NO_MATCHING_SUBSCRIBERS = 0x10
SESSION_EXPIRY_S = 300  # replies sent while the tool reconnects wait for it this long


class Bus(Protocol):
    """What the fleet tool needs from an MQTT connection."""

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Subscribe (QoS 1) and wait for the broker's SUBACK; ``handler(topic, payload)`` runs on
        the network thread for every matching message, retained ones included, so it must be quick."""

    def unsubscribe(self, topic_filter: str) -> None: ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1 and wait until the broker acknowledged it; FleetError when refused.
        False when the broker said no client subscribes to the topic (MQTT 5 reason 0x10)."""


@dataclass(frozen=True)
class BrokerOptions:
    """Where and how to connect: the common options of every subcommand."""

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password_file: Path | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    tls: bool = False
    insecure: bool = False
    connect_timeout_s: float = 10.0

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca is not None or self.cert is not None

    def password(self) -> str | None:
        """The first line of the password file (never logged)."""
        if self.password_file is None:
            return None
        try:
            lines = self.password_file.read_text().splitlines()
        except OSError as exc:
            raise FleetError(f"{self.password_file}: cannot read the password file: {exc.strerror}") from exc
        return lines[0] if lines else ""


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPV6]:PORT``; port 1883 by default."""
    host, port = text, "1883"
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise FleetError(f"--broker {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise FleetError(f"--broker {text!r}: expected [ADDRESS]:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FleetError(f"--broker {text!r}: expected HOST or HOST:PORT with a port 1-65535")
    return host, int(port)


class MqttBus:
    """A connected paho client (MQTT 5, clean start) running its network loop in a thread.

    Subscriptions are remembered and made again after a reconnect. A context manager.
    """

    def __init__(self, options: BrokerOptions, *, client_id: str | None = None) -> None:
        self.options = options
        self.client_id = client_id or f"fleet-{socket.gethostname()[:32]}-{secrets.token_hex(4)}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._cond = threading.Condition()
        self._handlers: dict[str, Handler] = {}
        self._acks: dict[int, ReasonCode | None] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._connected = False
        self._refusal: str | None = None
        self._closed = False
        password = options.password()
        if options.username is not None or password is not None:
            self.client.username_pw_set(options.username or "", password)
        if options.uses_tls:
            try:
                self.client.tls_set(
                    ca_certs=str(options.ca) if options.ca else None,
                    certfile=str(options.cert) if options.cert else None,
                    keyfile=str(options.key) if options.key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as exc:
                raise FleetError(f"TLS setup failed (--ca/--cert/--key): {exc}") from exc
            self.client.tls_insecure_set(options.insecure)
        self.client.reconnect_delay_set(1, 5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    # -- paho callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._refusal = str(reason_code)
                self._cond.notify_all()
                return
            self._connected = True
            self._refusal = None
            resubscribe = list(self._handlers) if not flags.session_present else []
            self._cond.notify_all()
        for topic_filter in resubscribe:
            client.subscribe(topic_filter, qos=1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self._closed:
            log.warning(
                "disconnected from %s:%s (%s); reconnecting",
                self.options.host,
                self.options.port,
                reason_code,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            handlers = [h for f, h in self._handlers.items() if mqtt.topic_matches_sub(f, message.topic)]
        for handler in handlers:
            try:  # nothing a device sends may stop this network thread
                handler(message.topic, bytes(message.payload))
            except Exception:
                log.exception("a message on %r could not be handled", message.topic[:200])

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    # -- lifecycle

    def connect(self) -> MqttBus:
        """Connect and start the network thread; FleetError when the broker refuses or is silent."""
        where = f"{self.options.host}:{self.options.port}"
        timeout = self.options.connect_timeout_s
        try:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.SessionExpiryInterval = SESSION_EXPIRY_S
            self.client.connect(
                self.options.host,
                self.options.port,
                keepalive=30,
                clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=connect_props,
            )
        except ssl.SSLError as exc:
            raise FleetError(f"{where}: TLS handshake failed: {exc}") from exc
        except OSError as exc:
            raise FleetError(f"{where}: cannot connect to the broker: {exc.strerror or exc}") from exc
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connected or self._refusal is not None, timeout)
            connected, refusal = self._connected, self._refusal
        if not connected:
            self.close()
            if refusal is not None:
                raise FleetError(f"{where}: the broker refused the connection: {refusal}")
            raise FleetError(f"{where}: no CONNACK within {timeout:g} s (is it an MQTT broker? TLS?)")
        log.debug("connected to %s as %s", where, self.client_id)
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0  # nothing to resume: let the broker forget the session
        self.client.disconnect(properties=props)
        self.client.loop_stop()

    def __enter__(self) -> MqttBus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- Bus

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        timeout = self.options.connect_timeout_s
        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise FleetError(
                    f"{self.options.host}:{self.options.port}: no answer to {what} within {timeout:g} s"
                )

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        with self._cond:
            self._handlers[topic_filter] = handler
        rc, mid = self.client.subscribe(topic_filter, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise FleetError(f"subscribe to {topic_filter!r} failed: {mqtt.error_string(rc)}")
        self._wait(lambda: mid in self._subacks, f"the subscription to {topic_filter!r}")
        with self._cond:
            codes = self._subacks.pop(mid)
        refused = [c for c in codes if c.is_failure]
        if refused:
            with self._cond:
                self._handlers.pop(topic_filter, None)
            raise FleetError(f"the broker refused the subscription to {topic_filter!r}: {refused[0]}")

    def unsubscribe(self, topic_filter: str) -> None:
        with self._cond:
            self._handlers.pop(topic_filter, None)
        self.client.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise FleetError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        self._wait(lambda: info.mid in self._acks, f"the publish to {topic!r}")
        with self._cond:
            code = self._acks.pop(info.mid)
        if code is not None and code.is_failure:
            raise FleetError(f"the broker refused the publish to {topic!r}: {code}")
        return code is None or code.value != NO_MATCHING_SUBSCRIBERS


@dataclass(frozen=True)
class Reply:
    """One reply: the device, the request id and the JSON body."""

    device: str
    request_id: str
    body: dict[str, Any]
    received: float  # time.monotonic()


class Requester:
    """Commands to devices and their replies, over one ``{prefix}/+/reply/+`` subscription.

    Register a sink for ``(device, id)`` before sending, so no reply can be missed.
    """

    def __init__(self, bus: Bus, prefix: str) -> None:
        self.bus = bus
        self.prefix = check_level(prefix, "prefix")
        self._lock = threading.Lock()
        self._sinks: dict[tuple[str, str], queue.Queue[Reply]] = {}
        self._started = False

    def start(self) -> Requester:
        if not self._started:
            self.bus.subscribe(f"{self.prefix}/+/reply/+", self._on_reply)
            self._started = True
        return self

    def _on_reply(self, topic: str, payload: bytes) -> None:
        parts = split_topic(self.prefix, topic)
        if parts is None or len(parts[1]) != 2:
            return
        device, (_, request_id) = parts
        with self._lock:
            sink = self._sinks.get((device, request_id))
        if sink is None:
            return  # another operator's, or a late reply after we gave up
        body = device_json(topic, payload)
        if body is None:
            return
        sink.put(Reply(device, request_id, body, time.monotonic()))

    def register(self, device: str, request_id: str, sink: queue.Queue[Reply]) -> None:
        check_level(request_id, "request id")
        with self._lock:
            self._sinks[(device, request_id)] = sink

    def unregister(self, device: str, request_id: str) -> None:
        with self._lock:
            self._sinks.pop((device, request_id), None)

    def send(self, device: str, command: str, body: Mapping[str, Any]) -> None:
        """Publish one command (its body carries the ``id``) to ``{prefix}/{device}/cmd/{command}``;
        FleetError when the broker says nothing subscribes to it (the device is not connected)."""
        topic = device_topic(
            self.prefix, check_level(device, "device"), "cmd", check_level(command, "command")
        )
        if not self.bus.publish(topic, json.dumps(dict(body), separators=(",", ":")).encode()):
            raise FleetError(f"{device} is not listening: no client subscribes to {topic} (offline?)")

    def request(self, device: str, command: str, body: Mapping[str, Any], timeout_s: float) -> Reply | None:
        """Send one command and wait for its first reply (None after ``timeout_s``)."""
        request_id = str(body["id"])
        sink: queue.Queue[Reply] = queue.Queue()
        self.register(device, request_id, sink)
        try:
            self.send(device, command, body)
            try:
                return sink.get(timeout=timeout_s)
            except queue.Empty:
                return None
        finally:
            self.unregister(device, request_id)
