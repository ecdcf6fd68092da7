"""What the MQTT test helpers share: protocol versions, payloads, received messages, refusals.

- ``MQTTv5``/``MQTTv311``: the protocol versions a :class:`mqtt_client.Subscriber` can speak.
- ``Payload``: what the helpers publish (bytes, text, or a dict/list sent as JSON).
- :class:`Received`: one message as a subscriber got it.
- :class:`BrokerRefusedError`: a connection the broker refuses (CONNACK failure, TLS failure,
  no answer), an ``AssertionError`` that carries the reason code and the cause.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["BrokerRefusedError", "MQTTv5", "MQTTv311", "Payload", "Received"]

MQTTv5 = MQTTProtocolVersion.MQTTv5
MQTTv311 = MQTTProtocolVersion.MQTTv311

Payload = bytes | str | Mapping[str, Any] | list[Any] | None


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
