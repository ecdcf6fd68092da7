"""The SQLite outbox, on real files: order, acks, bounds, seq across kill -9, threads, corrupt
files and a full disk (a real tiny tmpfs when mount is allowed, SQLite's max_page_count always)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.reporting.outbox import Outbox, OutboxCorruptError, OutboxError, PutItem, open_outbox

TOPIC = "edge/cam-01/pipelines/digits/results"


def result(seq: int, size: int = 600) -> bytes:
    body = json.dumps({"v": 1, "pipeline": "digits", "seq": seq, "pad": ""}).encode()
    return body[:-2] + b"x" * max(0, size - len(body)) + b'"}'


def table(path: Path) -> tuple[int, int]:
    """(count, payload bytes) read through an independent connection."""
    with sqlite3.connect(path) as conn:
        n, b = conn.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM messages").fetchone()
    return int(n), int(b)


def test_put_and_peek_keep_publish_order_and_fields(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        before = time.time()
        ids = [box.put(f"t/{i}", result(i), qos=i % 3, retain=i == 2) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        msgs = box.peek()
        assert [m.id for m in msgs] == ids
        assert [m.topic for m in msgs] == [f"t/{i}" for i in range(5)]
        assert [m.payload for m in msgs] == [result(i) for i in range(5)]
        assert [m.qos for m in msgs] == [0, 1, 2, 0, 1] and [m.retain for m in msgs] == [0, 0, 1, 0, 0]
        assert all(before <= m.created <= time.time() for m in msgs)
        assert [m.id for m in box.peek(limit=2, after_id=ids[1])] == ids[2:4]


def test_ack_removes_and_counts_only_existing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        ids = box.put_many([(TOPIC, result(i), 1, False, None) for i in range(10)])
        assert box.ack([ids[0], ids[3], ids[3], 10_000]) == 2
        assert box.ack([]) == 0 and box.ack([ids[0]]) == 0
        assert [m.id for m in box.peek()] == [i for i in ids if i not in (ids[0], ids[3])]
        assert box.stats()["depth"] == 8 and box.stats()["acked"] == 2
        assert table(tmp_path / "o.db") == (8, 8 * 600)


def test_ids_keep_increasing_after_draining_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        last = box.put_many([(TOPIC, b"a", 1, False, None)] * 3)[-1]
        box.ack(range(last + 1))
        assert box.put(TOPIC, b"b") > last
        last = box.peek()[-1].id
        box.ack([last])
    with Outbox(path) as box:  # empty table: AUTOINCREMENT still never reuses an id
        assert box.put(TOPIC, b"c") > last


def test_count_bound_drops_oldest_and_the_drop_count_persists(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_count=5) as box:
        ids = [box.put(TOPIC, result(i)) for i in range(8)]
        assert [m.id for m in box.peek()] == ids[3:]
        assert box.stats()["dropped"] == 3 and box.stats()["depth"] == 5
    with Outbox(path, max_count=5) as box:
        assert box.stats()["dropped"] == 3 and box.stats()["depth"] == 5
    with Outbox(path, max_count=2) as box:  # tighter bounds apply at open
        assert [m.id for m in box.peek()] == ids[6:]
        assert box.stats()["dropped"] == 6
    assert table(path) == (2, 1200)


def test_byte_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=2000) as box:
        ids = [box.put(TOPIC, result(i)) for i in range(3)]  # 1800 bytes
        big = box.put(TOPIC, b"y" * 1000)  # 2800: the two oldest go
        assert [m.id for m in box.peek()] == [ids[2], big]
        assert box.stats()["bytes"] == 1600 and box.stats()["dropped"] == 2
        with pytest.raises(OutboxError, match="exceeds the outbox bound max_bytes=2000"):
            box.put(TOPIC, b"z" * 2001)
        assert box.stats()["depth"] == 2
    with Outbox(path, max_bytes=2000) as box:
        assert box.stats()["dropped"] == 2 and box.stats()["bytes"] == 1600


def test_seq_is_stored_with_the_message_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        assert box.last_seq("digits") == 0
        for n in range(1, 4):
            box.put(TOPIC, result(n), seq=("digits", n))
        box.put_many([(TOPIC, result(4), 1, False, ("digits", 4)), ("e", b"{}", 1, False, ("gesture", 7))])
        box.put("edge/cam-01/events", b"{}")  # an event leaves every seq alone
    with Outbox(path) as box:
        assert box.last_seq("digits") == 4 and box.last_seq("gesture") == 7 and box.last_seq("x") == 0


CHILD = """
import json, os, signal, sys
from pathlib import Path
from edge_runtime.reporting.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
n = int(sys.argv[2])
for i in range(1, (n if n > 0 else 10**9) + 1):
    box.put("edge/cam-01/pipelines/digits/results", json.dumps({"seq": i}).encode(), seq=("digits", i))
    if i == 100:
        print("ready", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def reopen_after_kill(path: Path) -> list[int]:
    with Outbox(path) as box:
        seqs = [json.loads(m.payload)["seq"] for m in box.peek(limit=10**7)]
        assert box.last_seq("digits") == len(seqs)
        assert box.stats()["depth"] == len(seqs)
    return seqs


def test_messages_and_seq_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "500"], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert reopen_after_kill(path) == list(range(1, 501))


