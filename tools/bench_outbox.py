"""Benchmark the SQLite outbox: put, put_many, and draining a backlog with peek+ack.

    .venv/bin/python tools/bench_outbox.py [--n 20000] [--payload 600] [--batch 100] [--dir DIR]

Runs on the filesystem of ``--dir`` (default: a temporary directory), which is what matters on a
board: put it on the SD card or eMMC that will hold the state directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="messages for the put benchmarks")
    parser.add_argument("--payload", type=int, default=600, help="payload size in bytes")
    parser.add_argument("--batch", type=int, default=100, help="put_many and peek batch size")
    parser.add_argument("--dir", type=Path, default=None, help="directory for the databases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = bench(Path(tmp), args.n, args.payload, args.batch)
    print(f"payload {args.payload} B, databases in {args.dir or tempfile.gettempdir()}")
    print(f"{'operation':<48} {'messages':>9} {'seconds':>9} {'msg/s':>10}")
    for name, count, seconds in rows:
        rate = f"{count / seconds:.0f}" if count else "-"
        print(f"{name:<48} {count or '-':>9} {seconds:>9.3f} {rate:>10}")


if __name__ == "__main__":
    main()
