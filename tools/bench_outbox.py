"""Benchmark the SQLite outbox: put, put_many, and draining a backlog with peek+ack.

    .venv/bin/python tools/bench_outbox.py [--n 20000] [--payload 600] [--batch 100] [--dir DIR]
                                           [--mqtt]

With ``--mqtt`` it also measures the whole reporting path against a real mosquitto (started on a
free loopback port): the drain of a 10,000-result backlog (the broker was away) through the
MQTT link at QoS 1 to a subscriber, and the live rate the path sustains (results put into the
outbox as fast as they come, forwarded and acknowledged) over a few seconds.

Runs on the filesystem of ``--dir`` (default: a temporary directory), which is what matters on a
board: put it on the SD card or eMMC that will hold the state directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's devkit (dev-only)

from devkit.broker import Mosquitto
from devkit.mqtt_client import Subscriber
from edge_runtime.reporting.outbox import Outbox, PutItem


def _payload(size: int, seq: int) -> bytes:
    body = {"v": 1, "device": "bench", "pipeline": "p", "seq": seq, "ts": time.time(), "pad": ""}
    raw = json.dumps(body).encode()
    body["pad"] = "x" * max(0, size - len(raw))
    return json.dumps(body).encode()


def bench(directory: Path, n: int, size: int, batch: int) -> list[tuple[str, int, float]]:
    rows: list[tuple[str, int, float]] = []
    payloads = [_payload(size, i) for i in range(n)]
    with Outbox(directory / "put.db") as box:
        start = time.perf_counter()
        for i, p in enumerate(payloads, 1):
            box.put("edge/bench/pipelines/p/results", p, seq=("p", i))
        rows.append(("put (1 per transaction, with seq)", n, time.perf_counter() - start))
    with Outbox(directory / "many.db") as box:
        start = time.perf_counter()
        for lo in range(0, n, batch):
            items: list[PutItem] = [
                ("edge/bench/pipelines/p/results", p, 1, False, ("p", lo + j + 1))
                for j, p in enumerate(payloads[lo : lo + batch])
            ]
            box.put_many(items)
        rows.append((f"put_many (batches of {batch})", n, time.perf_counter() - start))
    backlog = 10_000
    with Outbox(directory / "drain.db") as box:
        box.put_many([("edge/bench/events", payloads[i % n], 1, False, None) for i in range(backlog)])
        start = time.perf_counter()
        drained = 0
        while batch_msgs := box.peek(batch):
            drained += box.ack(m.id for m in batch_msgs)
        rows.append(
            (f"peek+ack of a {backlog} backlog ({batch}/batch)", drained, time.perf_counter() - start)
        )
    start = time.perf_counter()
    with Outbox(directory / "put.db") as box:
        depth = box.stats()["depth"]
    rows.append((f"reopen with {depth} messages (checks + totals)", 0, time.perf_counter() - start))
    return rows


def mqtt_bench(
    directory: Path, size: int, backlog: int = 10_000, live_s: float = 5.0
) -> list[tuple[str, int, float]]:
    """The drain of a backlog and the live rate of outbox -> MQTT link -> broker -> subscriber."""
    from edge_runtime.config import MqttConfig
    from edge_runtime.reporting.mqtt import MqttLink
    from edge_runtime.reporting.topics import Topics

    rows: list[tuple[str, int, float]] = []
    limits = "max_queued_messages 0\nmax_inflight_messages 100"  # the subscriber must not lose any
    broker = Mosquitto(directory, extra_config=limits)
    broker.start()
    port = broker.port
    sub = Subscriber(broker.host, port, "edge/bench/pipelines/+/results", qos=1, keepalive=60)
    try:
        topics = Topics("edge", "bench")
        with Outbox(directory / "mqtt.db", max_count=backlog * 10) as box:
            box.put_many(
                [(topics.results("p"), _payload(size, i), 1, False, ("p", i + 1)) for i in range(backlog)]
            )
            link = MqttLink(
                MqttConfig(host="127.0.0.1", port=port), topics, box, version="bench", pipelines=["p"]
            )
            start = time.perf_counter()
            link.start()
            while box.stats()["depth"] and time.perf_counter() - start < 120:
                time.sleep(0.01)
            rows.append((f"drain of {backlog} to the broker (PUBACKs)", backlog, time.perf_counter() - start))
            sub.wait_for(lambda messages: len(messages) >= backlog, 120 - (time.perf_counter() - start))
            received = len(sub.take())
            rows.append(
                (f"... at a QoS 1 subscriber ({received} received)", received, time.perf_counter() - start)
            )
            stop = time.perf_counter() + live_s
            seq = backlog
            start = time.perf_counter()
            while time.perf_counter() < stop:
                seq += 1
                box.put(topics.results("p"), _payload(size, seq), seq=("p", seq))
            while box.stats()["depth"] and time.perf_counter() - start < live_s + 60:
                time.sleep(0.01)
            rows.append(("live: put + forward + PUBACK + delete", seq - backlog, time.perf_counter() - start))
            link.stop()
    finally:
        sub.close()
        broker.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="messages for the put benchmarks")
    parser.add_argument("--payload", type=int, default=600, help="payload size in bytes")
    parser.add_argument("--batch", type=int, default=100, help="put_many and peek batch size")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the databases")
    parser.add_argument("--mqtt", action="store_true", help="also the reporting path to a real mosquitto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = bench(Path(tmp), args.n, args.payload, args.batch)
        if args.mqtt:
            rows += mqtt_bench(Path(tmp), args.payload)
    print(f"payload {args.payload} B, databases in {args.dir or tempfile.gettempdir()}")
    print(f"{'operation':<48} {'messages':>9} {'seconds':>9} {'msg/s':>10}")
    for name, count, seconds in rows:
        rate = f"{count / seconds:.0f}" if count else "-"
        print(f"{name:<48} {count or '-':>9} {seconds:>9.3f} {rate:>10}")


if __name__ == "__main__":
    main()
