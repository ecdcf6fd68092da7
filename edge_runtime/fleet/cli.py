"""``fleet.py``: the operator's command line (argparse); thin: parse, call, print, exit code.

Exit codes: 0 when everything targeted succeeded, 1 when any device failed (or on an error,
printed as one line on stderr), 2 on a usage error, 130 when interrupted before a rollout began.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime.fleet import artifact as artifacts
from edge_runtime.fleet.artifact import config_snippet, describe_model, keygen, load_key
from edge_runtime.fleet.bus import BrokerOptions, MqttBus, Requester, parse_broker
from edge_runtime.fleet.captures import add_captures_parser, cmd_captures
from edge_runtime.fleet.common import (
    FleetError,
    RequestIds,
    canary_arg,
    canary_count,
    check_level,
    check_pipeline,
    nonnegative_float,
    parse_globs,
    positive_float,
    positive_int,
)
from edge_runtime.fleet.configpush import add_config_parser, cmd_config
from edge_runtime.fleet.delivery import (
    DEFAULT_CHUNK,
    ChunkDelivery,
    Delivery,
    HttpDelivery,
    ModelServer,
    check_chunk_size,
)
from edge_runtime.fleet.devices import Device, choose_targets, collect_devices

log = logging.getLogger("fleet")


DOWNGRADE_HELP = "allow a downgrade, on devices that run VERSION now (single use)"
REFERENCE_HELP = "drift reference to send (default: the model's in the manifest.json beside it)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet.py",
        description="Operate a fleet of edge-runtime devices over MQTT: status, signed model updates "
        "with canaries, rollback.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mqtt = argparse.ArgumentParser(add_help=False)
    group = mqtt.add_argument_group("broker")
    group.add_argument(
        "--broker", default="localhost:1883", metavar="HOST:PORT", help="default: localhost:1883"
    )
    group.add_argument("--prefix", default="edge", help="topic prefix of the devices (default: edge)")
    group.add_argument("--username", help="MQTT user name")
    group.add_argument(
        "--password-file", type=Path, metavar="FILE", help="MQTT password: the first line of FILE"
    )
    group.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA certificate that verifies the broker (enables TLS)"
    )
    group.add_argument(
        "--cert", "--tls-cert", type=Path, metavar="FILE", help="client certificate for mutual TLS"
    )
    group.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="its private key (--key is the signing key)"
    )
    group.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    group.add_argument("--insecure", action="store_true", help="TLS without checking the broker's host name")
    group.add_argument(
        "--wait",
        type=nonnegative_float,
        default=2.0,
        metavar="S",
        help="the longest wait for the retained status/health messages (default: 2 s)",
    )

    status = commands.add_parser(
        "status", parents=[mqtt], help="devices from their retained status and health"
    )
    status.add_argument("--devices", metavar="GLOB", help="shell patterns, comma-separated (default: all)")
    status.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")

    key = commands.add_parser("keygen", help="a new Ed25519 key pair for signing updates")
    key.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="writes DIR/fleet.key and DIR/fleet.pub"
    )
    key.add_argument("--force", action="store_true", help="replace an existing key pair")

    sign = commands.add_parser("sign", help="sign a model for a pipeline and version")
    sign.add_argument("model", type=Path, metavar="MODEL")
    sign.add_argument("--pipeline", required=True)
    sign.add_argument("--version", required=True)
    sign.add_argument("--key", dest="signing_key", type=Path, required=True, metavar="KEYFILE")
    sign.add_argument("--rollback-from", metavar="VERSION", help=DOWNGRADE_HELP)
    sign.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON to FILE")
    sign.add_argument("--reference", type=Path, metavar="FILE", help=REFERENCE_HELP)

    update = commands.add_parser("update", parents=[mqtt], help="roll a model out: canaries, then the rest")
    update.add_argument("--model", type=Path, required=True, metavar="FILE")
    update.add_argument("--pipeline", required=True)
    update.add_argument("--version", required=True)
    update.add_argument(
        "--key",
        dest="signing_key",
        type=Path,
        metavar="KEYFILE",
        help="sign the update with this private key",
    )
    update.add_argument(
        "--signed", type=Path, metavar="FILE", help="the JSON written by `sign` (key kept elsewhere)"
    )
    update.add_argument("--rollback-from", metavar="VERSION", help=DOWNGRADE_HELP)
    update.add_argument("--reference", type=Path, metavar="FILE", help=REFERENCE_HELP)
    update.add_argument("--devices", metavar="GLOB", help="shell patterns, comma-separated (default: all)")
    update.add_argument(
        "--canary",
        type=canary_arg,
        default="1",
        metavar="N|N%",
        help="canaries: N devices or N%% (default: 1)",
    )
    update.add_argument(
        "--concurrency", type=positive_int, default=4, metavar="K", help="devices at a time (default: 4)"
    )
    update.add_argument(
        "--timeout", type=positive_float, default=300.0, metavar="S", help="per device (default: 300)"
    )
    update.add_argument(
        "--transport", choices=("http", "mqtt"), default="http", help="how devices get the file"
    )
    update.add_argument(
        "--http-host", default="127.0.0.1", metavar="ADDR", help="address devices reach this machine at"
    )
    update.add_argument("--http-port", type=int, default=0, metavar="PORT", help="default: a free port")
    update.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK, metavar="BYTES", help="mqtt transport chunks"
    )
    update.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    update.add_argument("--json", action="store_true", help="the report as JSON on stdout")

    add_config_parser(commands, mqtt)
    add_captures_parser(commands, mqtt)

    back = commands.add_parser("rollback", parents=[mqtt], help="return devices to their previous model")
    back.add_argument("--pipeline", required=True)
    back.add_argument("--to", dest="to_version", metavar="VERSION", help="a version in the devices' history")
    back.add_argument("--from", dest="from_version", metavar="VERSION", help="the version they run now")
    back.add_argument(
        "--key", dest="signing_key", type=Path, metavar="KEYFILE", help="sign it (with --to, --from)"
    )
    back.add_argument("--devices", metavar="GLOB", help="shell patterns, comma-separated (default: all)")
    back.add_argument("--concurrency", type=positive_int, default=8, metavar="K")
    back.add_argument(
        "--timeout", type=positive_float, default=60.0, metavar="S", help="per device (default: 60)"
    )
    back.add_argument("--json", action="store_true")
    return parser


# --- helpers ---------------------------------------------------------------------------------------


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    host, port = parse_broker(args.broker)
    return BrokerOptions(
        host=host,
        port=port,
        username=args.username,
        password_file=args.password_file,
        ca=args.ca,
        cert=args.cert,
        key=args.tls_key,
        tls=args.tls,
        insecure=args.insecure,
    )


def discover(bus: MqttBus, args: argparse.Namespace) -> dict[str, Device]:
    prefix = check_level(args.prefix, "--prefix")
    return collect_devices(
        bus,
        prefix,
        wait_s=args.wait,
        globs=parse_globs(args.devices),
        sync_topic=f"{prefix}/_fleet/{bus.client_id}/sync",
    )


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


# --- commands --------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with MqttBus(broker_options(args)).connect() as bus:
        devices = discover(bus, args)
    now = time.time()
    if args.json:
        _print_json({"ts": round(now, 3), "devices": [d.row(now) for d in devices.values()]})
        return 0
    from edge_runtime.fleet.ui import console, status_table

    out = console()
    if not devices:
        out.print(
            f"no device under {args.prefix}/ matches" + (f" {args.devices!r}" if args.devices else ""),
            markup=False,
        )
        return 0
    out.print(status_table(devices, now))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    pair = keygen(args.out, force=args.force)
    sys.stdout.write(
        f"private key: {pair.private_path} (mode 0600; keep it off the devices)\n"
        f"public key:  {pair.public_path}\n\n{pair.public_b64}\n\n"
        f"add to each device's config:\n\n{config_snippet(pair.public_b64)}"
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = load_key(args.signing_key)
    artifact = describe_model(
        args.model, args.pipeline, args.version, key, args.rollback_from, args.reference
    )
    text = json.dumps(artifact.manifest(), indent=2) + "\n"
    if args.out is not None:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise FleetError(f"{args.out}: cannot write: {exc.strerror or exc}") from exc
    sys.stdout.write(text)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from edge_runtime.fleet.rollout import Rollout
    from edge_runtime.fleet.ui import RolloutProgress, console, rollout_table

    check_pipeline(args.pipeline)
    if args.signing_key is not None and args.signed is not None:
        raise FleetError("give --key or --signed, not both")
    if args.transport == "mqtt":
        check_chunk_size(args.chunk_size)
    elif args.http_host in ("0.0.0.0", "::", ""):
        raise FleetError(
            f"--http-host {args.http_host!r}: give the address the devices reach this machine at "
            "(it goes into the URL they download)"
        )
    key = load_key(args.signing_key) if args.signing_key is not None else None
    artifact = describe_model(
        args.model, args.pipeline, args.version, key, args.rollback_from, args.reference
    )
    if args.signed is not None:
        artifact = artifacts.with_signature(artifact, args.signed)
    err = console(stderr=True)
    with MqttBus(broker_options(args)).connect() as bus:
        targets = choose_targets(discover(bus, args), args.pipeline)
        for device, why in targets.skipped.items():
            err.print(f"skipping {device}: {why}", markup=False)
        if not targets.devices:
            raise FleetError(
                f"no online device under {args.prefix}/ runs pipeline {args.pipeline!r}"
                + (f" and matches {args.devices!r}" if args.devices else "")
            )
        canaries = canary_count(args.canary, len(targets.devices))
        first, rest = targets.devices[:canaries], targets.devices[canaries:]
        err.print(
            f"{artifact.path.name} (sha256 {artifact.sha256[:12]}, {artifact.size} bytes, "
            f"{'signed' if artifact.signature else 'unsigned'}) -> {len(targets.devices)} device(s); "
            f"canaries: {', '.join(first) or 'none'}; then: {', '.join(rest) or 'none'}",
            markup=False,
        )
        if args.dry_run:
            return 0
        requester = Requester(bus, args.prefix).start()
        ids = RequestIds()
        server: ModelServer | None = None
        delivery: Delivery
        if args.transport == "http":
            server = ModelServer(artifact.path, args.http_host, args.http_port).start()
            delivery = HttpDelivery(server)
            log.info("serving %s at %s", artifact.path, server.url)
        else:
            delivery = ChunkDelivery(requester, artifact.path, new_id=ids.next, chunk_size=args.chunk_size)
        try:
            with RolloutProgress(err) as progress:
                rollout = Rollout(
                    requester,
                    artifact,
                    delivery,
                    concurrency=args.concurrency,
                    timeout_s=args.timeout,
                    on_progress=progress,
                    ids=ids,
                )
                report = rollout.run(targets.devices, canaries)
        finally:
            if server is not None:
                server.stop()
    if args.json:
        _print_json({**report.to_dict(), "skipped": targets.skipped})
    else:
        console().print(rollout_table(report))
    return 0 if report.ok else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from edge_runtime.fleet.rollout import rollback
    from edge_runtime.fleet.ui import console, rollback_table

    check_pipeline(args.pipeline)
    key = load_key(args.signing_key) if args.signing_key is not None else None
    signed = artifacts.rollback_fields(args.pipeline, args.to_version, args.from_version, key)
    with MqttBus(broker_options(args)).connect() as bus:
        targets = choose_targets(discover(bus, args), args.pipeline)
        for device, why in targets.skipped.items():
            sys.stderr.write(f"skipping {device}: {why}\n")
        if not targets.devices:
            raise FleetError(f"no online device under {args.prefix}/ runs pipeline {args.pipeline!r}")
        requester = Requester(bus, args.prefix).start()
        outcomes = rollback(
            requester,
            targets.devices,
            args.pipeline,
            timeout_s=args.timeout,
            concurrency=args.concurrency,
            signed=signed,
        )
    ok = all(o.ok for o in outcomes)
    if args.json:
        _print_json({"ok": ok, "pipeline": args.pipeline, "devices": [o.to_dict() for o in outcomes]})
    else:
        console().print(rollback_table(args.pipeline, outcomes))
    return 0 if ok else 1


COMMANDS = {
    "config": lambda args: cmd_config(args, broker_options(args)),
    "captures": lambda args: cmd_captures(args, broker_options(args)),
    "status": cmd_status,
    "keygen": cmd_keygen,
    "sign": cmd_sign,
    "update": cmd_update,
    "rollback": cmd_rollback,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except FleetError as exc:
        sys.stderr.write(f"fleet.py {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"fleet.py {args.command}: interrupted\n")
        return 130
