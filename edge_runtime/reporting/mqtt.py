"""The MQTT link: paho-mqtt 2 with TLS, auth, a last will, jittered reconnects, and the outbox.

One network thread owns the paho client: it connects (with jittered exponential backoff between
attempts), runs paho's loop, and on every CONNACK publishes the retained ``online`` status and
resubscribes to the command topics. One forwarder thread drains the SQLite outbox in order
while connected, keeps at most ``max_inflight`` messages unacknowledged, and deletes each message
when the broker acknowledges it. paho retransmits what is in flight across reconnects; what
never left the outbox before a crash is sent after the restart. Delivery is at least once.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.config import MqttConfig
from edge_runtime.errors import ConfigError
from edge_runtime.reporting.outbox import Outbox, OutboxError
from edge_runtime.reporting.topics import Topics, status_payload
from edge_runtime.sources.base import Backoff
from edge_runtime.supervision import spawn

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes, Any, bool], None]
"""``(topic, payload, MQTT 5 properties or None, retained)`` of an inbound message."""
EventHandler = Callable[[str, str, dict[str, Any]], None]
MAX_QUEUED_DIRECT = 1024
"""Direct publishes (status, health, command replies) waiting in paho beyond the forwarder's."""
STALL_S = 60.0  # in-flight messages unacknowledged this long while connected are sent again


def _writes_stay_on_the_network_thread(client: Any, userdata: Any, sock: Any) -> None:
    """paho's socket-write callback: nothing to do, loop() on the network thread writes."""


def read_password(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            [f"mqtt.password_file: {str(path)!r}: cannot read: {exc.strerror or exc}"]
        ) from None
    return lines[0] if lines else ""


