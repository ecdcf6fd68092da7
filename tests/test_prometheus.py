"""The dashboard and the alerting rules against the real thing (issue 15, items 5 and 6): Debian's
``prometheus`` scrapes two running daemons every second and evaluates the rules file; every PromQL
expression of the Grafana dashboard (devices/grafana/) and of the rules (devices/prometheus/) is
evaluated through ``/api/v1/query`` and must return series of the daemon. A daemon on a covered
(black) camera makes Prometheus raise EdgeRuntimeCameraTamper. And the metric list of
docs/metrics.md is what a running daemon exports, both ways, with each family's type and labels.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.media import write_video
from devkit.paths import ROOT
from devkit.processes import free_port, wait_until
from devkit.prometheus import Prometheus, PrometheusQueryError

RULES = ROOT / "devices" / "prometheus" / "edge-runtime-rules.yml"
DASHBOARD = ROOT / "devices" / "grafana" / "edge-runtime.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
JOB = "edge-runtime"  # the rules select up{job="edge-runtime"}
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval: at a 1 s scrape interval, many samples

_OPERATOR = re.compile(r"==|!=|>=|<=|>|<")
_BOOL = re.compile(r"\s*bool\b")


def as_bool(expr: str) -> str:
    """``expr`` with every comparison outside label matchers and strings in its ``bool`` form,
    so that it returns its series (0 or 1) instead of filtering them out."""
    out: list[str] = []
    i, depth, quote = 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                out.append(expr[i : i + 2])
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and (m := _OPERATOR.match(expr, i)):
            op = m.group()
            out.append(op if _BOOL.match(expr, m.end()) else f"{op} bool")
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def test_as_bool_turns_comparisons_and_leaves_matchers() -> None:
    assert as_bool('up{job="a"} == 0') == 'up{job="a"} == bool 0'
    assert (
        as_bool('rate(x{a!="b",c=~"d>e"}[5m]) >= 0.5 * y and z < 1')
        == 'rate(x{a!="b",c=~"d>e"}[5m]) >= bool 0.5 * y and z < bool 1'
    )
    assert as_bool("x > bool 1 and y != 2") == "x > bool 1 and y != bool 2"


def dashboard_queries(dashboard: dict[str, Any], instance: str) -> list[tuple[str, str, bool]]:
    """(where, PromQL, selects the instance) for every panel target and query variable, with
    ``$instance`` and ``$pipeline`` replaced by regexes that match the daemon under test."""
    variables = {
        "$__rate_interval": RATE_INTERVAL,
        "$instance": re.escape(instance).replace("\\", "\\\\"),
        "$pipeline": "digits",
    }

    def concrete(expr: str) -> str:
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"a template variable the test does not know: {expr}"
        return expr

    queries = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert m, var
            # the series whose label Grafana lists: it must exist and carry the label
            expr = f"count by ({m[2]}) ({m[1]})"
            queries.append((f"variable {var['name']}", concrete(expr), "$instance" in expr))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert "$instance" in expr, f"panel {panel['title']!r} ignores the device selection: {expr}"
            queries.append((f"panel {panel['title']!r} {target['refId']}", concrete(expr), True))
    return queries


def test_the_dashboard_is_grafana_10_with_device_selection_and_covers_the_figures() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 38  # Grafana 10
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert {variables["instance"]["type"], variables["pipeline"]["type"]} == {"query"}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "up{",
        "rate(edge_runtime_pipeline_results_total",
        "edge_runtime_pipeline_fps_out",
        "histogram_quantile(0.5, sum by (instance, pipeline, le) (rate(edge_runtime_pipeline_latency",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "edge_runtime_outbox_depth",
        "edge_runtime_drift_psi",
        "edge_runtime_drift_level",
        "edge_runtime_source_tamper",
        "edge_runtime_quality_confidence_mean",
        "edge_runtime_quality_low_confidence_share",
        "process_resident_memory_bytes",
        "rate(process_cpu_seconds_total",
        "edge_runtime_mqtt_connected",
    ):
        assert needed in exprs, needed


def returns_data(prom: Prometheus, expr: str, instance: str, *, only: bool) -> str:
    """'' when ``expr`` returns a series of ``instance`` (``only``: and no other instance), else why not."""
    try:
        result = prom.query(expr)
    except PrometheusQueryError as exc:
        return f"refused: {exc}"
    if not result:
        return "no series"
    instances = {s["metric"].get("instance") for s in result} - {None}
    if only and instances - {instance}:
        return f"series of other instances: {sorted(instances)}"
    if not only and instance not in instances:
        return f"no series of {instance}: {[s['metric'] for s in result][:3]}"
    return ""


def black_camera_config(directory: Path, metrics_port: int) -> Path:
    """A daemon whose camera shows only black frames (covered and dark), quick tamper hold."""
    directory.mkdir()
    frames = [np.zeros((480, 640, 3), np.uint8) for _ in range(40)]
    write_video(directory / "digits.avi", frames, 20.0)  # digits_config uses the video found there
    config = digits_config(directory, port=None, device="covered")
    config.write_text(
        config.read_text()
        + "\n[monitor.tamper]\nhold_s = 0.5\ncheck_hz = 10.0\n"
        + f"\n[metrics]\nenabled = true\nport = {metrics_port}\nrefresh_s = 1.0\n"
    )
    return config


def scraped(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_dashboard_and_rules_return_data_from_a_real_prometheus(
    tmp_path: Path, broker: Mosquitto, make_prometheus: Any
) -> None:
    port, covered_port = free_port(), free_port()
    config = digits_config(tmp_path, port=broker.port)
    config.write_text(config.read_text() + f"\n[metrics]\nenabled = true\nport = {port}\nrefresh_s = 1.0\n")
    covered_config = black_camera_config(tmp_path / "covered", covered_port)
    me, covered = f"127.0.0.1:{port}", f"127.0.0.1:{covered_port}"
    with Daemon(config) as daemon, Daemon(covered_config) as covered_daemon:
        prom = make_prometheus({JOB: [me, covered]}, rule_files=[RULES])

        def all_up() -> bool:
            return sorted(t["health"] for t in prom.targets()) == ["up", "up"]

        assert wait_until(all_up, 60, 0.5), (
            prom.targets(),
            daemon.log()[-2000:],
            covered_daemon.log()[-2000:],
        )

        # the rules as Prometheus loaded them
        groups = prom.api("rules")["groups"]
        loaded = {r["name"]: r["query"] for g in groups for r in g["rules"]}
        in_file = re.findall(r"^\s*- alert: (\w+)", RULES.read_text(encoding="utf-8"), re.MULTILINE)
        assert sorted(loaded) == sorted(in_file) and len(in_file) == 12, (sorted(loaded), in_file)
        rule_queries = [(f"rule {name}", as_bool(expr)) for name, expr in loaded.items()]
        dash_queries = dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8")), me)
        assert len(dash_queries) >= 30, dash_queries

        failing: dict[str, str] = {}

        def every_expression_returns_data() -> bool:
            failing.clear()
            for where, expr in rule_queries:
                if why := returns_data(prom, expr, me, only=False):
                    failing[where] = f"{expr}: {why}"
            for where, expr, only in dash_queries:
                if why := returns_data(prom, expr, me, only=only):
                    failing[where] = f"{expr}: {why}"
            return not failing

        assert wait_until(every_expression_returns_data, 60, 1.0), (failing, daemon.log()[-2000:])

        # the tamper alert end to end: the black camera is covered (and dark) on the covered daemon
        def tamper_alert() -> list[dict[str, Any]]:
            return [
                a
                for a in prom.alerts()
                if a["labels"].get("alertname") == "EdgeRuntimeCameraTamper"
                and a["labels"].get("instance") == covered
                and a["state"] in ("pending", "firing")
            ]

        assert wait_until(lambda: any(a["labels"]["state"] == "covered" for a in tamper_alert()), 30, 0.5), (
            prom.alerts(),
            covered_daemon.log()[-2000:],
        )
        states = {a["labels"]["state"] for a in tamper_alert()}
        assert {"covered", "dark"} <= states, states  # (frozen too, after frozen_s of black frames)
        # the digits camera is not covered: no tamper alert for it
        assert not prom.query(f'edge_runtime_source_tamper{{instance="{me}", state="covered"}} == 1')
        assert daemon.stop() == 0 and covered_daemon.stop() == 0, daemon.log()[-3000:]


WHEN = {"always", "camera", "quality", "drift", "input", "capture", "mqtt", "serial", "waiting", "zones"}
# the conditions that hold for the daemon of the test
HOLDS = {"always", "camera", "quality", "drift", "input", "capture", "mqtt", "serial"}


def documented_metrics() -> dict[str, tuple[str, frozenset[str], str]]:
    """name -> (type, labels, when) from the table of docs/metrics.md."""
    rows: dict[str, tuple[str, frozenset[str], str]] = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not cells[0].startswith("`"):
            continue
        name, kind, labels, when = cells[0].strip("`"), cells[1], cells[2], cells[3]
        assert name not in rows, f"{name} documented twice"
        assert when in WHEN, f"{name}: a condition the test does not know: {when}"
        rows[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)), when)
    assert len(rows) >= 60, rows
    return rows


def exported_metrics(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) of every family in an exposition text (histogram labels
    without ``le``)."""
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE))
    labels: dict[str, set[str]] = {name: set() for name in types}
    for m in re.finditer(r"^(\w+)(?:\{(.*)\})? ", text, re.MULTILINE):
        sample, body = m.group(1), m.group(2) or ""
        family = sample if sample in types else re.sub(r"_(bucket|sum|count|created)$", "", sample)
        assert family in types, f"a sample of no family: {sample}"
        labels[family] |= set(re.findall(r'(\w+)="', body)) - {"le"}
    return {name: (kind, frozenset(labels[name])) for name, kind in types.items()}


