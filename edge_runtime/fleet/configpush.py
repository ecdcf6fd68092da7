"""``edge-fleet config DEVICE FILE [--key KEYFILE]``: send one device a new config file.

Unsigned, the device accepts only changes its policy leaves free; with ``--key`` the tool asks the
device for the sha256 of its current file (``get_config``), signs the device id, that sha256 and
the new bytes (:mod:`edge_runtime.updates.configsign`) and sends the signature along.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_runtime.fleet.bus import BrokerOptions, MqttBus, Requester
from edge_runtime.fleet.common import FleetError, RequestIds, check_level


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be over 0 and at most 3600")
    return value


def add_config_parser(commands: Any, mqtt: argparse.ArgumentParser) -> None:
    """The ``config`` subcommand, on the tool's subparsers (``mqtt``: the broker options)."""
    conf = commands.add_parser(
        "config",
        parents=[mqtt],
        help="send a device a new config file (signed: may change security settings)",
    )
    conf.add_argument("device", help="the device id")
    conf.add_argument("file", type=Path, metavar="FILE", help="the new config file (TOML, UTF-8)")
    conf.add_argument(
        "--key",
        dest="signing_key",
        type=Path,
        metavar="KEYFILE",
        help="sign it with this operator key (needed to change keys, TLS, credentials, ...)",
    )
    conf.add_argument(
        "--timeout", type=_seconds, default=60.0, metavar="S", help="for each reply (default: 60)"
    )
    conf.add_argument("--json", action="store_true", help="the device's reply as JSON on stdout")


def cmd_config(args: argparse.Namespace, options: BrokerOptions) -> int:
    """get_config for the file's sha256, then config.update with the new text (and signature)."""
    device = check_level(args.device, "device")
    try:
        data = args.file.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise FleetError(f"{args.file}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise FleetError(f"{args.file}: not UTF-8 text: {exc}") from exc
    ids = RequestIds("cfg")
    with MqttBus(options).connect() as bus:
        requester = Requester(bus, args.prefix).start()
        body: dict[str, Any] = {"id": ids.next(), "config": text}
        if args.signing_key is not None:
            from edge_runtime.updates.configsign import sign_config
            from edge_runtime.updates.protocol import UpdateError

            current = requester.request(device, "get_config", {"id": ids.next()}, args.timeout)
            base = current.body.get("file_sha256") if current is not None else None
            if not isinstance(base, str):
                raise FleetError(f"{device}: no file_sha256 in its get_config reply (offline, or too old?)")
            try:
                body["signature"] = sign_config(args.signing_key, device, base, data)
            except UpdateError as exc:
                raise FleetError(str(exc)) from exc
        reply = requester.request(device, "config.update", body, args.timeout)
    if reply is None:
        raise FleetError(f"{device}: no reply to config.update within {args.timeout:g} s")
    if args.json:
        sys.stdout.write(json.dumps(reply.body, indent=2) + "\n")
    elif reply.body.get("ok"):
        signed = f", signed by {reply.body.get('signed_by')}" if reply.body.get("signed_by") else ""
        sys.stdout.write(f"{device}: config applied: {reply.body.get('reloaded')}{signed}\n")
    else:
        sys.stderr.write(f"{device}: config refused: {' '.join(str(reply.body.get('error')).split())}\n")
    return 0 if reply.body.get("ok") else 1
