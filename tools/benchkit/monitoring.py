"""``tools/bench.py --monitoring``: what the device's monitoring (``edge_runtime/monitor/``) costs.

Three parts, one table:

1. per call, in this process: one tamper check of a 640x480 frame (measurement and states), the
   quality ``observe`` of one result, the output-drift observe, one input-drift sample of a digits
   input and of a 224x224x3 input, a capture offer that no rule matches, and the whole
   ``Monitor.observe`` of one result (latency histograms, quality, drift); the cases take turns
   (interleaved repeats) and each row is the median of the repeats, in microseconds per call;
2. the daemon side by side: run (c) of the bench (lock-step on the 640x480 MJPG video, QoS 1 to
   mosquitto) with monitoring fully on (tamper at the default ``check_hz``, quality, drift against
   the bundled reference, input drift of every input, a capture table with ``random = 0.01`` and a
   quota) and fully off, on and off interleaved in pairs; medians of results/s, the ratio on/off,
   p50 capture-to-subscriber latency, CPU % and RSS;
3. the memory monitoring holds: tracemalloc of a :class:`Monitor` with one camera and one 10-class
   pipeline whose drift and input-drift windows are full (and the RSS difference of part 2).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from benchkit.common import MODEL_PATHS, log
from benchkit.runs import Run, run_pipeline
from devkit.mqtt_client import Subscriber

HTTP = """
[http]
port = 0
"""
"""Both sides: the HTTP API on a free port (the default 8478 may be taken on a shared machine)."""

MONITOR_ON = (
    HTTP
    + """
[monitor.tamper]
enabled = true

[monitor.quality]
enabled = true

[monitor.drift]
enabled = true
input_every = 1

[monitor.capture.bench]
random = 0.01
quota_bytes = 4194304
"""
)
"""Monitoring fully on: defaults, input drift of every inference (the worst case), capture."""

MONITOR_OFF = (
    HTTP
    + """
[monitor.tamper]
enabled = false

[monitor.quality]
enabled = false

