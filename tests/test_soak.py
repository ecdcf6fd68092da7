"""Soak: the daemon at full rate for ``EDGE_RUNTIME_SOAK_S`` seconds (default 600; CI runs ~60)
with the broker restarted every fifth of the run. Its RSS, open file descriptors and threads are
sampled from /proc; after a warm-up third they must stay flat, and fds and threads must come
back to where they were after every reconnect. Every result must reach a persistent QoS 1
subscriber. The figures are printed (``pytest -s``) and written as JSON under the test's tmp
folder (and to ``$EDGE_RUNTIME_SOAK_REPORT`` when set)."""

from __future__ import annotations

import collections
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.mqtt_client import Subscriber
from devkit.processes import wait_until

SOAK_S = float(os.environ.get("EDGE_RUNTIME_SOAK_S", "600"))
MB = 1024 * 1024
RSS_GROWTH_LIMIT = 10 * MB
LEAK_SLOPE_LIMIT = 1.0
"""MB/min: the bound on RSS growth within the stretches between broker restarts (the slope
fitted to each stretch with its own intercept, pooled: :func:`pooled_slope_per_min`).

Why this estimator and this figure. Each reconnect adds a step to RSS (buffers for the outage's
backlog, 0.1-0.9 MB measured), so the plain least-squares slope over the 40 s after the warm-up of
the 60-s CI form swings with the steps: 0.57, 0.65, 0.78 and 2.5 MB/min in four runs on 2026-12-01
(2 cores shared with other work); the old bound (10 MB over those 40 s, i.e. 15 MB/min) let any
leak below 15 MB/min through. Within the stretches the same four runs gave 0.0, 0.06, 0.81 and 0.71
MB/min. A leak of 1 MB/min grows RSS by 1 MB/min inside every stretch, on top of what the run
measures without it (never below 0 so far), so it reads at least 1.0: not below this bound. The
margin for a run without a leak is thin in the 60-s form (0.19 MB/min above the highest measured);
the 10-minute run, with 2-minute stretches, separates the two clearly (0.10 MB/min measured)."""

pytestmark = [pytest.mark.soak, pytest.mark.timeout(SOAK_S * 1.5 + 300)]


class SeqSubscriber(Subscriber):
    """A :class:`Subscriber` that keeps only the seq of each result (a long run at full rate
    delivers hundreds of thousands) and counts deliveries, duplicates included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.seqs: set[int] = set()
        self.deliveries = 0
        self.highest = 0
        self.out_of_turn: list[tuple[int, int]] = []
        """(seq, highest before it) for each first arrival that was not highest + 1 (raw order)."""
        super().__init__(*args, **kwargs)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        seq = int(json.loads(msg.payload)["seq"])
        with self._cond:
            if seq not in self.seqs:  # a repeat is an at-least-once redelivery
                if seq != self.highest + 1 and len(self.out_of_turn) < 100:
                    self.out_of_turn.append((seq, self.highest))
                self.highest = max(self.highest, seq)
            self.seqs.add(seq)
            self.deliveries += 1
            self._cond.notify_all()

    def top(self) -> int:
        with self._cond:
            return max(self.seqs, default=0)

    def missing(self, last: int) -> list[int]:
        with self._cond:
            return sorted(set(range(1, last + 1)) - self.seqs)


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the daemon started
    rss: int  # bytes
    fds: int
    threads: int
    broker_up: bool
    delivered: int  # distinct seqs at the subscriber


def probe_once(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, open fds, threads) of ``pid`` from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    rss = int(fields["VmRSS"].split()[0]) * 1024
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def mode(values: list[int]) -> int:
    return collections.Counter(values).most_common(1)[0][0]


def probe(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, open fds, threads), the fds and threads as the most common of three quick
    readings: at full rate the looping video is reopened about ten times a second, and its file
    and decoder thread are briefly gone (or doubled) while that happens; a reading caught in
    that instant says nothing about leaks."""
    readings = []
    for _ in range(3):
        readings.append(probe_once(pid))
        time.sleep(0.03)
    return readings[-1][0], mode([r[1] for r in readings]), mode([r[2] for r in readings])


