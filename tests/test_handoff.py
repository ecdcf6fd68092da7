"""The result stage: order, back-pressure, draining on close, a dead thread reported."""

from __future__ import annotations

import threading
import time

import pytest

from edge_runtime.handoff import Stage, StageDiedError
from edge_runtime.supervision import SUPERVISOR


def test_jobs_are_handled_in_order_on_another_thread() -> None:
    seen: list[tuple[int, str]] = []
    stage: Stage[int] = Stage("order", lambda n: seen.append((n, threading.current_thread().name)))
    for n in range(200):
        stage.put(n)
    assert stage.close(5.0)
    assert [n for n, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"order"}
    assert not stage.alive


def test_a_full_queue_blocks_the_producer_and_close_drains_everything() -> None:
    gate = threading.Event()
    done: list[int] = []

    def slow(n: int) -> None:
        gate.wait(10)
        done.append(n)

    stage: Stage[int] = Stage("slow", slow, depth=2)
    stage.put(0)  # taken by the thread, which waits at the gate
    time.sleep(0.1)
    stage.put(1)
    stage.put(2)  # the queue (depth 2) is now full
    blocked = threading.Thread(target=stage.put, args=(3,))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a put into a full queue must wait, not drop or grow"
    assert stage.busy_since is not None
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    assert stage.close(5.0)
    assert done == [0, 1, 2, 3]
    assert stage.busy_since is None


def test_close_gives_up_after_its_timeout_when_a_job_hangs() -> None:
    gate = threading.Event()
    stage: Stage[int] = Stage("hung", lambda n: gate.wait(10), depth=1)
    stage.put(0)
    stage.put(1)
    start = time.monotonic()
    assert stage.close(0.3) is False
    assert time.monotonic() - start < 2.0
    gate.set()
    assert stage.close(5.0)


def test_a_job_that_raises_is_dropped_and_the_next_one_handled() -> None:
    done: list[int] = []

    def sometimes(n: int) -> None:
        if n == 1:
            raise ValueError("bad job 1")
        done.append(n)

    stage: Stage[int] = Stage("sometimes", sometimes)
    for n in range(4):
        stage.put(n)
    assert stage.close(10.0)
    assert done == [0, 2, 3]
    assert isinstance(stage.error, ValueError)
    assert SUPERVISOR.stats()["sometimes"]["crashes"] == 1


def test_a_dead_thread_is_reported_and_put_raises_instead_of_blocking() -> None:
    def boom(n: int) -> None:
        raise ValueError(f"bad job {n}")

    stage: Stage[int] = Stage("boom", boom, restart=False)
    stage.put(7)
    deadline = time.monotonic() + 5
    while stage.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not stage.alive
    assert isinstance(stage.error, ValueError)
    with pytest.raises(StageDiedError, match="boom: thread died") as info:
        for n in range(10):
            stage.put(n)
    assert isinstance(info.value.__cause__, ValueError)
    assert stage.close(1.0)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        Stage("zero", lambda n: None, depth=0)


def test_a_grouping_stage_takes_what_waits_handles_each_in_order_and_flushes_once_per_group() -> None:
    gate = threading.Event()
    handled: list[int] = []
    flushed: list[list[int]] = []
    mark = [0]

    def handle(n: int) -> None:
        gate.wait(10)
        handled.append(n)

    def flush() -> None:
        flushed.append(handled[mark[0] :])
        mark[0] = len(handled)

    stage: Stage[int] = Stage("grouped", handle, depth=4, flush=flush)
    stage.put(0)  # taken alone: the thread waits at the gate with it
    time.sleep(0.1)
    for n in range(1, 5):
        stage.put(n)  # these wait in the queue (depth 4)
    gate.set()
    assert stage.close(5.0)
    assert handled == [0, 1, 2, 3, 4]
    assert flushed == [[0], [1, 2, 3, 4]], "what waited was handled as one group, flushed once"
    assert (stage.groups, stage.grouped) == (2, 5)


def test_a_group_never_exceeds_depth_plus_one_and_keeps_order_under_a_fast_producer() -> None:
    sizes: list[int] = []
    seen: list[int] = []
    count = [0]

    def handle(n: int) -> None:
        seen.append(n)
        count[0] += 1
        time.sleep(0.001)

    def flush() -> None:
        sizes.append(count[0])
        count[0] = 0

    stage: Stage[int] = Stage("bounded", handle, depth=3, flush=flush)
    for n in range(300):
        stage.put(n)
    assert stage.close(10.0)
    assert seen == list(range(300))
    assert max(sizes) <= 4 and sum(sizes) == 300
    assert max(sizes) > 1, "a producer faster than the handler gives groups"


def test_the_rest_of_a_group_after_a_job_that_raised_is_handled_after_the_restart() -> None:
    gate = threading.Event()
    handled: list[int] = []
    flushed: list[list[int]] = []
    mark = [0]

    def handle(n: int) -> None:
        gate.wait(10)
        if n == 2:
            raise RuntimeError("job 2 broke")
        handled.append(n)

    def flush() -> None:
        flushed.append(handled[mark[0] :])
        mark[0] = len(handled)

    stage: Stage[int] = Stage("raising", handle, depth=4, flush=flush)
    stage.put(0)
    time.sleep(0.1)
    for n in range(1, 5):
        stage.put(n)
    gate.set()
    assert stage.close(5.0)
    assert handled == [0, 1, 3, 4], "only the job that raised is lost, the others keep their order"
    assert flushed == [[0], [1], [3, 4]], "what was handled before the exception is flushed before it"
    assert isinstance(stage.error, RuntimeError)
    SUPERVISOR.forget()
