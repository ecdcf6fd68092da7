"""No thread may die silently: the supervisor on its own, then every kind of thread of a real
daemon (real mosquitto, a real video, the real digits model) hit by an exception it did not expect.

The exception is raised inside the running thread with ``PyThreadState_SetAsyncExc``, at whatever
line it is executing, as a bug would: no hook in the daemon's code is needed. Each hit thread must be
reported (a ``thread.crashed`` event naming it), restarted, and the daemon must go on producing
results and answering commands; a thread that keeps crashing makes the daemon exit with status 1.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devkit.broker import Mosquitto
from devkit.daemon import digits_config
from devkit.mqtt_client import Subscriber
from devkit.processes import wait_until
from edge_runtime.config import load_config
from edge_runtime.daemon.service import Service
from edge_runtime.supervision import Supervisor


class InjectedFault(BaseException):
    """Raised inside a daemon thread by the test. A BaseException, so that a library's own
    ``except Exception`` (paho's loop turns one into a lost connection) cannot absorb it: it plays
    an exception that nothing below the thread's body handles."""


OLDER: set[int | None] = set()  # threads alive before the daemon under test started


def inject(thread_name: str, exc: type[BaseException] = InjectedFault) -> None:
    """Raise ``exc`` in the live thread ``thread_name`` of the daemon under test (not one of the
    same name left by an earlier test in this process) at its next Python instruction."""
    thread = next((t for t in threading.enumerate() if t.name == thread_name and t.ident not in OLDER), None)
    assert thread is not None and thread.ident is not None, f"no thread {thread_name!r}: " + ", ".join(
        sorted(t.name for t in threading.enumerate())
    )
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))
    assert done == 1, f"could not raise in {thread_name}"


# -- the supervisor on its own -----------------------------------------------------------------------


def test_a_crashing_body_is_reported_and_restarted_with_backoff() -> None:
    supervisor = Supervisor(max_restarts=5, window_s=60)
    reports: list[tuple[str, str, int, bool]] = []
    supervisor.on_crash = lambda *args: reports.append(args)
    runs: list[float] = []
    exited = threading.Event()

    def body() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 3:
            raise ValueError(f"bug {len(runs)}")

    thread = supervisor.thread("worker", body, on_exit=exited.set)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and exited.is_set()
    assert len(runs) == 4, "three crashes, three restarts, then a normal return"
    assert [r[:3] for r in reports] == [("worker", f"ValueError: bug {n}", n) for n in (1, 2, 3)]
    assert not any(r[3] for r in reports)
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, f"backoff doubles: {gaps}"
    assert supervisor.stats()["worker"] == {
        "state": "stopped",
        "crashes": 3,
        "last_error": "ValueError: bug 3",
    }
    assert supervisor.failed() == []


def test_a_body_that_keeps_crashing_is_given_up_and_named() -> None:
    supervisor = Supervisor(max_restarts=2, window_s=60, max_backoff_s=0.05)
    reports: list[tuple[str, str, int, bool]] = []
    supervisor.on_crash = lambda *args: reports.append(args)

    def body() -> None:
        raise RuntimeError("always")

    thread = supervisor.thread("hopeless", body)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert [r[3] for r in reports] == [False, False, True], "given up at the third crash in the window"
    (failure,) = supervisor.failed()
    assert "thread hopeless crashed 3 times" in failure and "RuntimeError: always" in failure


def test_no_restart_while_the_owner_stops_or_when_not_wanted() -> None:
    supervisor = Supervisor()
    stopping = threading.Event()
    runs: list[int] = []

    def body() -> None:
        runs.append(1)
        stopping.set()
        raise RuntimeError("while stopping")

    thread = supervisor.thread("stopping", body, should_restart=lambda: not stopping.is_set())
    thread.start()
    thread.join(5)
    assert runs == [1] and not thread.is_alive()
    once = supervisor.thread("once", lambda: 1 / 0, restart=False)
    once.start()
    once.join(5)
    assert supervisor.stats()["once"]["crashes"] == 1 and supervisor.failed() == []


# -- every kind of thread of a real daemon ---------------------------------------------------------------


