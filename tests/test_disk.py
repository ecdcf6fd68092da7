"""Disk you can trust: the outbox within its bytes (write-ahead log included) on a real 2 MB tmpfs,
a free-disk reserve with failing health while results cannot be stored, recovery by itself when
space returns; ``seq`` and intact rows surviving a corrupt (truncated or random) outbox."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import Daemon, digits_config, stats_line
from devkit.httpd import HttpDaemon
from devkit.mqtt_client import Subscriber
from devkit.processes import wait_until
from edge_runtime.reporting.diskbudget import default_wal_bytes, payload_bound
from edge_runtime.reporting.outbox import Outbox, OutboxError
from edge_runtime.reporting.seqstate import SeqReservations, salvage

pytestmark = pytest.mark.fault

TOPIC = "edge/dev1/pipelines/digits/results"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (``mount -t tmpfs -o size=2m``); needs root, fails otherwise."""
    mounted: list[Path] = []
    if shutil.which("mount") is None:
        pytest.fail("no mount command: full-disk tests need util-linux mount")

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here ({proc.stderr.strip()}): full-disk tests need root")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def device() -> str:
    return f"disk-{uuid.uuid4().hex[:10]}"


def result(seq: int) -> bytes:
    doc = {
        "v": 1,
        "device": "dev1",
        "pipeline": "digits",
        "seq": seq,
        "ts": time.time(),
        "result": {"label": "3"},
    }
    return json.dumps(doc).encode() + b" " * 200