def test_a_kill_at_any_moment_leaves_seq_and_messages_in_step(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    for _ in range(3):
        with subprocess.Popen([sys.executable, "-c", CHILD, str(path), "0"], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(0.15)
            proc.kill()
        seqs = reopen_after_kill(path)
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 100
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_concurrent_producers_and_a_forwarder_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    per_thread = 1500
    got: list[tuple[int, bytes]] = []
    done = threading.Event()

    def produce(k: int) -> None:
        i = 0
        while i < per_thread:
            if i % 2:
                box.put(f"p{k}", f"{k}:{i}".encode(), seq=(f"p{k}", i + 1))
                i += 1
            else:
                items: list[PutItem] = [(f"p{k}", f"{k}:{j}".encode(), 1, False, None) for j in (i, i + 1)]
                box.put_many(items)
                i += 2

    wake = threading.Event()
    box.watch(wake)

    def forward() -> None:
        after = 0
        while not (done.is_set() and box.stats()["depth"] == 0):
            wake.wait(0.2)
            wake.clear()
            msgs = box.peek(100, after_id=after)
            if msgs:
                got.extend((m.id, m.payload) for m in msgs)
                after = msgs[-1].id
                assert box.ack(m.id for m in msgs) == len(msgs)

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    forwarder = threading.Thread(target=forward)
    forwarder.start()
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    forwarder.join(timeout=60)
    assert not forwarder.is_alive()
    payloads = [p for _, p in got]
    assert len(payloads) == len(set(payloads)) == 4 * per_thread
    assert [i for i, _ in got] == sorted(i for i, _ in got)
    for k in range(4):  # each producer's messages come out in its own order
        mine = [int(p.split(b":")[1]) for p in payloads if p.startswith(f"{k}:".encode())]
        assert mine == list(range(per_thread))
    assert box.stats() | {"oldest_age_s": None} == {
        "depth": 0,
        "bytes": 0,
        "oldest_age_s": None,
        "dropped": 0,
        "put": 4 * per_thread,
        "acked": 4 * per_thread,
    }
    box.close()


def test_watched_events_are_set_by_each_put_and_by_close(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    wake, gone = threading.Event(), threading.Event()
    box.watch(wake)
    box.watch(gone)
    box.unwatch(gone)
    assert not wake.wait(0.05)
    threading.Timer(0.2, box.put, args=(TOPIC, b"{}")).start()
    start = time.monotonic()
    assert wake.wait(5.0) and time.monotonic() - start < 2.0
    wake.clear()
    box.put_many([(TOPIC, b"{}", 1, False, None)] * 2)
    assert wake.is_set() and not gone.is_set()
    wake.clear()
    box.ack([])  # an empty ack writes nothing and wakes nobody
    assert not wake.is_set()
    box.close()
    assert wake.is_set() and not gone.is_set()
    late = threading.Event()
    box.watch(late)  # watching a closed outbox: set at once, the watcher sees the close
    assert late.is_set()
    with pytest.raises(OutboxError, match="closed"):
        box.put(TOPIC, b"{}")


def test_files_are_private_and_a_second_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "outbox.db"
    with Outbox(path):
        for p in (tmp_path / "a", tmp_path / "a" / "b"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(OutboxError, match="already open"):
            Outbox(path)
    Outbox(path).close()


def damage(path: Path, how: str) -> None:
    if how == "text":
        path.write_text("this is not a database\n" * 100)
        Path(f"{path}-wal").write_bytes(b"stale wal")
        return
    with Outbox(path) as box:
        box.put_many([(TOPIC, result(i), 1, False, None) for i in range(200)])
    with path.open("r+b") as f:  # scribble over b-tree pages after the schema page
        f.seek(2 * 4096)
        f.write(os.urandom(8 * 4096))


@pytest.mark.parametrize("how", ["text", "pages"])
def test_corrupt_file_is_reported_then_moved_aside_by_open_outbox(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    damage(path, how)
    original = path.read_bytes()
    with pytest.raises(OutboxCorruptError, match=str(path)) as info:
        Outbox(path)
    assert isinstance(info.value, EdgeRuntimeError) and isinstance(info.value, OSError)
    with caplog.at_level(logging.WARNING), open_outbox(path) as box:
        moved = box.corrupt_moved_to
        assert moved is not None and moved.name.startswith("outbox.db.corrupt-")
        assert moved.read_bytes() == original
        if how == "text":
            assert Path(f"{moved}-wal").read_bytes() == b"stale wal"
        assert box.stats()["depth"] == 0
        box.put(TOPIC, b"{}", seq=("digits", 1))
    assert "corrupt" in caplog.text and str(moved) in caplog.text
    with open_outbox(path) as box:
        assert box.corrupt_moved_to is None and box.last_seq("digits") == 1


def test_an_unopenable_path_is_an_error_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.mkdir()
    with pytest.raises(OutboxError, match="cannot open") as info:
        open_outbox(path)
    assert not isinstance(info.value, OutboxCorruptError) and path.is_dir()


def fill_until_full(box: Outbox, start: int) -> list[int]:
    ids: list[int] = []
    with pytest.raises(OutboxError) as info:
        for n in range(start, start + 100_000):
            ids.append(box.put(TOPIC, os.urandom(600), seq=("digits", n)))
    err = info.value
    assert err.errno == errno.ENOSPC and "disk full" in str(err) and str(box.path) in str(err)
    return ids


def check_consistent(box: Outbox, ids: list[int], last_seq: int) -> None:
    assert [m.id for m in box.peek(limit=10**6)] == ids
    assert box.last_seq("digits") == last_seq
    assert table(box.path) == (box.stats()["depth"], box.stats()["bytes"]) == (len(ids), 600 * len(ids))


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_disk_full_emulated_with_max_page_count(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    ids = [box.put(TOPIC, os.urandom(600), seq=("digits", n)) for n in range(1, 51)]
    with box._lock:
        pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
        box._conn.execute(f"PRAGMA max_page_count = {pages + 3}")
    ids += fill_until_full(box, 51)
    check_consistent(box, ids, len(ids))
    batch: list[PutItem] = [(TOPIC, os.urandom(600), 1, False, ("digits", 10**6))] * 50
    with pytest.raises(OutboxError, match="disk full"):
        box.put_many(batch)  # all or nothing
    check_consistent(box, ids, len(ids))
    with box._lock:
        box._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    ids.append(box.put(TOPIC, os.urandom(600), seq=("digits", len(ids) + 1)))
    check_consistent(box, ids, len(ids))
    box.close()
    assert integrity(path) == "ok"
    with Outbox(path) as box:
        check_consistent(box, ids, len(ids))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=False, capture_output=True
        )
    except FileNotFoundError:
        pytest.fail("no mount command: apt-get install -y mount (util-linux)")
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (run as root): {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_on_a_real_tiny_filesystem(tiny_fs: Path) -> None:
    path = tiny_fs / "outbox.db"
    box = Outbox(path)
    ids = fill_until_full(box, 1)
    assert ids
    check_consistent(box, ids, len(ids))
    box.close()
    with Outbox(path) as box:  # reopens on the full disk and can still drain
        check_consistent(box, ids, len(ids))
        assert box.ack(ids[:3]) == 3
        ids = ids[3:]
        subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_fs)], check=True)
        ids.append(box.put(TOPIC, os.urandom(600), seq=("digits", ids[-1] + 1)))
        check_consistent(box, ids, ids[-1])
    assert integrity(path) == "ok"


MAX_COUNT, MAX_BYTES = 6, 120


class OutboxModel(RuleBasedStateMachine):
    """Any interleaving of put, put_many, ack and reopen matches a list model and the table."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "o.db"
        self.box = Outbox(self.path, max_bytes=MAX_BYTES, max_count=MAX_COUNT)
        self.model: dict[int, bytes] = {}
        self.dropped = self.puts = self.acks = 0

    @rule(payloads=st.lists(st.binary(max_size=50), min_size=1, max_size=4))
    def put(self, payloads: list[bytes]) -> None:
        if len(payloads) == 1:
            ids = [self.box.put(TOPIC, payloads[0])]
        else:
            ids = self.box.put_many([(TOPIC, p, 1, False, None) for p in payloads])
        assert all(i > max(self.model, default=0) for i in ids)
        self.model.update(zip(ids, payloads, strict=True))
        self.puts += len(ids)
        while len(self.model) > MAX_COUNT or sum(map(len, self.model.values())) > MAX_BYTES:
            del self.model[min(self.model)]
            self.dropped += 1

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from([*self.model, 0, 10**6]), max_size=5))
        expected = len(set(ids) & set(self.model))
        assert self.box.ack(ids) == expected
        for i in ids:
            self.model.pop(i, None)
        self.acks += expected

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box = Outbox(self.path, max_bytes=MAX_BYTES, max_count=MAX_COUNT)
        self.puts = self.acks = 0

    @invariant()
    def stats_match_table_and_model(self) -> None:
        stats = self.box.stats()
        size = sum(map(len, self.model.values()))
        assert (stats["depth"], stats["bytes"]) == table(self.path) == (len(self.model), size)
        assert (stats["dropped"], stats["put"], stats["acked"]) == (self.dropped, self.puts, self.acks)
        assert (stats["oldest_age_s"] is None) == (not self.model)
        assert [(m.id, m.payload) for m in self.box.peek(limit=100)] == list(self.model.items())

    def teardown(self) -> None:
        self.box.close()
        self.tmp.cleanup()


TestOutboxModel = OutboxModel.TestCase
TestOutboxModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
