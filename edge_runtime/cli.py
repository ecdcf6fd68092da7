"""The ``edge-runtime`` command: parse, call, print, exit code.

Exit 0 on success, 1 on a user error (one line on stderr, no traceback), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from edge_runtime import __version__
from edge_runtime.errors import ConfigError, EdgeRuntimeError
from edge_runtime.systemd import setup_logging

log = logging.getLogger("edge_runtime")

BACKEND_CHOICES = ("auto", "litert", "tflite-runtime", "onnxruntime")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_runtime.runtime.inspect import DEFAULT_PROBE, build_report, format_report

    delegates = tuple(args.delegates.split(",")) if args.delegates else DEFAULT_PROBE
    report = build_report(args.model, delegates=delegates, backend=args.backend)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge_runtime.runtime.bench import BackendRow, bench_backends, bench_model, format_rows

    if args.backend == "all":
        rows = bench_backends(
            args.model,
            pythons=args.python or (),
            threads=args.threads,
            delegate=args.delegate,
            runs=args.runs,
            warmup=args.warmup,
        )
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "backend": r.backend,
                            "result": r.result.to_dict() if r.result else None,
                            "error": r.error,
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
        else:
            print(format_rows(rows))
        return 0 if any(r.result for r in rows) else 1
    result = bench_model(
        args.model,
        threads=args.threads,
        delegate=args.delegate,
        runs=args.runs,
        warmup=args.warmup,
        backend=args.backend,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_rows([BackendRow(result.backend, result)]))
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from edge_runtime.optimize.cli import run_optimize

    return run_optimize(args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from edge_runtime.config import load_config
    from edge_runtime.daemon.preflight import preflight

    config = load_config(args.file, args.set or (), profile=args.profile)
    preflight(config, str(args.file))
    models = sum(len(p.models) + (1 if p.cascade else 0) for p in config.pipelines)
    print(
        f"{args.file}: ok: device {config.device.id}, {len(config.sources)} sources, "
        f"{len(config.pipelines)} pipelines, {models} models"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_runtime.config import DEMO_CONFIG, load_config
    from edge_runtime.daemon.service import Service
    from edge_runtime.reporting.stdout import StdoutSink

    path = Path(args.config) if args.config else DEMO_CONFIG
    from edge_runtime.daemon.preflight import preflight

    config = load_config(path, args.set or (), profile=args.profile)
    preflight(config, str(path))
    if args.log_level is None:
        logging.getLogger().setLevel(config.device.log_level.upper())
    sinks = [] if args.quiet else [StdoutSink()]
    service = Service(
        config,
        sinks,
        config_path=path,
        overrides=args.set or (),
        profile=args.profile,
        max_results=args.max_results,
        duration_s=args.duration,
    )
    return service.run()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Inference daemon for edge boards: int8 TFLite models, sensor fusion, MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level (default: the config's, else warning for tools and info for run)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (the embedded demo when no --config is given)")
    p.add_argument("--config", "-c", default=None, help="TOML config file (default: the embedded demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument(
        "--profile", default=None, help="board profile under the config (a name such as rpi5, or a file)"
    )
    p.add_argument("--max-results", type=_positive, default=None, help="stop after N results in total")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print results on stdout")
    p.set_defaults(func=_cmd_run, default_level="info")

    p = sub.add_parser("validate-config", help="check a config file and report every error")
    p.add_argument("file", help="TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument(
        "--profile", default=None, help="board profile under the config (a name such as rpi5, or a file)"
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("inspect", help="describe a .tflite or .onnx model and where it would run here")
    p.add_argument("model", help="path of the .tflite or .onnx file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="inference backend")
    p.add_argument(
        "--delegates",
        default="",
        help="comma-separated delegates to probe (default: edgetpu,gpu,vx,armnn,cpu; .onnx: xnnpack,acl,cpu)",
    )
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("bench", help="measure a model's invoke latency")
    p.add_argument("model", help="path of the .tflite or .onnx file (with --backend all: its twin too)")
    p.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: runtime's)")
    p.add_argument("--delegate", default=None, help="delegate to try first; cpu is the fallback")
    p.add_argument("--runs", type=_positive, default=100, help="timed invokes (default 100)")
    p.add_argument("--warmup", type=_non_negative, default=10, help="untimed invokes first (default 10)")
    p.add_argument(
        "--backend",
        choices=(*BACKEND_CHOICES, "all"),
        default="auto",
        help="inference backend; 'all' runs every installed backend side by side",
    )
    p.add_argument(
        "--python",
        action="append",
        metavar="PATH",
        help="with --backend all: another Python environment to look for backends in (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_bench)

    from edge_runtime.optimize.cli import add_arguments

    p = sub.add_parser("optimize", help="quantize a float .tflite to int8, verify it side by side, write it")
    add_arguments(p)
    p.set_defaults(func=_cmd_optimize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or getattr(args, "default_level", "warning"))
    from edge_runtime.nativelogs import configure_native_logging

    configure_native_logging(logging.getLogger().level)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        if len(exc.problems) == 1:  # one problem, one line
            problem = exc.problems[0]
            line = problem if problem.startswith(exc.source) else f"{exc.source}: {problem}"
            print(f"edge-runtime: error: {line}", file=sys.stderr)
        else:
            print(f"edge-runtime: error: {exc}", file=sys.stderr)
        return 1
    except EdgeRuntimeError as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        print(f"edge-runtime: error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        return 0
