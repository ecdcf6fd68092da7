"""End-to-end benchmark: the bare invoke loop, the naive loop a user would write, and edge-runtime.

    .venv/bin/python tools/bench.py [--models mobilenet,digits] [--threads 1,2] [--seconds S]
                                    [--short] [--json] [--soak MINUTES] [--workdir DIR]
                                    [--runs a,b,c,c'] [--repeat N] [--wait-idle S] [--daemon SCRIPT]
                                    [--monitoring]

For each model and thread count, side by side, each run in a fresh process:

(a)  bare: ``Model(threads=N)`` invoked in a loop on a preloaded input: the limit.
(b)  naive: ``cv2.VideoCapture`` -> ``cv2.resize`` -> numpy quantize -> LiteRT invoke -> argmax ->
     ``json.dumps`` -> paho publish (QoS 1), one after the other, as a user would write it.
(c)  edge-runtime: ``python -m edge_runtime run`` on a 640x480 MJPG video (lock-step, as fast as
     the pipeline goes), publishing at QoS 1 through its SQLite outbox to a real mosquitto; fps and
     capture-to-subscriber latency are measured at a real subscriber in this process.
(c') edge-runtime with the camera capped at half the fps of (c) (a real-time video at that rate):
     the latency of a pipeline that is not saturated.

Columns: fps and the ratio to (a); latency p50/p95/p99 (a: invoke; b: one frame, read to publish;
c: capture to subscriber); per-stage medians; CPU % (100 = one core) and peak RSS of the measured
process; seconds from process start to the first result (a: first invoke; b, c: first message
at the subscriber). ``--json`` prints everything as JSON on stdout (the tables go to stderr).
``--short`` is the CI variant (about a minute, plus the short ``--monitoring``). ``--monitoring``
instead measures what the device's monitoring costs (``benchkit.monitoring``).
``--soak MINUTES`` runs (c) that long instead of the tables, sampling the daemon's RSS every 10 s,
and reports its growth. On a shared machine,
``--wait-idle S --repeat N`` waits for quiet seconds and keeps the least disturbed of N runs (a
warning under a table names each row during which other processes used over 15 % of the CPU).
``--daemon SCRIPT`` runs (c) through a script that calls ``edge_runtime.cli.main()`` (to profile
it or to measure a change without editing the package). docs/performance.md has the figures.

Models: ``mobilenet`` (models/mobilenet_v2_int8.tflite), ``digits`` (the bundled digits CNN), or
any .tflite path; a 3-channel input gets MobileNet preprocessing (stretch, RGB, (x - 127.5) / 127.5),
a 1-channel input the digits one (centre crop, grey, x / 255). A missing model is skipped with a note.

Needs ``mosquitto`` on the PATH (``apt-get install mosquitto``). Runs only on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's devkit (dev-only)

from benchkit.children import child_main
from benchkit.combos import bench_combo, resolve_models, soak
from benchkit.common import CHILD, DAEMON, VIDEO_FRAMES, VIDEO_SIZE, log
from benchkit.many import round_two
from benchkit.measure import machine, wait_idle
from benchkit.monitoring import run_and_print as run_monitoring
from benchkit.report import _finite, evaluate, format_checks, format_combo, format_soak
from benchkit.video import make_video

from devkit.broker import Mosquitto
from devkit.mqtt_client import Subscriber


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == CHILD:
        return child_main(args_list[1:])
    parser = argparse.ArgumentParser(
        prog="tools/bench.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", default="mobilenet,digits", help="mobilenet, digits or .tflite paths (comma-separated)"
    )
    parser.add_argument("--threads", default="1,2", help="thread counts (comma-separated)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per run (default 20; --short: 2)"
    )
    parser.add_argument(
        "--short", action="store_true", help="CI: digits and mobilenet, threads 1 and 2, about a minute"
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the tables go to stderr)")
    parser.add_argument(
        "--soak", type=float, default=None, metavar="MINUTES", help="run (c) this long, report RSS growth"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep configs and daemon logs here")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle (shared machines)",
    )
    parser.add_argument(
        "--daemon",
        default=None,
        metavar="SCRIPT",
        help="run (c) as 'python SCRIPT run --config ...' instead of 'python -m edge_runtime run ...': "
        "a script that calls edge_runtime.cli.main(), to profile the daemon or try a change",
    )
    parser.add_argument(
        "--runs",
        default="a,b,c,c'",
        help="which rows to run (comma-separated from a, b, c, c'; c' needs c, which it runs)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="make each run N times and keep the one least disturbed by other processes",
    )
    parser.add_argument(
        "--round2",
        action="store_true",
        help="instead of (a)-(c'): (d) the daemon against a two-thread decode+invoke loop, with LiteRT "
        "and (a slow invoke) tflite-runtime in .venv-tflite when it exists, and (e) N cameras into "
        "one model (benchkit.many); the first model is used for (e); --cameras '' for (d) only",
    )
    parser.add_argument("--cameras", default="4,8,16", help="(e): camera counts (comma-separated)")
    parser.add_argument(
        "--modes", default="per-camera,shared,fan-in", help="(e): per-camera, shared, fan-in (comma list)"
    )
    parser.add_argument("--camera-fps", type=float, default=15.0, help="(e): each camera's frame rate")
    parser.add_argument("--no-limit", action="store_true", help="--round2: only (e), not (d)")
    parser.add_argument(
        "--batches", default="1", help="(e): fan-in batch sizes, each a row (comma list, e.g. 1,4,8)"
    )
    parser.add_argument(
        "--monitoring",
        action="store_true",
        help="instead of (a)-(c'): the cost of monitoring (benchkit.monitoring)",
    )
    args = parser.parse_args(args_list)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # cleanup runs
    if args.daemon:
        DAEMON[:] = [str(Path(args.daemon).resolve())]
    seconds = args.seconds if args.seconds is not None else (2.0 if args.short else 20.0)
    warmup_s = 0.3 if args.short else 1.0
    models = resolve_models(_csv(args.models))
    try:
        threads = [int(t) for t in _csv(args.threads)]
    except ValueError:
        parser.error(f"--threads: not a list of integers: {args.threads!r}")
    if not models or not threads or min(threads) < 1:
        parser.error("give at least one model and thread counts >= 1")
    rows = frozenset(_csv(args.runs))
    if not rows or not rows <= {"a", "b", "c", "c'"}:
        parser.error(f"--runs: expected some of a, b, c, c', got {args.runs!r}")

    report: dict[str, Any] = {
        "machine": machine(),
        "seconds": seconds,
        "short": args.short,
        "repeat": args.repeat,
        "daemon": [Path(sys.executable).name, *DAEMON],
        "combos": [],
    }
    notes: list[str] = []
    available = []
    for label, path in models:
        if path.is_file():
            available.append((label, path))
        else:
            notes.append(f"{label}: {path} not found: skipped (tools/build_models.py builds it)")
    for note in notes:
        log(f"note: {note}")
    if not available:
        log("bench: no model to run")
        return 1
    log("bench: preparing the 640x480 test video ...")
    video = make_video()
    _, busy = wait_idle(args.wait_idle)
    report["busy_before_pct"] = busy
    if busy > 10:
        notes.append(
            f"the machine was {busy:.0f} % busy before the bench started (other processes): "
            "figures are lower than on an idle machine"
        )
        log(f"note: {notes[-1]}")
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-bench-")))
        broker = stack.enter_context(Mosquitto(workdir, extra_config="max_queued_messages 100000"))
        sub = stack.enter_context(
            Subscriber(
                broker.host,
                broker.port,
                ["bench/+/pipelines/+/results", "naive/+/results"],
                client_id="bench-subscriber",
                keepalive=60,
            )
        )
        report["video"] = {
            "path": str(video),
            "size": list(VIDEO_SIZE),
            "frames": VIDEO_FRAMES,
            "codec": "MJPG",
        }
        out = sys.stderr if args.json else sys.stdout
        monitoring = (available, threads[0], seconds, warmup_s, workdir, broker.port, sub, video, out)
        if args.round2:
            m = report["machine"]
            print(
                f"edge-runtime bench (d), (e), {m['date']}, {m['cpus']} x {m['cpu_model']}, "
                f"{seconds:g} s per run",
                file=out,
                flush=True,
            )
            started = time.monotonic()
            result = round_two(
                available, threads, [int(c) for c in _csv(args.cameras)], _csv(args.modes), seconds,
                warmup_s, workdir, broker.port, sub, video, make_video(args.camera_fps), args.wait_idle,
                args.camera_fps, not args.no_limit, tuple(int(b) for b in _csv(args.batches)),
                max(1, args.repeat),
            )  # fmt: skip
            report["round2"] = result
            print(result["limit_table"], file=out)
            print("", file=out)
            print(result["many_table"], file=out)
            print(f"total {time.monotonic() - started:.0f} s", file=out, flush=True)
        elif args.monitoring:
            run_monitoring(report, args.short, *monitoring)
        elif args.soak is not None:
            label, path = available[0]
            result = soak(label, path, threads[0], args.soak, workdir, broker, sub, video)
            report["soak"] = result
            print(format_soak(result), file=out, flush=True)
        else:
            started = time.monotonic()
            combos = []
            for label, path in available:
                for n in threads:
                    combo = bench_combo(
                        label, path, n, seconds, warmup_s, workdir, broker, sub, video, args.wait_idle,
                        max(1, args.repeat), rows,
                    )  # fmt: skip
                    combos.append(combo)
            report["combos"] = [
                {
                    "model": c.model,
                    "path": c.path,
                    "threads": c.threads,
                    "half_fps": c.half_fps,
                    "note": c.note,
                    "runs": {
                        k: {**asdict(r), "cpu_ms_per_result": r.cpu_pct * 10 / r.fps if r.fps > 0 else None}
                        for k, r in c.runs.items()
                    },
                }
                for c in combos
            ]
            checks = evaluate(combos)
            report["targets"] = checks
            report["elapsed_s"] = round(time.monotonic() - started, 1)
            m = report["machine"]
            print(
                f"edge-runtime bench, {m['date']}, {m['cpus']} x {m['cpu_model']}, {m['memory_gb']} GB, "
                f"{seconds:g} s per run, video {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} MJPG, mosquitto QoS 1",
                file=out,
            )
            for combo in combos:
                print("", file=out)
                print(format_combo(combo), file=out)
            print("", file=out)
            print(format_checks(checks), file=out)
            for note in notes:
                print(f"note: {note}", file=out)
            print(f"total {report['elapsed_s']:g} s", file=out, flush=True)
            if args.short:  # the short --monitoring adds about 10 s
                print("", file=out)
                run_monitoring(report, True, *monitoring)
        report["notes"] = notes
    if args.json:
        print(json.dumps(_finite(report), indent=2, default=str, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
