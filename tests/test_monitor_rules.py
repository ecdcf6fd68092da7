"""The Prometheus alerting rules (devices/prometheus/) checked by Debian's promtool, and every
metric they name is one the daemon exports (read from a real health document's families and the
standard process collector). tests/test_prometheus.py evaluates them in a running Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "devices" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian bookworm: 2.42)")
    return path


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run(
        [tool, "check", "rules", "edge-runtime-rules.yml"],
        check=False,
        cwd=RULES,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "SUCCESS: 12 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run(
        [tool, "test", "rules", "edge-runtime-rules.test.yml"],
        check=False,
        cwd=RULES,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_every_metric_the_rules_name_is_exported() -> None:
    from edge_runtime.reporting.metrics import families

    doc = {
        "version": "x",
        "device": "d",
        "uptime_s": 1,
        "state": "ok",
        "problems": [],
        "pipelines": {"p": {"results": 1, "fps_out": 1.0, "paused": False, "latency_ms": {}}},
        "sources": {"c": {"type": "camera", "state": "up"}},
        "outbox": {"depth": 0},
        "mqtt": {"connected": True, "reconnects": 0},
        "system": {"rss_bytes": 1},
        "monitor": {
            "tamper": {"c": {"states": {"covered": False}}},
            "behind": 0,
            "quality": {"p": {"default": {"short": {}, "long": {}, "low_mean_confidence": False}}},
            "drift": {"p": {"level": "ok", "input": {"level": "drift"}}},
        },
    }
    from prometheus_client import CollectorRegistry, ProcessCollector

    exported = set()
    for family in families(doc):
        exported |= {s.name for s in family.samples}
    for family in ProcessCollector(registry=CollectorRegistry()).collect():
        exported |= {s.name for s in family.samples}
    text = (RULES / "edge-runtime-rules.yml").read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:edge_runtime|process)_\w+)", text))
    assert "process_resident_memory_bytes" in named
    assert named and named <= exported, sorted(named - exported)
