"""paho-mqtt 2 clients for tests: a collecting :class:`Subscriber` and a one-shot :func:`publish`.

- :class:`Subscriber` (MQTT 5 by default) subscribes, collects every message thread-safely,
  reconnects and resubscribes on its own, and can keep a persistent session.
- :func:`publish` sends one message and returns the broker's PUBACK reason code.

A refused connection raises :class:`mqtt_types.BrokerRefusedError`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devkit.mqtt_types import BrokerRefusedError, MQTTv5, Payload, Received
from devkit.pki import TlsFiles

__all__ = ["Subscriber", "publish"]


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

    def take(self, topic_filter: str = "#") -> list[Received]:
        """:meth:`messages` matching ``topic_filter``, forgotten once returned (for long runs)."""
        with self._cond:
            mine = [m for m in self._messages if mqtt.topic_matches_sub(topic_filter, m.topic)]
            self._messages = [m for m in self._messages if not mqtt.topic_matches_sub(topic_filter, m.topic)]
            return mine

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
