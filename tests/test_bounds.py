"""Every structure fed by outside input has a bound and a counter for what it refused.

Each bound is fed past its limit; the daemon-level test floods a real socat pty with 40,000
distinct keys (the flood from issue 12) and checks that the daemon's memory stays flat, the
health document stays small and says what was refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config
from devkit.mqtt_client import Subscriber
from devkit.processes import socat_pair
from edge_runtime.health import HealthReporter
from edge_runtime.healthstate import bound_document
from edge_runtime.sources.buffer import SensorBuffers
from edge_runtime.sources.parsers import MAX_REASONS, ErrorTally
from edge_runtime.sources.serial import SerialConfig, SerialSource

FLOOD_LINES = 4000
KEYS_PER_LINE = 10  # 40,000 distinct keys in all


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _flood_lines() -> list[bytes]:
    return [
        (" ".join(f"k{i * KEYS_PER_LINE + j}={j}.5" for j in range(KEYS_PER_LINE)) + "\n").encode()
        for i in range(FLOOD_LINES)
    ]


def test_sensor_buffers_cap_discovered_channels() -> None:
    buffers = SensorBuffers(capacity=4096, channels=("ax",), max_channels=64)
    refused = sum(buffers.append(float(i), {f"k{i}": 1.0, "ax": 0.5}) for i in range(40_000))
    assert len(buffers.channels) == 64 and buffers.channels[0] == "ax"
    assert refused == buffers.refused == 40_000 - 63
    assert buffers.window("ax")[1].size == 4096  # the named channel keeps every value (ring size)
    assert buffers.latest("k62") == (62.0, 1.0) and buffers.latest("k63") is None


def test_error_tally_caps_distinct_reasons() -> None:
    tally = ErrorTally()
    for i in range(10_000):
        tally.add(f"reason {i}")
    counts = tally.snapshot()
    assert len(counts) == MAX_REASONS and tally.total == 10_000
    assert counts["other"] == 10_000 - (MAX_REASONS - 1)


def test_serial_source_counts_refused_keys_and_logs_once(caplog: Any) -> None:
    source = SerialSource("imu", SerialConfig(port="loop://", format="kv", max_channels=8))
    with caplog.at_level("WARNING", logger="edge_runtime.sources.serial"):
        source.feed(b"".join(_flood_lines()[:100]), 1.0)
    stats = source.stats()
    assert stats["lines"] == 100 and len(stats["channels"]) == 8
    assert stats["channels_refused"] == 100 * KEYS_PER_LINE - 8 and stats["max_channels"] == 8
    assert [r.message for r in caplog.records].count(
        "serial source imu: more than 8 channels; values of new keys are refused and counted "
        "(set 'channels' to choose, or raise 'max_channels')"
    ) == 1


def test_health_document_is_cut_to_its_bound(tmp_path: Path) -> None:
    big = {f"k{i}": 1 for i in range(5000)}
    sources = {"imu": {"type": "serial", "state": "up", "channels": list(big), "parse_errors": dict(big)}}
    reporter = HealthReporter("1", "d", tmp_path, pipelines=dict, sources=lambda: sources, max_bytes=8192)
    doc = reporter.report()
    assert len(json.dumps(doc)) <= 8192
    assert doc["truncated"] is True and doc["truncations"] == 1
    imu = doc["sources"]["imu"]
    assert len(imu["channels"]) == 16 and imu["channels_count"] == 5000 and len(imu["parse_errors"]) == 16
    small: dict[str, Any] = {"sources": {"imu": {"channels": ["a"]}}}
    assert bound_document(small, 8192) is False and "truncated" not in small


def test_a_40000_key_flood_on_a_real_serial_line_keeps_memory_flat(tmp_path: Path, broker: Mosquitto) -> None:
    with socat_pair(tmp_path) as pair:
        extra = f'\n[sources.imu]\ntype = "serial"\nport = "{pair.b}"\nformat = "kv"\n'
        config = digits_config(tmp_path, port=broker.port, extra=extra)
        with Subscriber(broker.host, broker.port, ["edge/dev1/health"]) as sub, Daemon(config) as daemon:

            def imu(ms: list[Any]) -> dict[str, Any]:
                source: dict[str, Any] = ms[-1].json()["sources"].get("imu", {}) if ms else {}
                return source

            assert sub.wait_for(lambda ms: imu(ms).get("state") == "up", 30), daemon.log()
            fd = os.open(pair.a, os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(fd, b"k0=1 k1=2\n" * 100)  # the channels a real sensor would send
                assert sub.wait_for(lambda ms: imu(ms).get("lines", 0) >= 100, 30), daemon.log()
                time.sleep(2.0)  # warmed up: models loaded, first health documents sent
                before = _rss(daemon.proc.pid)
                started = time.monotonic()
                for line in _flood_lines():
                    os.write(fd, line)
                written = time.monotonic() - started
            finally:
                os.close(fd)

            assert sub.wait_for(lambda ms: imu(ms).get("lines", 0) >= 100 + FLOOD_LINES, 30), daemon.log()[
                -3000:
            ]
            flood_seen = sub.json("edge/dev1/health")[-1]
            assert flood_seen["state"] == "degraded", flood_seen["problems"]
            assert any("new channels refused" in p for p in flood_seen["problems"]), flood_seen["problems"]
            sub.clear()
            assert sub.wait_for(lambda ms: len(ms) >= 1, 10)
            after = _rss(daemon.proc.pid)
            health = sub.json("edge/dev1/health")[-1]
            raw = sub.payloads("edge/dev1/health")[-1]
            assert daemon.stop() == 0
        log = daemon.log()
    source = health["sources"]["imu"]
    print(
        f"\nflood: {FLOOD_LINES * KEYS_PER_LINE} keys in {written:.2f} s; RSS {before / 2**20:.1f} MB -> "
        f"{after / 2**20:.1f} MB; health document {len(raw)} bytes; refused {source['channels_refused']}"
    )
    assert after - before < 16 * 2**20, (before, after)  # before the cap: +670 MB
    assert len(source["channels"]) == 64 and source["channels_refused"] == FLOOD_LINES * KEYS_PER_LINE - 64
    assert len(raw) < 16 * 1024  # before the cap: 351 KB
    assert log.count("values of new keys are refused and counted") == 1