def test_the_documented_metric_list_is_what_a_daemon_exports(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    config = digits_config(tmp_path, port=broker.port)
    serial = '\n[sources.imu]\ntype = "serial"\nport = "loop://"\nformat = "kv"\n'
    config.write_text(
        config.read_text().replace("[[pipelines]]", serial + "\n[[pipelines]]", 1)
        + f"\n[metrics]\nenabled = true\nport = {port}\nrefresh_s = 1.0\n"
        + "\n[monitor.drift]\ninput_every = 1\n"  # input drift's level within the 120 results below
        + "\n[monitor.capture.digits]\nrandom = 0.05\nper_minute = 3\n"
    )
    documented = documented_metrics()
    with Daemon(config) as daemon:
        # drift needs min_results results: wait until its level is exported
        assert wait_until(lambda: daemon.count() >= 120, 60), daemon.log()[-3000:]
        text = ""

        def drift_exported() -> bool:
            nonlocal text
            try:
                text = scraped(port)
            except OSError:
                return False
            return "edge_runtime_drift_level{" in text and "edge_runtime_input_drift_level{" in text

        assert wait_until(drift_exported, 30, 0.5), daemon.log()[-3000:]
        assert daemon.stop() == 0, daemon.log()[-3000:]
    exported = exported_metrics(text)
    undocumented = sorted(set(exported) - set(documented))
    assert not undocumented, f"exported but not in docs/metrics.md: {undocumented}"
    missing = sorted(n for n, (_, _, when) in documented.items() if when in HOLDS and n not in exported)
    assert not missing, f"documented as exported by this daemon, but not exported: {missing}"
    wrong = {
        name: (documented[name][:2], found)
        for name, found in exported.items()
        if documented[name][:2] != found
    }
    assert not wrong, f"documented (type, labels) differ from the exported ones: {wrong}"
    assert exported["process_resident_memory_bytes"][0] == "gauge"
    assert exported["edge_runtime_pipeline_latency_histogram_seconds"][0] == "histogram"