def steady(pid: int, count: int = 9, gap: float = 0.1) -> tuple[int, int]:
    """(fds, threads) at rest: the most common of several readings over about a second."""
    readings = []
    for _ in range(count):
        _, fds, threads = probe_once(pid)
        readings.append((fds, threads))
        time.sleep(gap)
    return mode([r[0] for r in readings]), mode([r[1] for r in readings])


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def pooled_slope_per_min(points: list[tuple[float, float]], breaks: list[float]) -> float:
    """The least-squares slope (per minute) of (seconds, value) points shared by the stretches
    that ``breaks`` (times) cut them into, each stretch with its own intercept: steps at the
    breaks do not count as a slope, a steady growth in every stretch does."""
    stretches: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
    for t, v in points:
        stretches[sum(b < t for b in breaks)].append((t, v))
    num = den = 0.0
    for stretch in stretches.values():
        if len(stretch) < 2:
            continue
        mean_t = statistics.fmean(t for t, _ in stretch)
        mean_v = statistics.fmean(v for _, v in stretch)
        num += sum((t - mean_t) * (v - mean_v) for t, v in stretch)
        den += sum((t - mean_t) ** 2 for t, _ in stretch)
    return 60.0 * num / den if den else 0.0


def test_soak_at_full_rate_with_broker_restarts(
    tmp_path: Path, make_broker: Callable[..., Mosquitto]
) -> None:
    duration = SOAK_S
    interval = min(5.0, max(1.0, duration / 150))
    outage = min(5.0, max(2.0, duration / 120))
    restart_at = [duration * f for f in (0.2, 0.4, 0.6, 0.8)]
    broker = make_broker(persistence=True, extra_config="max_queued_messages 0\n")
    device = f"soak-{uuid.uuid4().hex[:10]}"  # its own topics and client id, whatever else runs here
    config = digits_config(tmp_path, port=broker.port, device=device, health_s=5.0)
    config.write_text(config.read_text().replace("realtime = true", "realtime = false"))
    samples: list[Sample] = []
    restarts: list[dict[str, Any]] = []
    results = f"edge/{device}/pipelines/+/results"
    sub = SeqSubscriber(
        broker.host, broker.port, [results], client_id="soak-sub", persistent=True, timeout=30
    )
    with sub:
        with Daemon(config, "--quiet") as daemon:
            pid = daemon.proc.pid
            assert wait_until(lambda: sub.top() > 0, 60), daemon.log()[-3000:]
            started = time.monotonic()
            next_sample = started
            pending = list(restart_at)
            baseline: tuple[int, int] | None = None  # (fds, threads) at rest after the warm-up
            while (now := time.monotonic() - started) < duration:
                assert daemon.proc.poll() is None, daemon.log()[-3000:]
                if pending and now >= pending[0]:
                    pending.pop(0)
                    restarts.append(restart(broker, sub, pid, outage, started))
                    continue
                if baseline is None and now >= duration / 3:
                    baseline = steady(pid)
                if time.monotonic() >= next_sample:
                    rss, fds, threads = probe(pid)
                    samples.append(Sample(round(now, 2), rss, fds, threads, broker.running, len(sub.seqs)))
                    next_sample += interval
                time.sleep(0.05)
            end_fds, end_threads = steady(pid)
            assert daemon.stop() == 0
        elapsed = time.monotonic() - started
        log = daemon.log()
        last = stats_line(log, "pipeline", "digits")["results"]
        assert wait_until(lambda: not sub.missing(last), 120, 0.5), f"{len(sub.missing(last))} never arrived"
        missing = sub.missing(last)
    assert baseline is not None
    figures = summarise(
        samples, restarts, duration, elapsed, last, sub.deliveries, baseline, (end_fds, end_threads)
    )
    figures["outbox"] = stats_line(log, "reporting", "outbox")
    figures["mqtt"] = stats_line(log, "reporting", "mqtt")
    report = tmp_path / "soak.json"
    report.write_text(json.dumps(figures, indent=2))
    if os.environ.get("EDGE_RUNTIME_SOAK_REPORT"):
        Path(os.environ["EDGE_RUNTIME_SOAK_REPORT"]).write_text(json.dumps(figures, indent=2))
    print(f"\nsoak figures: {report}")
    print(figures["summary"])

    assert not missing, f"{len(missing)} results never reached the subscriber: {missing[:20]}"
    # drained in order: on the raw arrival sequence, every new seq is the next one
    assert not sub.out_of_turn, f"first arrivals out of turn (seq, highest before): {sub.out_of_turn[:10]}"
    assert "Traceback" not in log
    assert figures["outbox"]["dropped"] == 0 and figures["outbox"]["store_errors"] == 0
    assert len(restarts) == 4 and all(r["reconnected_s"] is not None for r in restarts), restarts
    for r in restarts:  # every reconnect leaves the daemon with the fds and threads it had
        assert (r["fds_after"], r["threads_after"]) == (r["fds_before"], r["threads_before"]), r
    rss = figures["rss"]
    assert rss["growth_bytes"] < RSS_GROWTH_LIMIT, rss
    assert rss["slope_between_restarts_mb_per_min"] < LEAK_SLOPE_LIMIT, rss
    fds, threads = figures["fds"], figures["threads"]
    assert (fds["end"], threads["end"]) == (fds["baseline"], threads["baseline"]), (fds, threads)
    assert fds["max_connected"] <= fds["baseline"] + 2, fds  # no creeping descriptors
    assert threads["max"] == threads["baseline"], threads


