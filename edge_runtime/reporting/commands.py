"""Remote commands: ``{prefix}/{device}/cmd/{name}`` with a JSON body carrying an ``id``.

Parsing and validation are pure (:func:`parse_command`); :class:`CommandDispatcher` runs each
command on its own worker thread (never on paho's network thread), replies on
``{prefix}/{device}/reply/{id}`` and on the MQTT 5 response topic when one is given, and reports
every refused command as an event. A malformed command changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.reporting.topics import SAFE, Topics, dumps
from edge_runtime.supervision import spawn

log = logging.getLogger(__name__)


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
    if len(payload) > max_bytes:
        raise CommandError(f"payload of {len(payload)} bytes is over the limit of {max_bytes}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("payload must be a JSON object")
    request_id = body.pop("id", None)
    if not isinstance(request_id, str) or not SAFE.match(request_id):
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

    def submit(self, topic: str, payload: bytes, properties: Any = None) -> None:
        """Called on paho's network thread: parse, then queue (never blocks)."""
        self.received += 1
        response = getattr(properties, "ResponseTopic", None) if properties is not None else None
        correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
        name = self.topics.command_name(topic)
        try:
            if name is None:
                raise CommandError(f"not a command topic: {topic!r}")
            command = parse_command(name, payload, self.max_bytes, response, correlation)
            if name not in self.commands:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(sorted(self.commands))}")
            self.commands[name].args.check(command.args)
        except CommandError as exc:
            request_id = _peek_id(payload) if len(payload) <= self.max_bytes else None
            self._refuse(name or topic, request_id, str(exc), response, correlation)
            return
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._refuse(name, command.id, "too many commands waiting", response, correlation)

    def _refuse(
        self, name: str, request_id: str | None, message: str, response: str | None, correlation: bytes | None
    ) -> None:
        self.refused += 1
        log.warning("command %s refused: %s", name, message)
        self.event("command.error", f"command {name} refused: {message}", {"command": name, "id": request_id})
        self._reply(
            request_id,
            {"id": request_id, "command": name, "ok": False, "error": message, "final": True},
            response,
            correlation,
        )

    def _reply(
        self, request_id: str | None, body: dict[str, Any], response: str | None, correlation: bytes | None
    ) -> None:
        payload = dumps(body)
        props = None
        if correlation is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        if request_id is not None:
            self.publish(self.topics.reply(request_id), payload, props)
        if (
            response
            and SAFE.match(response.replace("/", "_"))
            and "+" not in response
            and "#" not in response
        ):
            self.publish(response, payload, props)

    def reply(self, command: Command, body: dict[str, Any]) -> None:
        """A further reply to ``command`` (long-running commands report each step)."""
        self._reply(command.id, body, command.response_topic, command.correlation)

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            if command is None:
                return
            definition = self.commands[command.name]
            try:
                result = definition.handler(command)
            except EdgeRuntimeError as exc:
                self._refuse(command.name, command.id, str(exc), command.response_topic, command.correlation)
                continue
            if result is None:
                continue
            body = {"id": command.id, "command": command.name, "ok": True, **result}
            self._reply(command.id, body, command.response_topic, command.correlation)


def _peek_id(payload: bytes) -> str | None:
    """The request id of a refused command, when one can be read safely."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) and SAFE.match(request_id) else None
