"""``tools/bench.py --monitoring`` end to end on a tiny setting: every row of its table has a finite
figure (the figures themselves are docs/monitoring.md's, measured by the bench, not asserted here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MICRO_ROWS = [
    "tamper check 640x480",
    "quality observe",
    "output drift observe",
    "input drift sample, digits 8x8x1",
    "input drift sample, 224x224x3",
    "capture offer, no rule matches",
    "Monitor.observe (latency, quality, drift)",
]
DAEMON_ROWS = [
    f"digits monitoring {side}: {what}"
    for side in ("on", "off")
    for what in ("results/s", "p50 latency", "CPU", "RSS")
] + [
    "digits results/s on/off (median of runs)",
    "digits results/s on/off (median of pairs)",
    "digits RSS on - off",
]
MEMORY_ROWS = ["Monitor memory (tracemalloc)"]


def test_bench_monitoring_prints_every_row_with_a_finite_figure(tmp_path: Path) -> None:
    tiny = ["--monitoring", "--short", "--models", "digits", "--threads", "1", "--seconds", "0.5", "--json"]
    proc = subprocess.run(
        [sys.executable, "tools/bench.py", *tiny, "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = {  # with --json the table goes to stderr: a name padded to 52, the figure, the unit
        line[:52].strip(): line[52:].split()[0]
        for line in proc.stderr.splitlines()
        if len(line) > 52 and len(line[52:].split()) == 2
    }
    for row in MICRO_ROWS + DAEMON_ROWS + MEMORY_ROWS:
        assert row in table, f"{row!r} missing from the table:\n{proc.stderr[-3000:]}"
        assert table[row] != "-" and math.isfinite(float(table[row])), f"{row}: {table[row]}"
    report = json.loads(proc.stdout)["monitoring"]
    assert set(report["micro_us"]) == set(MICRO_ROWS)
    assert all(v > 0 for v in report["micro_us"].values())
    assert report["memory_kb"]["monitor_kb"] > 0
    digits = report["daemon"]["digits"]
    assert digits["on"]["errors"] == [] and digits["off"]["errors"] == []
    assert digits["on"]["fps"] > 0 and digits["off"]["fps"] > 0
    # monitoring was on in the "on" runs: the capture table and the drift reference were used
    captures = list(tmp_path.glob("state-mon-digits-on-0/captures/bench"))
    assert captures, sorted(p.name for p in tmp_path.iterdir())
    on_log = (tmp_path / "mon-digits-on-0.log").read_text()
    assert "drift against reference" in on_log
    assert "drift against reference" not in (tmp_path / "mon-digits-off-0.log").read_text()
