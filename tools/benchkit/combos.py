"""One model at one thread count, side by side; and the soak."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchkit.common import MODEL_PATHS, REPO, log
from benchkit.measure import wait_idle
from benchkit.runs import Run, run_bare, run_naive, run_pipeline
from benchkit.video import make_video
from devkit.broker import Mosquitto
from devkit.mqtt_client import Subscriber

# -- the bench --------------------------------------------------------------------------------------


@dataclass
class Combo:
    model: str
    path: str
    threads: int
    runs: dict[str, Run] = field(default_factory=dict)
    half_fps: float = float("nan")
    note: str = ""


def resolve_models(names: Sequence[str]) -> list[tuple[str, Path]]:
    found = []
    for name in names:
        path = MODEL_PATHS.get(name, Path(name))
        label = name if name in MODEL_PATHS else path.stem
        if name in MODEL_PATHS and not path.is_absolute():
            path = REPO / path
        found.append((label, path))
    return found


def input_channels(path: Path) -> int:
    """Channels of the model's first input (3: MobileNet preprocessing, 1: digits)."""
    from edge_runtime.runtime.modelfile import read_model_file

    info, _ = read_model_file(path)
    return int(info.input_tensors[0].shape[-1])


def other_load(run: Run) -> float:
    """CPU % of the machine (100 = every core) not used by the measured process during ``run``."""
    return run.machine_busy_pct - run.cpu_pct / (os.cpu_count() or 1)


def bench_combo(
    label: str,
    path: Path,
    threads: int,
    seconds: float,
    warmup_s: float,
    workdir: Path,
    broker: Mosquitto,
    sub: Subscriber,
    video: Path,
    idle_s: float = 0.0,
    repeat: int = 1,
    rows: frozenset[str] = frozenset(("a", "b", "c", "c'")),
) -> Combo:
    """(a), (b), (c), (c') for one model and thread count. With ``repeat`` > 1 each run is made
    that many times and the one least disturbed by the rest of the machine is kept (all are in
    ``extra["repeats"]``)."""
    combo = Combo(label, str(path), threads)
    tag = f"{label}-t{threads}"

    def measure(name: str, make: Callable[[int], Run]) -> Run:
        runs: list[Run] = []
        for i in range(repeat):
            waited, busy = wait_idle(idle_s)
            if idle_s > 0 and busy >= 10:
                log(f"{tag}: the machine is still {busy:.0f} % busy after {waited:.0f} s: running anyway")
            log(f"{tag}: {name}" + (f" ({i + 1}/{repeat})" if repeat > 1 else "") + " ...")
            run = make(i)
            run.extra.update(waited_idle_s=round(waited, 1), busy_before_pct=round(busy, 1))
            runs.append(run)
            if run.error:
                break
        good = [r for r in runs if not r.error]
        chosen = min(good, key=other_load) if good else runs[-1]
        if repeat > 1:
            chosen.extra["repeats"] = [
                {
                    "fps": r.fps,
                    "p99_ms": r.latency_ms.get("p99"),
                    "other_load_pct": other_load(r),
                    "error": r.error,
                }
                for r in runs
            ]
        p99 = chosen.latency_ms.get("p99", float("nan"))
        log(f"{tag}: {name}: {chosen.fps:.1f} fps, p99 {p99:.3f} ms {chosen.error}")
        return chosen

    if "a" in rows:
        bare = combo.runs["a"] = measure(
            "(a) bare invoke loop", lambda i: run_bare(path, threads, seconds, warmup_s)
        )
        if bare.error:
            combo.note = f"bare run failed: {bare.error}"
            return combo
    channels = input_channels(path)
    if "b" in rows:
        combo.runs["b"] = measure(
            "(b) naive loop",
            lambda i: run_naive(path, threads, seconds, warmup_s, video, broker.port, sub, f"{tag}-{i}"),
        )
    if not rows & {"c", "c'"}:
        return combo
    pipe = combo.runs["c"] = measure(
        "(c) edge-runtime",
        lambda i: run_pipeline(
            "edge-runtime",
            workdir,
            f"{tag}-{i}",
            path,
            threads,
            channels,
            video,
            False,
            seconds,
            warmup_s,
            broker.port,
            sub,
        ),
    )
    if pipe.error or not pipe.fps > 0 or "c'" not in rows:
        return combo
    combo.half_fps = round(pipe.fps / 2, 1)
    half_video = make_video(combo.half_fps, workdir)
    combo.runs["c'"] = measure(
        f"(c') edge-runtime at {combo.half_fps:g} fps",
        lambda i: run_pipeline(
            f"edge-runtime at {combo.half_fps:g} fps",
            workdir,
            f"{tag}-half-{i}",
            path,
            threads,
            channels,
            half_video,
            True,
            seconds,
            warmup_s,
            broker.port,
            sub,
        ),
    )
    return combo


def soak(
    label: str,
    path: Path,
    threads: int,
    minutes: float,
    workdir: Path,
    broker: Mosquitto,
    sub: Subscriber,
    video: Path,
) -> dict[str, Any]:
    """(c) for ``minutes``, RSS sampled every 10 s; growth after a warm-up of 1 minute (or 10 %)."""
    channels = input_channels(path)
    seconds = minutes * 60
    log(f"soak: {label}, {threads} thread{'s' if threads > 1 else ''}, {minutes:g} min of (c) ...")
    run = run_pipeline(
        "edge-runtime soak", workdir, f"soak-{label}-t{threads}", path, threads, channels, video, False,
        seconds, 0.0, broker.port, sub, sample_every_s=10.0,
    )  # fmt: skip
    samples = run.extra.get("rss_samples_mb", [])
    warm = min(60.0, seconds * 0.1)
    after = [(t, r) for t, r in samples if t >= warm]
    growth = slope = float("nan")
    if len(after) >= 2:
        growth = after[-1][1] - after[0][1]
        ts = np.asarray([t for t, _ in after])
        rs = np.asarray([r for _, r in after])
        slope = float(np.polyfit(ts, rs, 1)[0]) * 600  # MB per 10 minutes
    return {
        "model": label,
        "threads": threads,
        "minutes": minutes,
        "fps": run.fps,
        "latency_ms": run.latency_ms,
        "cpu_pct": run.cpu_pct,
        "peak_rss_mb": run.peak_rss_mb,
        "rss_start_mb": after[0][1] if after else float("nan"),
        "rss_end_mb": after[-1][1] if after else float("nan"),
        "rss_growth_mb": growth,
        "rss_slope_mb_per_10min": slope,
        "warmup_s": warm,
        "samples": samples,
        "error": run.error,
        "pipeline_stats": run.extra.get("pipeline_stats"),
    }
