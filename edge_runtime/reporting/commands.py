"""Remote commands: ``{prefix}/{device}/cmd/{name}`` with a JSON body carrying an ``id``.

Parsing and validation are pure (:func:`parse_command`, strict JSON from
:mod:`edge_runtime.reporting.inbound`); :class:`CommandDispatcher` runs each command on its own
worker thread (never on paho's network thread), replies on ``{prefix}/{device}/reply/{id}`` and on
the MQTT 5 response topic when one is given (only inside the device's own reply tree), and reports
every refused command as an event. A malformed command changes nothing.

**One guard per inbound message.** :meth:`CommandDispatcher.submit` is the only entry point for a
message and returns normally whatever the message holds: a refusal (:class:`CommandError`) and any
unexpected exception while parsing or queueing become an error reply (when an id can be read) and
a ``command.error`` event, so the caller (paho's network thread) always goes on and the broker's
QoS 1 delivery is acknowledged. The worker does the same for any exception a handler raises.
Retained commands (replayed by the broker at every subscription) are never run.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.redaction import redact_text, redact_tree
from edge_runtime.reporting.inbound import InboundError, parse_json_object, peek_request_id
from edge_runtime.reporting.topics import SAFE, Topics, dumps
from edge_runtime.supervision import spawn

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 400
"""An error message (which may quote what was sent) is cut to this length in replies, events, logs."""
MAX_CORRELATION_BYTES = 1024
"""Longest MQTT 5 correlation data echoed in a reply."""
LOG_WINDOW_S = 10.0
LOG_PER_WINDOW = 50
"""Refusals logged per window at most; the rest are counted in one line (replies and events go on)."""


class CommandError(EdgeRuntimeError, ValueError):
    """A command that cannot be run as sent; the message goes back in the reply."""


@dataclass(frozen=True)
class Command:
    name: str
    id: str
    args: dict[str, Any]
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True)
class ArgSpec:
    """Expected arguments: name -> (type or tuple of types, required)."""

    fields: dict[str, tuple[type | tuple[type, ...], bool]] = field(default_factory=dict)

    def check(self, args: dict[str, Any]) -> None:
        unknown = sorted(set(args) - set(self.fields))
        if unknown:
            raise CommandError(f"unknown arguments {unknown}; expected {sorted(self.fields) or 'none'}")
        for name, (types, required) in self.fields.items():
            if name not in args:
                if required:
                    raise CommandError(f"missing argument {name!r}")
                continue
            value = args[name]
            if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
                raise CommandError(f"argument {name!r} has the wrong type: {type(value).__name__}")
            if not isinstance(value, types):
                raise CommandError(f"argument {name!r} has the wrong type: {type(value).__name__}")


Handler = Callable[[Command], dict[str, Any] | None]
"""A command's work: the body of its reply, or None when it has sent its first reply itself (a
long-running command replies ``accepted`` before its work starts, so that no later step reply can
overtake it)."""


@dataclass(frozen=True)
class CommandDef:
    handler: Handler
    args: ArgSpec


def parse_command(
    name: str,
    payload: bytes,
    max_bytes: int,
    response_topic: str | None = None,
    correlation: bytes | None = None,
) -> Command:
    """Validate an inbound command body; raises :class:`CommandError` with the reason."""
    try:
        body = parse_json_object(payload, max_bytes=max_bytes)
    except InboundError as exc:
        raise CommandError(str(exc)) from None
    request_id = body.pop("id", None)
    if not isinstance(request_id, str) or not SAFE.fullmatch(request_id):
        raise CommandError("'id' must be a string of letters, digits, '_', '.', ':' or '-'")
    return Command(name, request_id, body, response_topic, correlation)


class CommandDispatcher:
    """Runs commands from a bounded queue on one worker thread and publishes the replies."""

    def __init__(
        self,
        topics: Topics,
        publish: Callable[[str, bytes, Any], None],
        event: Callable[[str, str, dict[str, Any]], None],
        max_bytes: int = 65536,
        queue_size: int = 64,
    ) -> None:
        self.topics = topics
        self.publish = publish
        self.event = event
        self.max_bytes = max_bytes
        self.commands: dict[str, CommandDef] = {}
        self.received = 0
        self.refused = 0
        self._queue: queue.Queue[Command | None] = queue.Queue(queue_size)
        self._log_window = float("-inf")
        self._logged = 0
        self._log_suppressed = 0
        self._thread: threading.Thread | None = None

    def register(self, name: str, handler: Handler, **args: tuple[type | tuple[type, ...], bool]) -> None:
        self.commands[name] = CommandDef(handler, ArgSpec(dict(args)))

    def start(self) -> None:
        self._thread = spawn("commands", self._run)

    def stop(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, topic: str, payload: bytes, properties: Any = None, retain: bool = False) -> None:
        """Called on paho's network thread for every inbound message: parse, then queue. Never
        blocks and never raises: whatever the message holds, it is queued or refused here."""
        self.received += 1
        request_id: str | None = None
        name: str | None = None
        response: str | None = None
        correlation: bytes | None = None
        try:
            name = self.topics.command_name(topic)
            response, correlation = _response_properties(properties)
            request_id = peek_request_id(payload, self.max_bytes)
            if response is not None and not self.topics.in_reply_tree(response):
                bad, response = response, None  # never answered there: not even the refusal
                raise CommandError(
                    f"response topic {bad[:200]!r} is outside this device's reply tree "
                    f"{self.topics.base}/reply/..."
                )
            if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
                size, correlation = len(correlation), None
                raise CommandError(f"correlation data of {size} bytes is over {MAX_CORRELATION_BYTES}")
            if retain:
                raise CommandError("retained commands are ignored: publish commands without the retain flag")
            if name is None:
                raise CommandError(f"not a command topic: {topic[:200]!r}")
            command = parse_command(name, payload, self.max_bytes, response, correlation)
            request_id = command.id
            if name not in self.commands:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(sorted(self.commands))}")
            self.commands[name].args.check(command.args)
        except CommandError as exc:
            self._refuse(name or topic, request_id, str(exc), response, correlation, retained=retain)
            return
        except Exception as exc:  # the guard: nothing a message holds may reach paho's loop
            log.exception("command on %r: unexpected error while parsing", topic[:200])
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._refuse(name or topic, request_id, message, response, correlation)
            return
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._refuse(name, command.id, "too many commands waiting", response, correlation)

    def _refuse(
        self,
        name: str,
        request_id: str | None,
        message: str,
        response: str | None,
        correlation: bytes | None,
        *,
        retained: bool = False,
    ) -> None:
        """An error reply (when an id is known) and a ``command.error`` event; never raises."""
        self.refused += 1
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "..."
        message = redact_text(message)
        try:
            self._log_refusal(name, message)
            fields: dict[str, Any] = {"command": name[:200], "id": request_id}
            if retained:
                fields["retained"] = True
            self.event("command.error", f"command {name[:200]} refused: {message}", fields)
            self._reply(
                request_id,
                {"id": request_id, "command": name[:200], "ok": False, "error": message, "final": True},
                response,
                correlation,
            )
        except Exception:  # a failing publish must not undo the guard
            log.exception("command %r: the refusal could not be sent", name[:200])

    def _log_refusal(self, name: str, message: str) -> None:
        """At most LOG_PER_WINDOW lines per LOG_WINDOW_S: a flood of bad commands cannot flood the log."""
        now = time.monotonic()
        if now - self._log_window >= LOG_WINDOW_S:
            if self._log_suppressed:
                log.warning(
                    "%d more command refusals in the last %.0f s were not logged",
                    self._log_suppressed, now - self._log_window,
                )  # fmt: skip
            self._log_window, self._logged, self._log_suppressed = now, 0, 0
        self._logged += 1
        if self._logged <= LOG_PER_WINDOW:
            log.warning("command %r refused: %s", name[:200], message)
        else:
            self._log_suppressed += 1

    def _reply(
        self, request_id: str | None, body: dict[str, Any], response: str | None, correlation: bytes | None
    ) -> None:
        payload = dumps(redact_tree(body))
        props = None
        if correlation is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        own = self.topics.reply(request_id) if request_id is not None else None
        if own is not None:
            self.publish(own, payload, props)
        if response is not None and response != own and self.topics.in_reply_tree(response):
            self.publish(response, payload, props)

    def reply(self, command: Command, body: dict[str, Any]) -> None:
        """A further reply to ``command`` (long-running commands report each step)."""
        self._reply(command.id, body, command.response_topic, command.correlation)

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            if command is None:
                return
            try:
                self._execute(command)
            except Exception:  # a reply that cannot be sent: logged, the worker goes on
                log.exception("command %s %s: the reply could not be sent", command.name, command.id)

    def _execute(self, command: Command) -> None:
        definition = self.commands[command.name]
        try:
            result = definition.handler(command)
        except EdgeRuntimeError as exc:
            self._refuse(command.name, command.id, str(exc), command.response_topic, command.correlation)
            return
        except Exception as exc:  # a handler bug: an error reply and an event, never a dead worker
            log.exception("command %s %s failed", command.name, command.id)
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._refuse(command.name, command.id, message, command.response_topic, command.correlation)
            return
        if result is None:
            return
        body = {"id": command.id, "command": command.name, "ok": True, **result}
        self._reply(command.id, body, command.response_topic, command.correlation)


def _response_properties(properties: Any) -> tuple[str | None, bytes | None]:
    """The MQTT 5 response topic and correlation data of a message (None when absent)."""
    if properties is None:
        return None, None
    response = getattr(properties, "ResponseTopic", None)
    correlation = getattr(properties, "CorrelationData", None)
    return (
        response if isinstance(response, str) else None,
        bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
    )
