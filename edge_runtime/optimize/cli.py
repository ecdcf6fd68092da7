"""The ``optimize`` subcommand's arguments and its print/exit-code step (kept out of ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be 0..1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be 1..100000, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="the float .tflite model")
    p.add_argument(
        "--calibration", required=True, type=Path,
        help="folder of images (sub-folders = labels), video file, .npz of input arrays, or captures folder",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="the int8 .tflite to write (manifest beside it)")
    p.add_argument(
        "--config", type=Path, default=None, help="pipeline config whose image bindings preprocess"
    )
    p.add_argument("--pipeline", default=None, help="pipeline in --config (default: the first)")
    p.add_argument("--labels", type=Path, default=None, help="labels file: folder names map to these indices")
    p.add_argument("--engine", default="auto", choices=("auto", "ai-edge-quantizer", "legacy"), help="engine")
    p.add_argument("--io", default="int8", choices=("int8", "uint8", "float32"), help="input/output type")
    p.add_argument(
        "--task",
        default="auto",
        choices=("auto", "classification", "detection", "raw"),
        help="how to compare",
    )
    p.add_argument("--min-agreement", type=_unit, default=0.98, help="refuse below this agreement (0.98)")
    p.add_argument("--force", action="store_true", help="write even when slower or below --min-agreement")
    p.add_argument(
        "--prune", type=_share, default=None, help="zero this share of each kernel's weights first"
    )
    p.add_argument(
        "--calibration-share", type=_share, default=0.5, help="share of the data used to calibrate (0.5)"
    )
    p.add_argument("--max-samples", type=_count, default=500, help="read at most this many samples (500)")
    p.add_argument("--threads", type=_count, default=1, help="CPU threads for verification and latency (1)")
    p.add_argument("--runs", type=_count, default=200, help="timed invokes per model and delegate (200)")
    p.add_argument(
        "--delegates",
        default="edgetpu,gpu,vx,armnn,cpu",
        help="comma-separated delegates to measure latency on; those that do not load here say why",
    )
    p.add_argument(
        "--backends",
        default="litert",
        help="comma-separated backends to measure latency on (litert, tflite-runtime; default: litert)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds each engine may take (600)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run_optimize(args: argparse.Namespace) -> int:
    from edge_runtime.errors import EdgeRuntimeError
    from edge_runtime.optimize import OptimizeError
    from edge_runtime.optimize.options import Options
    from edge_runtime.optimize.report import format_table
    from edge_runtime.optimize.run import optimize

    options = Options(
        model=args.model,
        calibration=args.calibration,
        out=args.out,
        config=args.config,
        pipeline=args.pipeline,
        labels=args.labels,
        engine=args.engine,
        io=args.io,
        task=args.task,
        min_agreement=args.min_agreement,
        force=args.force,
        prune=args.prune,
        calibration_share=args.calibration_share,
        max_samples=args.max_samples,
        threads=args.threads,
        runs=args.runs,
        delegates=tuple(d.strip() for d in args.delegates.split(",") if d.strip()),
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        timeout_s=args.timeout,
    )
    try:
        report = optimize(options)
    except EdgeRuntimeError:
        raise
    except OSError as exc:  # a file or folder that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        raise OptimizeError(f"{where}{exc.strerror or exc}") from exc
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    if report.ok:
        return 0
    print(f"edge-runtime: error: {args.model}: refused: {'; '.join(report.refusals)}", file=sys.stderr)
    return 1
