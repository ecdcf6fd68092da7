"""The tables, the checks against the targets, and JSON-safe values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from benchkit.combos import Combo, other_load
from benchkit.common import (
    TARGET_FIRST_RESULT_S,
    TARGET_FPS_RATIO,
    TARGET_LATENCY_MARGIN_MS,
    TARGET_RSS_GROWTH_MB,
    TARGET_RSS_MB,
)

# -- output ----------------------------------------------------------------------------------------


def _f(value: float, width: int, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def _ms(value: float, width: int = 8) -> str:
    digits = 3 if value < 1 else 2 if value < 100 else 1
    return _f(value, width, digits)


ROW_NAMES = {
    "a": "(a) bare invoke",
    "b": "(b) naive loop",
    "c": "(c) edge-runtime",
    "c'": "(c') edge-runtime",
}


def format_combo(combo: Combo) -> str:
    bare = combo.runs.get("a")
    title = f"{combo.model}, {combo.threads} thread{'s' if combo.threads > 1 else ''}"
    if bare is not None and not bare.error:
        shape = "x".join(str(d) for d in bare.extra["input"]["shape"][1:])
        title += f" ({shape} {bare.extra['input']['dtype']}; {bare.extra['delegate']})"
    lines = [title]
    if combo.note:
        lines.append(f"  {combo.note}")
        return "\n".join(lines)
    header = (
        f"  {'run':<27}{'fps':>8}{'x(a)':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'pre ms':>8}{'inv ms':>8}{'post ms':>8}{'CPU %':>7}{'RSS MB':>8}{'first s':>8}"
    )
    lines.append(header)
    base = bare.fps if bare is not None and not bare.error else float("nan")
    for key in ("a", "b", "c", "c'"):
        run = combo.runs.get(key)
        if run is None:
            continue
        name = ROW_NAMES[key] + (f" @{combo.half_fps:g}" if key == "c'" else "")
        if run.error:
            lines.append(f"  {name:<27}failed: {run.error[:150]}")
            continue
        lat = run.latency_ms
        stage = {k: v.get("p50", float("nan")) for k, v in run.stages_ms.items()}
        lines.append(
            f"  {name:<27}{_f(run.fps, 8, 1)}{_f(run.fps / base, 6, 2)}"
            f"{_ms(lat['p50'], 9)}{_ms(lat['p95'], 9)}{_ms(lat['p99'], 9)}"
            f"{_ms(stage.get('pre', float('nan')))}{_ms(stage.get('invoke', float('nan')))}"
            f"{_ms(stage.get('post', float('nan')))}"
            f"{_f(run.cpu_pct, 7, 0)}{_f(run.peak_rss_mb, 8, 1)}{_f(run.first_result_s, 8, 2)}"
        )
    for key, run in combo.runs.items():
        other = other_load(run)
        if not run.error and other > 15:
            lines.append(
                f"  warning: during {ROW_NAMES[key].split()[0]} the rest of the machine used {other:.0f} % "
                "of its CPU (broker, subscriber, other processes): that row is pessimistic"
            )
    b, c = combo.runs.get("b"), combo.runs.get("c")
    a_cpu = f"{bare.cpu_pct * 10 / bare.fps:.1f} ms" if bare is not None and not bare.error else "-"
    if b is not None and c is not None and not b.error and not c.error:
        lines.append(
            f"  (c) vs (b): {c.fps / b.fps:.2f}x the naive loop's fps; latency: a = invoke, "
            "b = read..publish of one frame, c = capture..subscriber"
        )
    if c is not None and not c.error:
        overhead = c.extra.get("overhead_ms_per_result", float("nan"))
        lines.append(
            f"  (c) worker time per result outside invoke (1000/fps - invoke p50): {overhead:.2f} ms; "
            f"CPU per result: {c.cpu_pct * 10 / c.fps:.1f} ms (a: {a_cpu})"
        )
        anon, files = c.extra.get("rss_anon_mb", float("nan")), c.extra.get("rss_file_mb", float("nan"))
        lines.append(
            f"  (c) RSS at the end {c.rss_mb:.1f} MB = own (anonymous) {anon:.1f} MB"
            f" + mapped files {files:.1f} MB"
        )
    return "\n".join(lines)


def evaluate(combos: Sequence[Combo]) -> list[dict[str, Any]]:
    """The issue's targets for every model measured (they are stated for mobilenet_v2_int8)."""
    checks: list[dict[str, Any]] = []

    def add(combo: Combo, name: str, value: float, limit: float, ok: bool, unit: str) -> None:
        checks.append(
            {
                "model": combo.model,
                "threads": combo.threads,
                "target": name,
                "value": None if math.isnan(value) else round(value, 3),
                "limit": round(limit, 3),
                "unit": unit,
                "met": bool(ok) and not math.isnan(value),
            }
        )

    for combo in combos:
        if "mobilenet" not in combo.model.lower():
            continue
        a, b, c, h = (combo.runs.get(k) for k in ("a", "b", "c", "c'"))
        if a is None or c is None or a.error or c.error:
            continue
        ratio = c.fps / a.fps
        add(combo, "fps (c) / (a)", ratio, TARGET_FPS_RATIO, ratio >= TARGET_FPS_RATIO, "x")
        if b is not None and not b.error:
            margin = c.fps / b.fps
            add(combo, "fps (c) / (b)", margin, 1.0, margin > 1.0, "x")
        if h is not None and not h.error:
            limit = a.latency_ms["p99"] + TARGET_LATENCY_MARGIN_MS
            p99 = h.latency_ms["p99"]
            add(combo, "p99 capture->subscriber (c')", p99, limit, p99 <= limit, "ms")
        steady = max(c.rss_mb, h.rss_mb if h is not None and not h.error else 0.0)
        add(combo, "steady RSS (c, c')", steady, TARGET_RSS_MB, steady <= TARGET_RSS_MB, "MB")
        add(combo, "peak RSS (c)", c.peak_rss_mb, TARGET_RSS_MB, c.peak_rss_mb <= TARGET_RSS_MB, "MB")
        add(
            combo,
            "start -> first result (c)",
            c.first_result_s,
            TARGET_FIRST_RESULT_S,
            c.first_result_s <= TARGET_FIRST_RESULT_S,
            "s",
        )
    return checks