class MqttLink:
    """The device's connection to its broker."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        outbox: Outbox,
        *,
        version: str,
        pipelines: list[str],
        password_file: Path | None = None,
        tls_files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
        on_command: CommandHandler | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.cfg = cfg
        self.topics = topics
        self.outbox = outbox
        self.version = version
        self.pipelines = pipelines
        self.on_command = on_command
        self.on_event = on_event
        self.client_id = cfg.client_id or f"edge-runtime-{topics.device}"
        v5 = cfg.protocol == "5"
        self._v5 = v5
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else cfg.session_expiry_s == 0,
            reconnect_on_failure=False,
        )
        self.client.enable_logger(logging.getLogger("edge_runtime.paho"))
        # Without a loop thread of its own (the network thread drives loop()), paho writes a new
        # packet to the socket from the publishing thread itself, while loop() may be writing too:
        # two threads pop the send queue and send concurrently, so adjacent messages went out
        # swapped (seen at full rate: seq 1470 before 1469) and a partial write could interleave two
        # packets. With a socket-write callback paho only queues the packet and wakes select();
        # every write is then made by loop() on the network thread, in order.
        self.client.on_socket_register_write = _writes_stay_on_the_network_thread
        self.client.max_inflight_messages_set(cfg.max_inflight)
        # paho keeps unacknowledged QoS 1 messages in memory: bounded, so a flood of commands
        # whose replies the broker is slow to take cannot grow it (the outbox holds the rest)
        self.client.max_queued_messages_set(cfg.max_inflight + MAX_QUEUED_DIRECT)
        if cfg.username:
            password = read_password(password_file) if password_file is not None else None
            self.client.username_pw_set(cfg.username, password)
        ca, cert, key = tls_files
        self.tls = ca is not None
        if cfg.tls.required and not self.tls:
            raise ConfigError(["mqtt.tls.ca: '': tls.required is set but no CA is configured"])
        if ca is not None:
            self.client.tls_set(
                ca_certs=str(ca),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(cfg.tls.insecure)
        # Every callback paho makes runs inside one guard (nothing may propagate into paho's loop,
        # where it would kill the network thread and leave a QoS 1 message unacknowledged);
        # paho's own suppression is the second line.
        self.client.suppress_exceptions = True
        self.client.on_connect = self._guarded(self._on_connect)
        self.client.on_disconnect = self._guarded(self._on_disconnect)
        self.client.on_publish = self._guarded(self._on_publish)
        self.client.on_message = self._guarded(self._on_message)
        self.callback_errors = 0
        self.connected = threading.Event()
        self.reconnects = 0
        self.connects = 0
        self.last_error = ""
        self.published = 0
        self.rejected = 0
        self._backoff = Backoff(cfg.reconnect)
        self._stop = threading.Event()
        self._closing = False
        self._inflight: list[tuple[int, Any, float]] = []  # (outbox id, MQTTMessageInfo, sent at)
        self._last_id = 0
        self._last_ack = time.monotonic()
        self._forwarding_on = 0  # the connection (``connects``) the forwarder last published on
        self._resent: set[int] = set()  # outbox ids in flight across a reconnect: paho sends them again
        self._wake = threading.Event()  # a new message in the outbox, an acknowledgement, a stop
        outbox.watch(self._wake)
        self._net: threading.Thread | None = None
        self._fwd: threading.Thread | None = None
        self.last_outbox_error = ""

    # -- paho callbacks (network thread) -----------------------------------------------------------

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` that logs (with the traceback) and reports any exception instead of raising
        it into paho's network loop."""
        name = callback.__name__

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self.callback_errors += 1
                log.exception("mqtt: %s failed; the connection goes on", name)
                if self.on_event is not None:
                    try:
                        message = f"{name} failed: {type(exc).__name__}: {exc}"
                        self.on_event("mqtt.callback_error", message, {})
                    except Exception:
                        log.exception("mqtt: the event about %s could not be stored", name)

        guarded.__name__ = name
        return guarded

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._error(
                "mqtt.refused", f"broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason}"
            )
            return
        self.connects += 1
        self._backoff.reset()
        self.last_error = ""
        if self._v5:  # retained commands are never run; do not even have them sent
            from paho.mqtt.subscribeoptions import SubscribeOptions

            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            client.subscribe(self.topics.commands, options=options)
        else:
            client.subscribe(self.topics.commands, qos=1)
        client.publish(
            self.topics.status, status_payload("online", self.version, self.pipelines), qos=1, retain=True
        )
        self._last_ack = time.monotonic()
        self.connected.set()
        log.info("mqtt: connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.client_id)
        if self.on_event is not None:
            self.on_event("mqtt.connected", f"connected to {self.cfg.host}:{self.cfg.port}", {})

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self._closing:
            self._error("mqtt.disconnected", f"disconnected from {self.cfg.host}:{self.cfg.port}: {reason}")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # Called with paho's message lock held: take no lock of ours here. Acknowledgements are
        # read from the MQTTMessageInfo objects by the forwarder, which this wakes.
        self._wake.set()
        if reason is not None and getattr(reason, "is_failure", False):
            self.rejected += 1
            log.error("mqtt: broker rejected message %d: %s", mid, reason)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self.on_command is not None:
            self.on_command(
                message.topic,
                bytes(message.payload),
                getattr(message, "properties", None),
                bool(message.retain),
            )

    def _error(self, kind: str, message: str) -> None:
        repeated = message == self.last_error
        self.last_error = message
        log.log(logging.DEBUG if repeated else logging.WARNING, "mqtt: %s", message)
        if self.on_event is not None and not repeated:
            self.on_event(kind, message, {})

    # -- threads -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        running = lambda: not self._stop.is_set()  # noqa: E731
        self._net = spawn("mqtt-network", self._network, should_restart=running)
        self._fwd = spawn("mqtt-forwarder", self._forward, should_restart=running)

    def _connect_properties(self) -> Any:
        if not self._v5:
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        return props

    def _network(self) -> None:
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        from edge_runtime.recovery import tcp_probe, wait_for_peer

        probe, first = tcp_probe(self.cfg.host, self.cfg.port), True
        while not self._stop.is_set() and not self._closing:
            if not first:
                self.reconnects += 1
                if wait_for_peer(self._stop, self._backoff.next_delay(), probe):
                    self._backoff.reset()  # the broker's port accepts again: connect now
                if self._stop.is_set():
                    break
            first = False
            lost = status_payload("offline", self.version, self.pipelines, reason="lost")
            self.client.will_set(self.topics.status, lost, qos=1, retain=True)  # ts: this connection's
            try:
                if self._v5:
                    self.client.connect(
                        self.cfg.host,
                        self.cfg.port,
                        keepalive=self.cfg.keepalive_s,
                        clean_start=self.cfg.session_expiry_s == 0,
                        properties=self._connect_properties(),
                    )
                else:  # 3.1.1: the session is set by clean_session when the client is made
                    self.client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
            except ssl.SSLError as exc:
                self._error("mqtt.tls", f"TLS handshake with {self.cfg.host}:{self.cfg.port} failed: {exc}")
                continue
            except OSError as exc:
                reason = exc.strerror or str(exc)
                self._error(
                    "mqtt.unreachable", f"cannot connect to {self.cfg.host}:{self.cfg.port}: {reason}"
                )
                continue
            except Exception as exc:  # never a dead network thread: report, back off, try again
                log.exception("mqtt: connecting to %s:%d failed", self.cfg.host, self.cfg.port)
                self._error("mqtt.error", f"cannot connect to {self.cfg.host}:{self.cfg.port}: {exc}")
                continue
            while not self._stop.is_set():
                if self._closing and not self.connected.is_set():
                    break  # disconnected on purpose: do not loop on the closed socket
                try:
                    rc = self.client.loop(timeout=0.1)
                except (OSError, ssl.SSLError) as exc:
                    self._error(
                        "mqtt.disconnected", f"connection to {self.cfg.host}:{self.cfg.port} lost: {exc}"
                    )
                    break
                except Exception as exc:  # never a dead network thread: reconnect instead
                    log.exception("mqtt: the network loop failed; reconnecting")
                    self._error("mqtt.error", f"network loop failed: {type(exc).__name__}: {exc}")
                    with contextlib.suppress(Exception):
                        self.client.disconnect()
                    break
                if rc != MQTT_ERR_SUCCESS:
                    break
            self.connected.clear()

    def _forward(self) -> None:
        """Drain the outbox in order while connected; ack what the broker acknowledged. An outbox
        error (a full disk) is logged and retried: this thread never dies of it."""
        while not self._stop.is_set():
            try:
                self._forward_once()
            except OutboxError as exc:
                if str(exc) != self.last_outbox_error:
                    log.error("mqtt: outbox: %s (retrying)", exc)
                self.last_outbox_error = str(exc)
                self._stop.wait(0.5)

    def _forward_once(self) -> None:
        self._wake.clear()  # cleared before looking: a put or an ack after this wakes the wait below
        self._collect_acks()
        if not self.connected.wait(0.2):
            return
        if self._inflight and time.monotonic() - self._last_ack > STALL_S:
            log.warning(
                "mqtt: %d messages unacknowledged for %.0f s; sending again", len(self._inflight), STALL_S
            )
            self._inflight.clear()
            self._resent.clear()
            self._last_id = 0
            self._last_ack = time.monotonic()
        if self.connects != self._forwarding_on:  # a new connection since the last look
            self._forwarding_on = self.connects
            self._resent = {entry[0] for entry in self._inflight}
        if self._resent and any(entry[0] in self._resent for entry in self._inflight):
            # paho sends what was in flight again right after the CONNACK: nothing newer goes out
            # before the broker acknowledged it, so the backlog drains in order after a reconnect
            self._wake.wait(0.05)
            return
        self._resent.clear()
        room = self.cfg.max_inflight - len(self._inflight)
        if room <= 0:
            self._wake.wait(0.05)  # an acknowledgement makes room
            return
        batch = self.outbox.peek(limit=min(room, 200), after_id=self._last_id)
        if not batch:
            self._wake.wait(0.2)
            return
        for message in batch:
            if not self.connected.is_set():
                break
            info = self.client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            if info.rc != 0:
                break
            self._last_id = message.id
            self.published += 1
            self._inflight.append((message.id, info, time.monotonic()))

    def _collect_acks(self) -> None:
        """Delete from the outbox what the broker acknowledged (QoS 0: what was written)."""
        if not self._inflight:
            return
        done = [entry for entry in self._inflight if entry[1].is_published()]
        if not done:
            return
        ids = {entry[0] for entry in done}
        self.outbox.ack(ids)  # may raise (a full disk): then they stay in flight for the next try
        self._inflight = [entry for entry in self._inflight if entry[0] not in ids]
        self._last_ack = time.monotonic()

    # -- direct publishing (status, health: retained, not through the outbox) -----------------------

    def publish_now(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected.is_set():
            return False
        return bool(self.client.publish(topic, payload, qos=qos, retain=retain).rc == 0)

    def stats(self) -> dict[str, Any]:
        inflight = len(self._inflight)
        return {
            "connected": self.connected.is_set(),
            "broker": f"{self.cfg.host}:{self.cfg.port}",
            "tls": self.tls,
            "client_id": self.client_id,
            "connects": self.connects,
            "reconnects": max(0, self.connects - 1),
            "reconnect_attempts": self.reconnects,
            "callback_errors": self.callback_errors,
            "inflight": inflight,
            "published": self.published,
            "rejected": self.rejected,
            "last_error": self.last_error,
        }

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (while connected) or ``timeout``; returns whether it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.stats()["depth"] == 0:
                return True
            if not self.connected.is_set():
                return False
            time.sleep(0.02)
        return bool(self.outbox.stats()["depth"] == 0)

    def stop(self, state_payload: bytes | None = None, timeout: float = 2.0) -> None:
        """Publish the final status (retained) when connected and disconnect cleanly, so the
        broker does not send the last will."""
        self._closing = True
        deadline = time.monotonic() + timeout  # the whole stop, whatever the broker does
        if state_payload is not None and self.connected.is_set():
            info = self.client.publish(self.topics.status, state_payload, qos=1, retain=True)
            half = time.monotonic() + timeout / 2  # a frozen broker never acknowledges it
            while not info.is_published() and self.connected.is_set() and time.monotonic() < half:
                time.sleep(0.01)
        if self.connected.is_set():
            self.client.disconnect()
            while self.connected.is_set() and time.monotonic() < deadline - 0.1:
                time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        for thread in (self._fwd, self._net):
            if thread is not None:
                thread.join(max(0.05, deadline - time.monotonic()))
        self.outbox.unwatch(self._wake)
        try:
            self._collect_acks()
        except OutboxError as exc:
            log.error("mqtt: outbox: %s; unacknowledged messages will be sent again after a restart", exc)