@contextmanager
def running_daemon(tmp_path: Path, broker: Mosquitto, device: str) -> Iterator[Service]:
    path = digits_config(tmp_path, port=broker.port, device=device, fps=20.0, health_s=0.5)
    service = Service(load_config(path), [], config_path=path)
    OLDER.clear()
    OLDER.update(t.ident for t in threading.enumerate())
    runner = threading.Thread(target=service.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: service.reporter is not None and bool(service.pipelines), 30)
        yield service
    finally:
        service.stop("test over")
        runner.join(30)
    assert not runner.is_alive(), "the daemon did not stop"


def _events(sub: Subscriber, device: str) -> list[dict[str, Any]]:
    return sub.json(f"edge/{device}/events")


def _results_after(sub: Subscriber, device: str, seq: int) -> int:
    return sum(1 for r in sub.json(f"edge/{device}/pipelines/digits/results") if r["seq"] > seq)


def _last_seq(sub: Subscriber, device: str) -> int:
    return max((r["seq"] for r in sub.json(f"edge/{device}/pipelines/digits/results")), default=0)


def _ping(sub: Subscriber, device: str, request_id: str) -> bool:
    sub.publish(f"edge/{device}/cmd/ping", {"id": request_id})
    return wait_until(lambda: bool(sub.messages(f"edge/{device}/reply/{request_id}")), 10)


THREADS = (
    "mqtt-forwarder",
    "mqtt-network",
    "health",
    "source-camera",
    "pipeline-digits",
    "invoke-digits",
    "results-digits",
    "commands",
)


def test_every_kind_of_thread_is_restarted_after_an_unexpected_exception(
    tmp_path: Path, broker: Mosquitto
) -> None:
    device = f"sup-{uuid.uuid4().hex[:8]}"
    with (
        Subscriber(broker.host, broker.port, f"edge/{device}/#") as sub,
        running_daemon(tmp_path, broker, device) as service,
    ):
        assert wait_until(lambda: _last_seq(sub, device) >= 5, 30), "no results before the faults"
        for n, name in enumerate(THREADS):
            seq = _last_seq(sub, device)
            inject(name)
            if name == "commands":  # blocked in queue.get(): the next command wakes it (and is lost)
                sub.publish(f"edge/{device}/cmd/ping", {"id": f"wake{n}"})

            def crashed(name: str = name) -> bool:
                return any(
                    e.get("kind") == "thread.crashed" and e.get("thread") == name
                    for e in _events(sub, device)
                )

            def flowing(seq: int = seq) -> bool:
                return _results_after(sub, device, seq) >= 5

            assert wait_until(crashed, 20), f"no thread.crashed event for {name}"
            assert wait_until(flowing, 30), f"results stopped after {name} crashed"
            assert _ping(sub, device, f"after{n}"), f"ping not answered after {name} crashed"
        assert service.exit_code == 0 and not service.stop_event.is_set()
        health = service.publish_health()
        assert set(health["threads"]["crashed"]) == set(THREADS)
        assert all(v["state"] == "running" for v in health["threads"]["crashed"].values())
        assert service.problems() == []


@pytest.mark.slow
def test_a_thread_that_keeps_crashing_stops_the_daemon_with_status_1(
    tmp_path: Path, broker: Mosquitto
) -> None:
    device = f"sup-{uuid.uuid4().hex[:8]}"
    with (
        Subscriber(broker.host, broker.port, f"edge/{device}/#") as sub,
        running_daemon(tmp_path, broker, device) as service,
    ):
        assert wait_until(lambda: _last_seq(sub, device) >= 1, 30)
        for _ in range(10):
            if service.stop_event.is_set():
                break
            crashes = service.publish_health()["threads"]["crashes"]
            inject("health")

            def counted(before: int = crashes) -> bool:
                if service.stop_event.is_set():
                    return True
                health = service.publish_health()["threads"]
                restarted = health["crashed"].get("health", {}).get("state") == "running"
                return bool(health["crashes"] > before and restarted)  # hit it again once it runs

            assert wait_until(counted, 15)
        assert wait_until(service.stop_event.is_set, 15), "the daemon goes on with a dead health thread"
        assert service.exit_code == 1
        assert "thread health cannot be restarted" in service.stop_reason
        assert wait_until(
            lambda: any(e.get("gave_up") for e in _events(sub, device) if e.get("kind") == "thread.crashed"),
            10,
        )
