"""Measure SQLite journal modes for the outbox on a small disk (the table in docs/health.md).

    sudo .venv/bin/python tools/outbox_journal_modes.py [--size 2m] [--n 3000]

Mounts a tmpfs of ``--size`` (root needed), then for each journal setting puts ``--n`` results
of ~330 bytes into an outbox-shaped table, acknowledging (deleting) each at once as a connected
broker would, and prints how many could not be stored, the peak bytes the database and its
journal took, and the time per result. The last row leaves everything unacknowledged (a broker
that is away) to show that only a free-space reserve stops the database from filling the disk.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

PAYLOAD = json.dumps(
    {
        "v": 1, "device": "dev1", "pipeline": "digits", "seq": 1, "ts": 1.0,
        "result": {"label": "3", "score": 0.99},
        "latency_ms": {"pre": 0.1, "invoke": 0.2, "post": 0.01, "total": 0.4},
        "model": {"name": "digits", "sha256": "ab" * 32, "version": "1"},
    }
).encode()  # fmt: skip


def run(disk: Path, mode: str, checkpoint: int | None, limit: int | None, n: int, ack: bool) -> str:
    path = disk / "o.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={mode}")
    conn.execute("PRAGMA synchronous=NORMAL")
    if checkpoint:
        conn.execute(f"PRAGMA wal_autocheckpoint={checkpoint}")
    if limit is not None:
        conn.execute(f"PRAGMA journal_size_limit={limit}")
    conn.executescript(
        "CREATE TABLE m (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, payload BLOB, qos INT,"
        " retain INT, created REAL); CREATE TABLE seqs (p TEXT PRIMARY KEY, s INT);"
    )
    peak = errors = 0
    started = time.perf_counter()
    for i in range(n):
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO m (topic, payload, qos, retain, created) VALUES (?, ?, 1, 0, ?)",
                ("edge/dev1/pipelines/digits/results", PAYLOAD, time.time()),
            )
            conn.execute(
                "INSERT INTO seqs VALUES ('digits', ?) ON CONFLICT (p) DO UPDATE SET s = excluded.s", (i,)
            )
            conn.execute("COMMIT")
            if ack:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM m WHERE id = ?", (cur.lastrowid,))
                conn.execute("COMMIT")
        except sqlite3.Error:
            errors += 1
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        peak = max(peak, sum(f.stat().st_size for f in disk.iterdir()))
    per = (time.perf_counter() - started) / n * 1e6
    conn.close()
    for f in disk.iterdir():
        f.unlink()
    return (
        f"{mode:8} checkpoint={checkpoint} limit={limit} ack={ack}: {errors} of {n} not stored, "
        f"peak {peak / 1024:.0f} KiB, {per:.0f} us per result"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2m", help="tmpfs size (mount -o size=...)")
    parser.add_argument("--n", type=int, default=3000, help="results per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", str(disk)], check=True)
        try:
            for mode, checkpoint, limit, ack in (
                ("WAL", 1000, 8 << 20, True),
                ("WAL", 64, 256 << 10, True),
                ("WAL", 32, 128 << 10, True),
                ("TRUNCATE", None, None, True),
                ("DELETE", None, None, True),
                ("WAL", 64, 256 << 10, False),
            ):
                print(run(disk, mode, checkpoint, limit, args.n, ack), flush=True)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)


if __name__ == "__main__":
    main()
