"""The reporting side of the daemon: outbox, MQTT link, command dispatch and events, assembled.

Results and events are written to the outbox first (with each pipeline's ``seq`` in the same
transaction), then forwarded by the MQTT link; status and health are published directly
(retained). When MQTT is disabled, results go to the other sinks only and nothing is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.config import Config
from edge_runtime.redaction import redact_text, redact_tree
from edge_runtime.reporting.commands import CommandDispatcher
from edge_runtime.reporting.diskbudget import payload_bound
from edge_runtime.reporting.outbox import Outbox, OutboxError, PutItem, open_outbox
from edge_runtime.reporting.seqstate import SeqReservations, salvage
from edge_runtime.reporting.topics import Topics, dumps, event_payload, status_payload

log = logging.getLogger(__name__)


class Reporter:
    """Owns the outbox, the MQTT link and the command dispatcher of one daemon."""

    def __init__(self, config: Config, version: str, pipelines: list[str]) -> None:
        self.config = config
        self.version = version
        self.pipelines = pipelines
        self.topics = Topics(config.mqtt.prefix, config.device.id)
        self.enabled = config.mqtt.enabled
        self.outbox: Outbox | None = None
        self.link: Any = None
        self.store_errors = 0
        self.last_store_error = ""
        self._final_outbox: dict[str, Any] | None = None
        self._last_store_log = float("-inf")
        self._logged_errors = 0
        self._lock = threading.Lock()
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # e.g. the HTTP stream
        self.dispatcher = CommandDispatcher(
            self.topics, self._publish_reply, self.event, max_bytes=config.mqtt.max_command_bytes
        )
        if not self.enabled:
            return
        state = config.device.state_dir
        self.outbox = open_outbox(
            state / "outbox.sqlite",
            max_bytes=payload_bound(config.outbox.max_bytes),
            max_count=config.outbox.max_count,
            reserve_bytes=config.outbox.reserve_bytes,
        )
        self.seq_file = SeqReservations(state / "seq.json")
        self._seq_floor: dict[str, int] = {}
        self.link = self._make_link(config)
        moved = getattr(self.outbox, "corrupt_moved_to", None)
        if moved is not None:
            self._recover(moved)

    def _recover(self, moved: Path) -> None:
        """After a corrupt outbox was moved aside: store its intact messages again (they are
        delivered like any other) and continue each pipeline's ``seq`` above everything it or the
        reservation file knew."""
        assert self.outbox is not None
        found = salvage(moved)
        stored = 0
        for start in range(0, len(found.rows), 500):
            batch = found.rows[start : start + 500]
            try:
                self.outbox.put_many([(t, p, q, r, None) for t, p, q, r in batch])
                stored += len(batch)
            except OutboxError as exc:
                log.error("salvaged messages from %s not stored: %s", moved, exc)
                break
        names = set(found.seqs) | set(self.pipelines)
        for name in names:
            self._seq_floor[name] = max(found.seqs.get(name, 0), self.seq_file.reserved(name))
        if not found.is_database:
            lost = f"the file is not a readable database ({found.error}): how many it held is unknown"
        elif found.unreadable is not None:
            lost = f"{found.unreadable} unreadable"
        else:
            lost = f"at most {found.lost_at_most} unreadable ({found.error})"
        message = (
            f"the outbox was unreadable and was moved to {moved}; a new one was started; "
            f"{stored} intact messages salvaged and queued again, {lost}; seq continues above "
            + (", ".join(f"{k}={v}" for k, v in sorted(self._seq_floor.items())) or "0")
        )
        self.event(
            "outbox.corrupt",
            message,
            {
                "moved_to": str(moved),
                "salvaged": stored,
                "lost": found.unreadable,
                "lost_at_most": found.lost_at_most,
                "seq_floor": self._seq_floor,
            },
        )

    def _make_link(self, config: Config) -> Any:
        from edge_runtime.reporting.mqtt import MqttLink

        mqtt = config.mqtt
        assert self.outbox is not None

        def path(value: str) -> Path | None:
            return config.resolve(value) if value else None

        return MqttLink(
            mqtt,
            self.topics,
            self.outbox,
            version=self.version,
            pipelines=self.pipelines,
            password_file=path(mqtt.password_file),
            tls_files=(path(mqtt.tls.ca), path(mqtt.tls.cert), path(mqtt.tls.key)),
            on_command=self.dispatcher.submit,
            on_event=self.event,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.dispatcher.start()
        if self.link is not None:
            self.link.start()

    def replace_link(self, config: Config) -> None:
        """A new MQTT section (reload): reconnect with it, keeping the outbox. The new link is made
        first: when it cannot be (a TLS file, a password file), the old one goes on and this raises."""
        link = self._make_link(config) if config.mqtt.enabled and self.outbox is not None else None
        if self.link is not None:
            self.link.stop(status_payload("offline", self.version, self.pipelines, reason="reconfigured"))
        self.config = config
        self.link = link
        if self.link is not None:
            self.link.start()

    def announce_stopping(self) -> None:
        """The retained ``stopping`` status, first thing on SIGTERM."""
        if self.link is not None:
            self.link.publish_now(
                self.topics.status,
                status_payload("stopping", self.version, self.pipelines),
                qos=1,
                retain=True,
            )

    def stop(self, flush_timeout: float = 5.0, disconnect_timeout: float = 1.0) -> None:
        """Flush what the outbox holds while the broker is there (up to ``flush_timeout``), then
        ``offline`` and disconnect (up to ``disconnect_timeout``, even from a frozen broker)."""
        self.dispatcher.stop()
        if self.link is not None:
            flushed = self.link.flush(flush_timeout)
            if not flushed and self.outbox is not None:
                log.info("outbox keeps %d messages for the next start", self.outbox.stats()["depth"])
            self.link.stop(
                status_payload("offline", self.version, self.pipelines), timeout=disconnect_timeout
            )
        if self.outbox is not None:
            self._final_outbox = self.outbox_stats()
            self.outbox.close()

    # -- what the daemon reports ----------------------------------------------------------------

    def last_seq(self, pipeline: str) -> int:
        """The last ``seq`` of ``pipeline``: from the outbox, or after the outbox was lost (moved
        aside, deleted) from the salvaged file and the reservation file, so none is reused."""
        if self.outbox is None:
            return 0
        stored = self.outbox.last_seq(pipeline)
        if stored == 0:
            stored = self.seq_file.reserved(pipeline)
        return max(stored, self._seq_floor.get(pipeline, 0))

    def publish(self, result: dict[str, Any]) -> None:
        """A result (a sink): stored in the outbox with its seq, then forwarded."""
        if self.outbox is None:
            return
        pipeline = result["pipeline"]
        qos = self.config.mqtt.results.qos
        self.seq_file.ensure(pipeline, int(result["seq"]))
        try:
            self.outbox.put(
                self.topics.results(pipeline),
                dumps(result),
                qos=self.config.mqtt.qos if qos is None else qos,
                retain=self.config.mqtt.results.retain,
                seq=(pipeline, int(result["seq"])),
            )
        except OutboxError as exc:
            with self._lock:
                self.store_errors += 1
                self.last_store_error = str(exc)
            self._store_error(f"result {pipeline}/{result['seq']}", exc)

    def publish_many(self, results: list[dict[str, Any]]) -> None:
        """Results in order, stored in one outbox transaction (a group commit). When the group
        cannot be stored, each result is stored on its own, so one that cannot (too large, a
        full disk) does not take the others with it."""
        if self.outbox is None or not results:
            return
        if len(results) == 1:
            self.publish(results[0])
            return
        qos = self.config.mqtt.results.qos
        qos = self.config.mqtt.qos if qos is None else qos
        retain = self.config.mqtt.results.retain
        items: list[PutItem] = []
        try:
            for result in results:
                pipeline, seq = result["pipeline"], int(result["seq"])
                self.seq_file.ensure(pipeline, seq)
                items.append((self.topics.results(pipeline), dumps(result), qos, retain, (pipeline, seq)))
            self.outbox.put_many(items, retried=True)
        except (OutboxError, ValueError):  # a full disk, a result too large or not JSON: one by one
            for result in results:
                self.publish(result)

    def _store_error(self, what: str, exc: Exception) -> None:
        """Log the first store failure, then one line per 10 s with the count (a full disk would
        otherwise log every result)."""
        now = time.monotonic()
        if now - self._last_store_log >= 10.0:
            suppressed = self.store_errors - self._logged_errors - 1
            more = f" ({suppressed} more not stored since the last message)" if suppressed > 0 else ""
            log.error("%s not stored: %s%s", what, exc, more)
            self._last_store_log = now
            self._logged_errors = self.store_errors

    def event(self, kind: str, message: str, fields: dict[str, Any]) -> None:
        """An event on ``{prefix}/{device}/events`` (through the outbox) and in the log."""
        message = redact_text(message)  # every event passes here: no credentials in any of them
        log.info("event %s: %s", kind, message)
        for listener in self.listeners:
            listener("event", event_payload(self.topics.device, kind, message, **fields))
        if self.outbox is None:
            return
        qos = self.config.mqtt.events.qos
        payload = dumps(redact_tree(event_payload(self.topics.device, kind, message, **fields)))
        try:
            self.outbox.put(
                self.topics.events,
                payload,
                qos=self.config.mqtt.qos if qos is None else qos,
                retain=self.config.mqtt.events.retain,
            )
        except OutboxError as exc:
            with self._lock:
                self.store_errors += 1
                self.last_store_error = str(exc)
            self._store_error(f"event {kind}", exc)
            if self.link is not None:  # not stored (a full disk): still sent while connected
                self.link.publish_now(self.topics.events, payload, qos=1)

    def publish_health(self, report: dict[str, Any]) -> bool:
        if self.link is None:
            return False
        qos = self.config.mqtt.health.qos
        return bool(
            self.link.publish_now(
                self.topics.health,
                dumps(redact_tree(report)),
                qos=self.config.mqtt.qos if qos is None else qos,
                retain=self.config.mqtt.health.retain,
            )
        )

    def _publish_reply(self, topic: str, payload: bytes, properties: Any) -> None:
        if self.link is None:
            return
        if properties is None:
            self.link.publish_now(topic, payload, qos=1)
        elif self.link.connected.is_set():
            self.link.client.publish(topic, payload, qos=1, properties=properties)

    def stats(self) -> dict[str, Any] | None:
        if self.link is None:
            return None
        return {
            **self.link.stats(),
            "commands_received": self.dispatcher.received,
            "commands_refused": self.dispatcher.refused,
        }

    def outbox_stats(self) -> dict[str, Any] | None:
        if self._final_outbox is not None:
            return self._final_outbox
        if self.outbox is None:
            return None
        return {
            **self.outbox.stats(),
            "store_errors": self.store_errors,
            "last_store_error": self.last_store_error,
            "disk_bytes": self.outbox.disk_bytes(),
            "reusable_bytes": self.outbox.reusable_bytes(),
            "refused_reserve": self.outbox.refused_reserve,
            "seq_file_errors": self.seq_file.write_errors,
        }