def used_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def disk_free(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


# -------------------------------------------------------------------------------- outbox alone


@pytest.mark.parametrize("wal_bytes", [4 * 1024 * 1024, None], ids=["old-1000-page-wal", "bounded-wal"])
def test_write_ahead_log_on_a_2mb_disk(tmpfs: Callable[[str], Path], wal_bytes: int | None) -> None:
    """Put and acknowledge 3,000 results (a connected broker) with an empty outbox: the old WAL
    interval (1000 pages for the default 64 MiB bound) fills the disk; the bounded one stays small."""
    disk = tmpfs("2m")
    errors, peak = 0, 0
    with Outbox(disk / "outbox.sqlite", wal_bytes=wal_bytes) as box:
        for seq in range(1, 3001):
            try:
                box.ack([box.put(TOPIC, result(seq), seq=("digits", seq))])
            except OutboxError:
                errors += 1
            peak = max(peak, box.disk_bytes())
    print(f"\nwal_bytes={wal_bytes}: {errors} of 3000 not stored, peak {peak} bytes on disk")
    if wal_bytes is None:
        assert errors == 0
        assert peak <= default_wal_bytes(64 << 20) + 64 * 1024 + 32 * 1024  # log + database + shared memory
    else:  # what the bound is for: without it the log alone fills the disk
        assert errors > 2000


def test_reserve_refuses_before_the_disk_is_full_and_recovers_by_itself(tmpfs: Callable[[str], Path]) -> None:
    disk = tmpfs("2m")
    reserve = 512 * 1024
    with Outbox(disk / "outbox.sqlite", max_bytes=payload_bound(64 << 20), reserve_bytes=reserve) as box:
        ids: list[int] = []
        refused = 0
        for seq in range(1, 20_001):  # a broker that is down: nothing is acknowledged
            try:
                ids.append(box.put(TOPIC, result(seq), seq=("digits", seq)))
            except OutboxError as exc:
                assert "below the reserve" in str(exc) and exc.errno == 28
                refused += 1
                if refused >= 50:
                    break
        assert refused == 50 and box.refused_reserve == 50
        # a group counts each message it held; a group its caller stores again one by one (the
        # reporter's group commit) counts none, so each result is counted once, by its own attempt
        group = [(TOPIC, result(s), 1, False, ("digits", s)) for s in (90_001, 90_002, 90_003)]
        for retried, counted in ((False, 53), (True, 53)):
            with pytest.raises(OutboxError, match="below the reserve"):
                box.put_many(group, retried=retried)
            assert box.refused_reserve == counted
        low = disk_free(disk)
        assert low >= reserve - default_wal_bytes(64 << 20) - 64 * 1024, low  # the reserve held
        (disk / "own-state.json").write_bytes(b"x" * 64 * 1024)  # the daemon can still write its state
        box.ack(ids[: len(ids) // 2])  # the broker is back: acknowledged pages are reused
        box.put(TOPIC, result(99_999), seq=("digits", 99_999))
        assert box.last_seq("digits") == 99_999
    print(f"\nreserve: {len(ids)} stored, free disk at refusal {low} bytes")


def test_seq_reservations_survive_in_their_own_file(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    seqs = SeqReservations(path, block=100)
    assert seqs.reserved("digits") == 0
    seqs.ensure("digits", 1)
    assert json.loads(path.read_text()) == {"v": 1, "reserved": {"digits": 101}}
    mtime = path.stat().st_mtime_ns
    for n in range(2, 102):
        seqs.ensure("digits", n)
    assert path.stat().st_mtime_ns == mtime  # one write per block
    seqs.ensure("digits", 102)
    assert SeqReservations(path).reserved("digits") == 202
    path.write_bytes(b"\x00garbage")
    assert SeqReservations(path).reserved("digits") == 0


def _filled_outbox(path: Path, n: int) -> None:
    with Outbox(path) as box:
        for seq in range(1, n + 1):
            box.put(TOPIC, result(seq), seq=("digits", seq))


def test_salvage_reads_every_row_of_an_intact_file_and_the_rest_of_a_truncated_one(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    _filled_outbox(path, 1000)
    whole = salvage(path)
    assert len(whole.rows) == 1000 and whole.unreadable == 0 and whole.seqs == {"digits": 1000}
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 2)
    half = salvage(path)
    seqs = [json.loads(p)["seq"] for _, p, _, _ in half.rows]
    assert 0 < len(seqs) < 1000 and seqs == sorted(seqs)
    assert half.seqs["digits"] >= max(seqs)
    assert half.unreadable is None and half.lost_at_most == 1000 - len(seqs)
    print(f"\ntruncated to {size // 2} of {size} bytes: {len(seqs)} of 1000 rows salvaged")
    path.write_bytes(os.urandom(size))
    garbage = salvage(path)
    assert garbage.rows == () and not garbage.is_database and "not a database" in garbage.error


# ---------------------------------------------------------------------------- the real daemon


def _health(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return sub.json(f"edge/{device}/health")


def test_2mb_disk_with_the_broker_up_no_result_lost_without_failing_health(
    tmp_path: Path, tmpfs: Callable[[str], Path], broker: Mosquitto, device: str
) -> None:
    state = tmpfs("2m")
    config = digits_config(tmp_path, port=broker.port, state=state, device=device)
    topics = [f"edge/{device}/pipelines/+/results", f"edge/{device}/health", f"edge/{device}/events"]
    with Subscriber(broker.host, broker.port, topics) as sub, Daemon(config) as daemon:
        assert sub.wait_for(lambda ms: len(sub.json(f"edge/{device}/pipelines/+/results")) >= 40, 30)
        peak_before = used_bytes(state)
        # other files fill the disk up to 100 KB: below the outbox's 512 KiB reserve
        filler = state / "filler.bin"
        filler.write_bytes(b"\0" * max(0, disk_free(state) - 100 * 1024))
        assert sub.wait_for(lambda ms: any(h["state"] == "failing" for h in _health(sub, device)), 20)
        failing = next(h for h in _health(sub, device) if h["state"] == "failing")
        assert failing["components"]["outbox"]["state"] == "failing", failing["components"]
        assert any("not stored" in p or "below the reserve" in p for p in failing["problems"]), failing[
            "problems"
        ]
        assert daemon.proc.poll() is None
        filler.unlink()  # space returns
        freed = time.monotonic()
        n = len(_health(sub, device))
        assert sub.wait_for(lambda ms: any(h["state"] == "ok" for h in _health(sub, device)[n:]), 30)
        recovered_s = time.monotonic() - freed
        delivered_before = len(sub.json(f"edge/{device}/pipelines/+/results"))
        assert sub.wait_for(
            lambda ms: len(sub.json(f"edge/{device}/pipelines/+/results")) > delivered_before + 20, 20
        )
        assert daemon.stop() == 0
    log = daemon.log()
    outbox = stats_line(log, "reporting", "outbox")
    results = stats_line(log, "pipeline", "digits")["results"]
    got = {r["seq"] for r in sub.json(f"edge/{device}/pipelines/+/results")}
    missing = set(range(1, results + 1)) - got
    print(
        f"\n2 MB tmpfs, broker up: {results} results, {len(missing)} not delivered, store_errors "
        f"{outbox['store_errors']}, peak outbox before the filler {peak_before} bytes, health ok again "
        f"{recovered_s:.1f} s after space returned"
    )
    assert outbox["store_errors"] > 0 and len(missing) <= outbox["store_errors"]  # every loss counted
    kinds = [(e["kind"], e.get("state")) for e in sub.json(f"edge/{device}/events")]
    assert ("health.state", "failing") in kinds and ("health.state", "ok") in kinds, kinds
    assert "Traceback" not in log


def test_2mb_disk_with_the_broker_down_keeps_the_reserve_then_drains(
    tmp_path: Path, tmpfs: Callable[[str], Path], make_broker: Callable[..., Mosquitto], device: str
) -> None:
    state = tmpfs("2m")
    broker = make_broker(persistence=True, extra_config="max_queued_messages 0\n")
    broker.stop()
    config = digits_config(tmp_path, port=broker.port, state=state, device=device)
    config.write_text(config.read_text().replace("realtime = true", "realtime = false"))  # full rate
    with Daemon(config, "--quiet") as daemon:
        assert wait_until(lambda: "below the reserve" in daemon.log(), 90, 0.2), daemon.log()[-3000:]
        lowest = disk_free(state)
        time.sleep(1.0)
        lowest = min(lowest, disk_free(state))
        (state / "own-state.json").write_bytes(b"x" * 128 * 1024)  # room is left for the daemon's state
        broker.start()
        topics = [f"edge/{device}/pipelines/+/results", f"edge/{device}/health"]
        with Subscriber(broker.host, broker.port, topics) as sub:
            assert sub.wait_for(lambda ms: any(h["state"] == "ok" for h in _health(sub, device)), 60), [
                (h["state"], h["problems"]) for h in _health(sub, device)[-3:]
            ]
            assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    outbox = stats_line(daemon.log(), "reporting", "outbox")
    print(f"\n2 MB tmpfs, broker down: lowest free {lowest} bytes, outbox {outbox}")
    assert outbox["refused_reserve"] > 0 and outbox["store_errors"] >= outbox["refused_reserve"]
    assert lowest > 128 * 1024


def _run_until(config: Path, n: int) -> int:
    with Daemon(config) as daemon:
        assert wait_until(lambda: daemon.count() >= n, 60), daemon.log()[-3000:]
        assert daemon.stop() == 0
    return max(int(r["seq"]) for r in daemon.results)


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_corrupt_outbox_seq_continues_and_intact_rows_are_delivered(
    tmp_path: Path, make_broker: Callable[..., Mosquitto], device: str, damage: str
) -> None:
    broker = make_broker(persistence=True, extra_config="max_queued_messages 0\n")
    broker.stop()  # the results stay in the outbox
    config = digits_config(tmp_path, port=broker.port, device=device)
    state = tmp_path / f"state-{device}"
    last = _run_until(config, 300)
    path = state / "outbox.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        stored = conn.execute("SELECT count(*) FROM messages WHERE topic LIKE '%/results'").fetchone()[0]
    size = path.stat().st_size
    if damage == "truncated":
        with path.open("r+b") as fh:
            fh.truncate(size // 2)
    else:
        path.write_bytes(os.urandom(size))
    broker.start()
    topics = [f"edge/{device}/pipelines/+/results", f"edge/{device}/events"]
    with Subscriber(broker.host, broker.port, topics) as sub, Daemon(config, "--max-results", "20") as daemon:
        assert wait_until(lambda: daemon.proc.poll() is not None, 60), daemon.log()[-3000:]
        new = [r["seq"] for r in daemon.results]
        assert sub.wait_for(
            lambda ms: set(new) <= {r["seq"] for r in sub.json(f"edge/{device}/pipelines/+/results")}, 30
        )
        events = [e for e in sub.json(f"edge/{device}/events") if e["kind"] == "outbox.corrupt"]
    assert daemon.proc.returncode == 0
    assert len(events) == 1, events
    event = events[0]
    old = sorted({r["seq"] for r in sub.json(f"edge/{device}/pipelines/+/results")} - set(new))
    print(
        f"\n{damage}: {stored} results stored, {event['salvaged']} salvaged, {len(old)} delivered;"
        f" {event['message']}"
    )
    assert min(new) > last, (min(new), last)  # no seq reused with other content
    if damage == "truncated":
        intact = {
            json.loads(p)["seq"] for t, p, _, _ in salvage(Path(event["moved_to"])).rows if "/results" in t
        }
        assert 0 < len(intact) <= stored and old == sorted(intact)  # every intact result delivered
        assert event["lost"] is None and event["lost_at_most"] > 0  # a damaged file cannot count its rows
    else:
        assert event["salvaged"] == 0 and "unknown" in event["message"] and event["lost_at_most"] is None
    assert "Traceback" not in daemon.log()


def test_readyz_is_503_while_results_are_not_stored_and_200_again(
    tmp_path: Path, tmpfs: Callable[[str], Path], broker: Mosquitto, device: str
) -> None:
    """The HTTP readiness check follows the derived state: a 2 MB disk filled by another file."""
    state = tmpfs("2m")
    config = digits_config(tmp_path, port=broker.port, state=state, device=device)
    with HttpDaemon(config) as daemon:
        daemon.wait_results(20)
        assert wait_until(lambda: daemon.get("/readyz")[0] == 200, 20), daemon.get("/readyz")
        filler = state / "filler.bin"
        filler.write_bytes(b"\0" * max(0, disk_free(state) - 100 * 1024))
        assert wait_until(lambda: daemon.get("/readyz")[0] == 503, 20), daemon.get("/readyz")
        body = json.loads(daemon.get("/readyz")[1])
        assert body["ready"] is False and body["health"]["state"] == "failing", body
        assert any("reserve" in p or "not stored" in p for p in body["health"]["problems"]), body
        filler.unlink()
        assert wait_until(lambda: daemon.get("/readyz")[0] == 200, 20), daemon.get("/readyz")
        assert daemon.stop() == 0