def format_checks(checks: Sequence[dict[str, Any]]) -> str:
    lines = ["targets (mobilenet_v2_int8 on a 2-core machine):"]
    if not checks:
        lines.append("  not evaluated: no mobilenet run")
    for ch in checks:
        op = ">" if ch["target"].endswith("/ (b)") else ">=" if ch["unit"] == "x" else "<="
        value = "-" if ch["value"] is None else f"{ch['value']:g}"
        lines.append(
            f"  {ch['model']:<12} t{ch['threads']}  {ch['target']:<31} {value:>8} {ch['unit']:<2} "
            f"(target {op} {ch['limit']:g})  {'met' if ch['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def format_soak(s: dict[str, Any]) -> str:
    if s["error"]:
        return f"soak {s['model']} t{s['threads']}: failed: {s['error']}"
    ok = s["rss_growth_mb"] < TARGET_RSS_GROWTH_MB and s["rss_end_mb"] <= TARGET_RSS_MB
    return "\n".join(
        [
            f"soak: {s['model']}, {s['threads']} thread{'s' if s['threads'] > 1 else ''}, "
            f"{s['minutes']:g} min of (c), RSS every 10 s",
            f"  fps {s['fps']:.1f}, capture->subscriber p50 {s['latency_ms']['p50']:.2f} "
            f"p99 {s['latency_ms']['p99']:.2f} ms, CPU {s['cpu_pct']:.0f} %, "
            f"peak RSS {s['peak_rss_mb']:.1f} MB",
            f"  RSS after {s['warmup_s']:.0f} s warm-up {s['rss_start_mb']:.1f} MB, at the end "
            f"{s['rss_end_mb']:.1f} MB: growth {s['rss_growth_mb']:+.2f} MB "
            f"(trend {s['rss_slope_mb_per_10min']:+.2f} MB / 10 min)",
            f"  target: steady RSS <= {TARGET_RSS_MB:g} MB, growth < {TARGET_RSS_GROWTH_MB:g} MB / 10 min: "
            f"{'met' if ok else 'MISSED'}",
        ]
    )


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