[monitor.drift]
enabled = false
"""
)
"""Monitoring off (and no capture table)."""

LABELS = [str(i) for i in range(10)]


@dataclass
class MonitoringResult:
    """What ``--monitoring`` measured (``asdict`` for ``--json``)."""

    micro_us: dict[str, float] = field(default_factory=dict)
    micro_repeats_us: dict[str, list[float]] = field(default_factory=dict)
    memory_kb: dict[str, float] = field(default_factory=dict)
    daemon: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- 1. per-call costs --------------------------------------------------------------------------


def result_doc(i: int, sha256: str = "") -> dict[str, Any]:
    """A classification result document as the daemon emits it (10 classes, top-1 cycling)."""
    label = LABELS[i % len(LABELS)]
    return {
        "v": 1,
        "device": "bench",
        "pipeline": "bench",
        "seq": i,
        "ts": 0.0,
        "frame_ts": 0.0,
        "model": {"name": "digits_int8", "sha256": sha256, "version": "1"},
        "latency_ms": {"pre": 0.4, "invoke": 0.1, "post": 0.05, "total": 0.6},
        "result": {
            "type": "classification",
            "top": [{"index": int(label), "label": label, "score": 0.75 + 0.02 * (i % 10)}],
            "event": False,
            "event_labels": [],
        },
    }


def _digits_reference() -> dict[str, Any]:
    from edge_runtime.monitor.drift import manifest_reference

    ref = manifest_reference(MODEL_PATHS["digits"])
    if ref is None:
        raise RuntimeError(f"{MODEL_PATHS['digits']}: no monitor_reference in its manifest")
    return ref


def _digits_inputs(count: int) -> list[npt.NDArray[Any]]:
    """Digits inputs as the pipeline feeds them (int8, [1, 8, 8, 1]), from the held-out set."""
    from edge_runtime.monitor.inputdrift import as_fed
    from edge_runtime.runtime.model import Model

    model = Model(MODEL_PATHS["digits"])
    spec = model.inputs[0]
    with np.load(MODEL_PATHS["digits"].parent / "digits_heldout.npz") as data:
        images = np.asarray(data["images"][:count], dtype=np.float64) / 255.0
    fed = as_fed(images.reshape((len(images), *spec.shape[1:])), spec)
    return [fed[i : i + 1] for i in range(len(fed))]


def _mobilenet_case() -> tuple[list[dict[str, Any]], list[npt.NDArray[Any]]] | None:
    """A 224x224x3 input reference (from real scenes: mobilenet has no held-out set) and inputs."""
    import cv2

    from devkit.media import scene
    from edge_runtime.monitor.inputdrift import as_fed, input_reference
    from edge_runtime.runtime.model import Model

    path = MODEL_PATHS["mobilenet"]
    if not path.is_file():
        return None
    spec = Model(path).inputs[0]
    frames = np.stack([cv2.resize(scene(s), (224, 224)) for s in range(8)]) / 127.5 - 1.0
    fed = as_fed(frames, spec)
    return [input_reference(fed, name="image", position=0)], [fed[i : i + 1] for i in range(len(fed))]


class _Capture:
    """A pipeline as the capture sees it (:class:`~edge_runtime.monitor.capture_worker.Hooked`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capture: Callable[..., None] | None = None


def micro(repeats: int = 7, calls: int = 300) -> tuple[dict[str, float], dict[str, list[float]], list[str]]:
    """µs per call of each case: ``repeats`` rounds, each timing ``calls`` calls of every case in
    turn; per case the median round. Returns (medians, every round, notes)."""
    from devkit.media import noisy, scene
    from edge_runtime.monitor.capture import CaptureConfig
    from edge_runtime.monitor.capture_worker import Capturer
    from edge_runtime.monitor.config import MonitorConfig, QualityConfig, TamperConfig
    from edge_runtime.monitor.drift import output_drift
    from edge_runtime.monitor.inputdrift import LiveInputDrift
    from edge_runtime.monitor.quality import Quality
    from edge_runtime.monitor.service import Monitor, Reference
    from edge_runtime.monitor.tamper import TamperDetector

    notes: list[str] = []
    rng = np.random.default_rng(5)
    frames = [noisy(scene(1), rng) for _ in range(8)]
    docs = [result_doc(i) for i in range(100)]
    ref = _digits_reference()
    digits_in = _digits_inputs(64)

    def quiet(kind: str, message: str, data: dict[str, Any]) -> None:
        return None

    detector = TamperDetector(TamperConfig())
    quality = Quality(QualityConfig(), quiet)
    drift = output_drift(ref)
    live_digits = LiveInputDrift(ref["inputs"], every=1)
    monitor = Monitor(quiet)
    monitor.start(
        MonitorConfig.model_validate({"tamper": {"enabled": False}}),
        {},
        {"bench": Reference(ref, "0" * 64)},
    )
    clock = [0.0]

    def tamper(j: int) -> None:
        clock[0] += 0.2
        detector.update(frames[j % 8], clock[0])

    def quality_observe(j: int) -> None:
        clock[0] += 0.001
        quality.observe(docs[j % 100], clock[0])

    def drift_observe(j: int) -> None:
        drift.observe(docs[j % 100]["result"])

    def input_digits(j: int) -> None:
        if live_digits.due():
            live_digits.add(0, digits_in[j % len(digits_in)])

    def monitor_observe(j: int) -> None:
        monitor.observe(docs[j % 100])

    cases: dict[str, Callable[[int], None]] = {
        "tamper check 640x480": tamper,
        "quality observe": quality_observe,
        "output drift observe": drift_observe,
        "input drift sample, digits 8x8x1": input_digits,
    }
    mobile = _mobilenet_case()
    if mobile is None:
        notes.append(f"{MODEL_PATHS['mobilenet']} not found: no 224x224x3 input drift row")
    else:
        live_mobile = LiveInputDrift(mobile[0], every=1)
        mobile_in = mobile[1]

        def input_mobile(j: int) -> None:
            if live_mobile.due():
                live_mobile.add(0, mobile_in[j % len(mobile_in)])

        cases["input drift sample, 224x224x3"] = input_mobile

    with tempfile.TemporaryDirectory(prefix="edge-bench-capture-") as state:
        capturer = Capturer()
        hooked = _Capture("bench")
        # a rule that no result of the docs matches (their scores are 0.75 and up)
        capturer.start({"bench": CaptureConfig(low_confidence=0.1)}, [hooked], Path(state))
        try:

            def capture_offer(j: int) -> None:
                capturer.offer(docs[j % 100], {}, [])

            cases["capture offer, no rule matches"] = capture_offer
            cases["Monitor.observe (latency, quality, drift)"] = monitor_observe
            for run in cases.values():  # warm up (first calls allocate)
                for j in range(50):
                    run(j)
            rounds: dict[str, list[float]] = {name: [] for name in cases}
            perf = time.perf_counter
            for r in range(repeats):
                for name, run in cases.items():
                    n = calls if name != "tamper check 640x480" else max(1, calls // 3)
                    t0 = perf()
                    for j in range(r * n, (r + 1) * n):
                        run(j)
                    rounds[name].append((perf() - t0) / n * 1e6)
        finally:
            capturer.stop()
            monitor.stop()
        offered = capturer.pipelines["bench"].candidates
        if offered:
            notes.append(f"capture offer: {offered} results matched a rule (expected none)")
    return {k: statistics.median(v) for k, v in rounds.items()}, rounds, notes


# -- 3. memory ----------------------------------------------------------------------------------


class _StubCamera:
    """A camera for :class:`Monitor` (a :class:`~edge_runtime.sources.base.FrameSource`): each
    ``peek`` returns the next of a few 640x480 frames."""

    def __init__(self, images: list[npt.NDArray[np.uint8]]) -> None:
        self.images = images
        self.seq = 0

    def _next(self) -> Any:
        from edge_runtime.sources.base import Frame

        self.seq += 1
        return Frame(self.images[self.seq % len(self.images)], self.seq, time.monotonic(), time.time())

    def get(self, after_seq: int = 0, timeout: float = 1.0) -> Any:
        return self._next()

    def latest(self) -> Any:
        return self._next()

    def peek(self) -> Any:
        return self._next()


def memory(results: int = 20000, span_s: float = 4000.0) -> dict[str, float]:
    """KB a :class:`Monitor` holds (tracemalloc): one camera after tamper checks, one 10-class
    pipeline after ``results`` results over ``span_s`` seconds (the quality windows), its output-
    drift window (500) and input-drift window (200 digits inputs) full. The inputs and frames
    are made before the baseline: only what the monitor keeps is counted."""
    from devkit.media import noisy, scene
    from edge_runtime.monitor.config import MonitorConfig
    from edge_runtime.monitor.service import Monitor, Reference

    rng = np.random.default_rng(7)
    images = [noisy(scene(1), rng) for _ in range(4)]
    ref = _digits_reference()
    digits_in = _digits_inputs(64)
    docs = [result_doc(i) for i in range(100)]
    config = MonitorConfig.model_validate({"tamper": {"check_hz": 0.1}, "drift": {"input_every": 1}})

    def quiet(kind: str, message: str, data: dict[str, Any]) -> None:
        return None

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        monitor = Monitor(quiet)
        monitor.start(config, {"camera": _StubCamera(images)}, {"bench": Reference(ref, "0" * 64)})
        monitor.stop()  # the checks below are made here, not by the thread
        for _ in range(20):
            monitor.check_once()
        t0 = time.monotonic()
        quality = monitor.quality
        assert quality is not None
        for i in range(results):
            quality.observe(docs[i % 100], t0 + i * span_s / results)
        for i in range(600):
            monitor.observe(docs[i % 100])
        live_in = monitor.input_drift["bench"]
        for i in range(250):
            live_in.add(0, digits_in[i % len(digits_in)])
        monitor.stats()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del monitor
    return {"monitor_kb": total / 1024}


# -- 2. the daemon side by side -----------------------------------------------------------------


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def _summary(runs: list[Run]) -> dict[str, Any]:
    return {
        "fps": _median([r.fps for r in runs]),
        "p50_ms": _median([r.latency_ms.get("p50", float("nan")) for r in runs]),
        "cpu_pct": _median([r.cpu_pct for r in runs]),
        "rss_mb": _median([r.rss_mb for r in runs]),
        "rss_anon_mb": _median([float(r.extra.get("rss_anon_mb", float("nan"))) for r in runs]),
        "each_fps": [round(r.fps, 1) for r in runs],
        "errors": [r.error for r in runs if r.error],
        "log_errors": [e for r in runs for e in r.extra.get("log_errors", [])][:3],
    }


def daemon_pairs(
    label: str,
    model: Path,
    threads: int,
    pairs: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
) -> dict[str, Any]:
    """Run (c) with monitoring on and off, ``pairs`` times in turn (on first in odd pairs, off first
    in even ones); the medians of each side and their ratios."""
    from edge_runtime.runtime.model import Model

    channels = int(Model(model).inputs[0].shape[-1])
    sides: dict[str, list[Run]] = {"on": [], "off": []}
    for i in range(pairs):
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        for side in order:
            tag = f"mon-{label}-{side}-{i}"
            extra = MONITOR_ON if side == "on" else MONITOR_OFF
            run = run_pipeline(
                f"monitoring {side}", workdir, tag, model, threads, channels, video, False, seconds, warmup_s,
                port, sub, extra_toml=extra,
            )  # fmt: skip
            log(f"bench: {label} monitoring {side} pair {i + 1}: {run.fps:.1f} results/s {run.error}")
            sides[side].append(run)
    on, off = _summary(sides["on"]), _summary(sides["off"])
    return {
        "model": label,
        "path": str(model),
        "threads": threads,
        "on": on,
        "off": off,
        "fps_ratio": on["fps"] / off["fps"] if off["fps"] else float("nan"),
        # per pair, then the median: a pair ran close in time, under similar load
        "pair_ratios": [
            a.fps / b.fps if b.fps else float("nan") for a, b in zip(sides["on"], sides["off"], strict=True)
        ],
        "rss_diff_mb": on["rss_mb"] - off["rss_mb"],
        "rss_anon_diff_mb": on["rss_anon_mb"] - off["rss_anon_mb"],
    }


def bench_monitoring(
    models: list[tuple[str, Path]],
    threads: int,
    seconds: float,
    warmup_s: float,
    short: bool,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
) -> MonitoringResult:
    """The three parts (``short``: fewer repeats, one pair, digits only)."""
    result = MonitoringResult(seconds=seconds, pairs=1 if short else 3)
    log("bench --monitoring: per-call costs ...")
    result.micro_us, result.micro_repeats_us, notes = micro(
        repeats=3 if short else 9, calls=100 if short else 400
    )
    result.notes += notes
    log("bench --monitoring: memory ...")
    result.memory_kb = memory(results=2000 if short else 20000)
    chosen = [(label, path) for label, path in models if not short or label == "digits"] or models[:1]
    for label, path in chosen:
        log(f"bench --monitoring: {label}, monitoring on and off, {result.pairs} pairs ...")
        result.daemon[label] = daemon_pairs(
            label, path, threads, result.pairs, seconds, warmup_s, workdir, port, sub, video
        )
    return result


def rows(result: MonitoringResult) -> list[tuple[str, float, str]]:
    """The table's rows: (what, figure, unit)."""
    out: list[tuple[str, float, str]] = [(k, v, "µs/call") for k, v in result.micro_us.items()]
    for label, d in result.daemon.items():
        for side in ("on", "off"):
            s = d[side]
            out += [
                (f"{label} monitoring {side}: results/s", s["fps"], "1/s"),
                (f"{label} monitoring {side}: p50 latency", s["p50_ms"], "ms"),
                (f"{label} monitoring {side}: CPU", s["cpu_pct"], "%"),
                (f"{label} monitoring {side}: RSS", s["rss_mb"], "MB"),
            ]
        out += [
            (f"{label} results/s on/off (median of runs)", d["fps_ratio"], "ratio"),
            (f"{label} results/s on/off (median of pairs)", _median(d["pair_ratios"]), "ratio"),
            (f"{label} RSS on - off", d["rss_diff_mb"], "MB"),
        ]
    out += [("Monitor memory (tracemalloc)", result.memory_kb.get("monitor_kb", float("nan")), "KB")]
    return out


def format_monitoring(result: MonitoringResult, header: str) -> str:
    lines = [header, f"{'what':<52} {'figure':>10}  unit"]
    for name, value, unit in rows(result):
        digits = 3 if abs(value) < 10 else 1
        figure = f"{value:>10.{digits}f}" if not math.isnan(value) else f"{'-':>10}"
        lines.append(f"{name:<52} {figure}  {unit}")
    for label, d in result.daemon.items():
        lines.append(
            f"{label}: results/s on {d['on']['each_fps']}, off {d['off']['each_fps']}; "
            f"{d['threads']} thread(s), {result.pairs} pairs of {result.seconds:g} s, medians"
        )
        for side in ("on", "off"):
            for error in d[side]["errors"] + d[side]["log_errors"]:
                lines.append(f"  {side}: {error}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def finite_rows(result: MonitoringResult) -> Mapping[str, float]:
    """Every row's figure by name (for the test: each must be finite)."""
    return {name: value for name, value, _ in rows(result)}


def run_and_print(
    report: dict[str, Any],
    short: bool,
    models: list[tuple[str, Path]],
    threads: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    port: int,
    sub: Subscriber,
    video: Path,
    out: TextIO,
) -> None:
    """``--monitoring`` (and the short version that ``--short`` adds): measure, print the table,
    put the figures under ``report["monitoring"]``."""
    started = time.monotonic()
    result = bench_monitoring(models, threads, seconds, warmup_s, short, workdir, port, sub, video)
    report["monitoring"] = asdict(result)
    m = report["machine"]
    header = (
        f"edge-runtime bench --monitoring{' (short)' if short else ''}, {m['date']}, "
        f"{m['cpus']} x {m['cpu_model']}"
    )
    print(format_monitoring(result, header), file=out)
    print(f"monitoring: {time.monotonic() - started:.0f} s", file=out, flush=True)