def restart(broker: Mosquitto, sub: SeqSubscriber, pid: int, outage: float, started: float) -> dict[str, Any]:
    """Stop the broker for ``outage`` s and start it again; the daemon's fds and threads before and
    after its reconnect, and how long it took until results flowed again."""
    fds_before, threads_before = steady(pid)
    at = time.monotonic()
    connections = sub.connections
    broker.stop()
    time.sleep(outage)
    top = sub.top()
    broker.start()
    back = time.monotonic()
    reconnected: float | None = None
    if sub.wait_ready(60, after=connections) and wait_until(lambda: sub.top() > top + 100, 60, 0.05):
        reconnected = round(time.monotonic() - back, 2)
    time.sleep(1.0)
    fds_after, threads_after = steady(pid)
    return {
        "at_s": round(at - started, 1),
        "outage_s": round(back - at, 2),
        "reconnected_s": reconnected,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "threads_before": threads_before,
        "threads_after": threads_after,
    }


def summarise(
    samples: list[Sample],
    restarts: list[dict[str, Any]],
    duration: float,
    elapsed: float,
    results: int,
    deliveries: int,
    baseline: tuple[int, int],
    end: tuple[int, int],
) -> dict[str, Any]:
    warm = [s for s in samples if s.t >= duration / 3]
    assert len(warm) >= 5, f"too few samples after the warm-up: {len(warm)}"
    connected = [s for s in warm if s.broker_up]
    rss_base = statistics.median(s.rss for s in warm[:3])
    rss_end = statistics.median(s.rss for s in warm[-3:])
    fds_base, threads_base = baseline
    end_fds, end_threads = end
    figures: dict[str, Any] = {
        "duration_s": duration,
        "elapsed_s": round(elapsed, 1),
        "results": results,
        "rate_per_s": round(results / elapsed, 1),
        "deliveries": deliveries,
        "duplicates": deliveries - results,
        "restarts": restarts,
        "rss": {
            "first_bytes": samples[0].rss,
            "baseline_bytes": int(rss_base),
            "end_bytes": int(rss_end),
            "max_bytes": max(s.rss for s in warm),
            "growth_bytes": int(max(s.rss for s in warm) - rss_base),
            "slope_mb_per_min": round(slope_per_min([(s.t, s.rss / MB) for s in warm]), 3),
            "slope_between_restarts_mb_per_min": round(
                pooled_slope_per_min([(s.t, s.rss / MB) for s in warm], [r["at_s"] for r in restarts]), 3
            ),
        },
        "fds": {
            "first": samples[0].fds,
            "baseline": fds_base,
            "end": end_fds,
            "min": min(s.fds for s in warm),
            "max_connected": max(s.fds for s in connected),
        },
        "threads": {
            "first": samples[0].threads,
            "baseline": threads_base,
            "end": end_threads,
            "max": max(s.threads for s in warm),
        },
        "samples": [asdict(s) for s in samples],
    }
    rss = figures["rss"]
    figures["summary"] = (
        f"soak {elapsed:.0f} s: {results} results at {figures['rate_per_s']}/s, all delivered "
        f"({deliveries - results} duplicates), {len(restarts)} broker restarts "
        f"(back in {', '.join(str(r['reconnected_s']) for r in restarts)} s); "
        f"RSS {samples[0].rss / MB:.1f} -> {rss['baseline_bytes'] / MB:.1f} (after warm-up) -> "
        f"{rss['end_bytes'] / MB:.1f} MB, max {rss['max_bytes'] / MB:.1f} MB, growth "
        f"{rss['growth_bytes'] / MB:.2f} MB, slope {rss['slope_mb_per_min']} MB/min "
        f"({rss['slope_between_restarts_mb_per_min']} between restarts); "
        f"fds {fds_base} -> {end_fds}; threads {threads_base} -> {end_threads}"
    )
    return figures
