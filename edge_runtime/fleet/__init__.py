"""The operator's side of edge-runtime fleets: status, signed model rollouts with canaries, rollback.

Installed with the ``fleet`` extra as the ``edge-fleet`` command (see ``docs/fleet.md``). The
modules are importable for scripts and tests: :mod:`~edge_runtime.fleet.bus` (MQTT connection, request/reply),
:mod:`~edge_runtime.fleet.devices` (retained status/health), :mod:`~edge_runtime.fleet.artifact` (hashing,
signing, key pairs), :mod:`~edge_runtime.fleet.delivery` (HTTP server, MQTT chunks),
:mod:`~edge_runtime.fleet.rollout` (canaries, concurrency, timeouts, rollback), :mod:`~edge_runtime.fleet.ui`
(rich tables and progress) and :mod:`~edge_runtime.fleet.cli`.
"""

from __future__ import annotations

from edge_runtime.fleet.artifact import Artifact, KeyPair, config_snippet, describe_model, keygen, load_key
from edge_runtime.fleet.bus import BrokerOptions, Bus, MqttBus, Reply, Requester, parse_broker
from edge_runtime.fleet.common import STEPS, FleetError, RequestIds, canary_count
from edge_runtime.fleet.delivery import ChunkDelivery, Delivery, DeliveryError, HttpDelivery, ModelServer
from edge_runtime.fleet.devices import Device, Targets, choose_targets, collect_devices
from edge_runtime.fleet.rollout import DeviceOutcome, RollbackOutcome, Rollout, RolloutReport, rollback

__all__ = [
    "STEPS",
    "Artifact",
    "BrokerOptions",
    "Bus",
    "ChunkDelivery",
    "Delivery",
    "DeliveryError",
    "Device",
    "DeviceOutcome",
    "FleetError",
    "HttpDelivery",
    "KeyPair",
    "ModelServer",
    "MqttBus",
    "Reply",
    "RequestIds",
    "Requester",
    "RollbackOutcome",
    "Rollout",
    "RolloutReport",
    "Targets",
    "canary_count",
    "choose_targets",
    "collect_devices",
    "config_snippet",
    "describe_model",
    "keygen",
    "load_key",
    "parse_broker",
    "rollback",
]
