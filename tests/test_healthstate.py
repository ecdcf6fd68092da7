"""The derived health state (edge_runtime.healthstate): pure rules over health documents."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from edge_runtime.healthstate import DEGRADED, FAILING, OK, DeviceHealth, HealthLimits, assess, counters
from edge_runtime.healthwatch import PauseDetector, StateChanges, ready_to_announce

LIMITS = HealthLimits(start_grace_s=30.0, stale_s=10.0, disk_reserve_bytes=1000)


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "uptime_s": 100.0,
        "pipelines": {
            "digits": {
                "results": 50, "triggers": 50, "errors": 0,
                "last_result_age_s": 0.1, "last_trigger_age_s": 0.1,
            }
        },
        "sources": {
            "imu": {
                "type": "serial", "state": "up", "last_sample_age_s": 0.02, "samples": 500,
                "lines": 500, "parse_errors_total": 0, "channels_refused": 0, "max_channels": 64,
            }
        },
        "outbox": {"depth": 0, "dropped": 0, "store_errors": 0, "last_store_error": ""},
        "mqtt": {"connected": True},
        "system": {"disk_free_bytes": 10**9, "mem_available_bytes": 10**9, "mem_total_bytes": 4 * 10**9},
    }  # fmt: skip
    doc.update(over)
    return doc


def test_a_working_device_is_ok() -> None:
    health = assess(_doc(), None, LIMITS)
    assert health == DeviceHealth(OK, (), health.components)
    assert {c.key for c in health.components} == {"pipeline/digits", "source/imu", "outbox", "mqtt", "system"}
    assert all(c.state == OK for c in health.components)


def test_store_errors_are_failing_and_clear_in_the_next_window() -> None:
    before = counters(_doc())
    doc = _doc(outbox={"dropped": 0, "store_errors": 120, "last_store_error": "disk full"})
    health = assess(doc, before, LIMITS)
    assert health.state == FAILING
    assert health.reasons == ("outbox: 120 messages not stored since the last report (disk full)",)
    outbox = health.component("outbox")
    assert outbox is not None and outbox.state == FAILING
    assert assess(doc, counters(doc), LIMITS).state == OK  # no new store error since


def test_disk_below_the_reserve_is_failing_near_it_degraded() -> None:
    low = _doc(system={"disk_free_bytes": 999})
    assert assess(low, None, LIMITS).reasons == ("disk: 999 bytes free, below the reserve of 1000",)
    assert assess(low, None, LIMITS).state == FAILING
    assert assess(_doc(system={"disk_free_bytes": 1500}), None, LIMITS).state == DEGRADED
    assert assess(_doc(system={"disk_free_bytes": 2000}), None, LIMITS).state == OK


def test_a_triggered_pipeline_without_results_is_failing() -> None:
    p = {"results": 50, "triggers": 90, "errors": 0, "last_result_age_s": 12.0, "last_trigger_age_s": 0.1}
    health = assess(_doc(pipelines={"digits": p}), None, LIMITS)
    assert health.state == FAILING
    assert health.reasons == ("pipeline digits: triggered but no result for 12 s",)
    p.update(last_trigger_age_s=12.0)  # nothing triggers it: the source is the problem, not the pipeline
    assert assess(_doc(pipelines={"digits": p}), None, LIMITS).state == DEGRADED
    p.update(last_result_age_s=9.9)
    assert assess(_doc(pipelines={"digits": p}), None, LIMITS).state == OK


def test_no_result_within_the_start_grace() -> None:
    p: dict[str, Any] = {"results": 0, "triggers": 0, "last_result_age_s": None, "last_trigger_age_s": None}
    early = _doc(uptime_s=29.9, pipelines={"digits": p})
    assert assess(early, None, LIMITS).state == OK
    late = _doc(uptime_s=30.0, pipelines={"digits": p})
    assert assess(late, None, LIMITS).reasons == ("pipeline digits: no result in the 30 s start grace",)
    p.update(triggers=40, last_trigger_age_s=0.1)
    assert assess(late, None, LIMITS).state == FAILING
    paused = dict(p, paused=True)
    assert assess(_doc(uptime_s=60.0, pipelines={"digits": paused}), None, LIMITS).state == OK


def test_garbage_lines_degrade_a_source() -> None:
    before = counters(_doc())
    imu = dict(_doc()["sources"]["imu"], parse_errors_total=1972, lines=500)  # 1972 bad, 0 good
    health = assess(_doc(sources={"imu": imu}), before, LIMITS)
    assert health.state == DEGRADED
    assert health.reasons == ("source imu: 1972 of 1972 lines unparsable (100%) since the last report",)
    some = dict(imu, parse_errors_total=4, lines=500)  # below min_parse_errors
    assert assess(_doc(sources={"imu": some}), before, LIMITS).state == OK
    minority = dict(imu, parse_errors_total=40, lines=600)  # 40 of 140: below the 50 % share
    assert assess(_doc(sources={"imu": minority}), before, LIMITS).state == OK


def test_refused_channels_degrade_a_source() -> None:
    before = counters(_doc())
    imu = dict(_doc()["sources"]["imu"], channels_refused=39936)
    health = assess(_doc(sources={"imu": imu}), before, LIMITS)
    assert health.reasons == (
        "source imu: 39936 new channels refused since the last report (cap of 64 channels reached)",
    )


def test_silent_and_never_answering_sources() -> None:
    silent = {"type": "camera", "state": "up", "last_sample_age_s": 10.5}
    assert assess(_doc(sources={"cam": silent}), None, LIMITS).reasons == ("source cam: no data for 10 s",)
    never = {"type": "camera", "state": "starting", "last_sample_age_s": None, "last_error": ""}
    assert assess(_doc(uptime_s=10.0, sources={"cam": never}), None, LIMITS).state == OK
    health = assess(_doc(uptime_s=31.0, sources={"cam": never}), None, LIMITS)
    assert health.reasons == ("source cam: no data in the 30 s since start",)
    down = {"type": "camera", "state": "down", "last_error": "cannot open camera x: connection refused"}
    assert assess(_doc(sources={"cam": down}), None, LIMITS).reasons == (
        "source cam is down: cannot open camera x: connection refused",
    )
    down["down_cause"] = "camera stream x ended or stalled"  # how the outage began, and the latest failure
    assert assess(_doc(sources={"cam": down}), None, LIMITS).reasons == (
        "source cam is down: camera stream x ended or stalled"
        " (now: cannot open camera x: connection refused)",
    )


def test_model_store_reload_memory_and_mqtt() -> None:
    doc = _doc(
        model_store={"problems": {"digits": "current.json is unreadable (Expecting value)"}},
        reload={"ok": False, "error": "config.toml: line 3: invalid TOML"},
        mqtt={"connected": False, "last_error": "connection refused"},
        system={"disk_free_bytes": 10**9, "mem_available_bytes": 10**8, "mem_total_bytes": 4 * 10**9},
    )
    health = assess(doc, None, LIMITS)
    assert health.state == DEGRADED
    assert set(health.reasons) == {
        "mqtt disconnected: connection refused",
        "model store digits: current.json is unreadable (Expecting value)",
        "last reload failed: config.toml: line 3: invalid TOML",
        "memory: 95 MiB available of 3815 MiB (below 5%)",
    }
    assert assess(_doc(reload={"ok": True, "error": ""}), None, LIMITS).state == OK


def test_failing_reasons_come_first() -> None:
    doc = _doc(mqtt={"connected": False}, outbox={"dropped": 0, "store_errors": 3})
    health = assess(doc, None, LIMITS)
    assert health.state == FAILING
    assert health.reasons[0].startswith("outbox: 3 messages not stored")
    assert health.reasons[1] == "mqtt disconnected: not connected"


def test_counters_going_backwards_count_from_zero() -> None:
    before = counters(_doc(pipelines={"digits": {"errors": 10, "results": 5}}))
    doc = _doc(pipelines={"digits": {"errors": 2, "results": 5, "last_error": "x"}})  # a reload restarted it
    assert assess(doc, before, LIMITS).reasons == (
        "pipeline digits: 2 errors since the last report (last: x)",
    )


def test_state_changes_emit_one_event_per_change() -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    changes = StateChanges(lambda kind, message, fields: events.append((kind, message, fields)))
    changes.update(assess(_doc(), None, LIMITS))
    assert events == []
    failing = assess(_doc(outbox={"store_errors": 5, "last_store_error": "disk full"}), None, LIMITS)
    changes.update(failing)
    changes.update(failing)  # no change: no event
    assert [(e[2]["component"], e[2]["previous"], e[2]["state"]) for e in events] == [
        ("outbox", OK, FAILING),
        ("device", OK, FAILING),
    ]
    assert (
        events[1][1]
        == "device is failing (was ok): outbox: 5 messages not stored since the last report (disk full)"
    )
    changes.update(assess(_doc(), None, LIMITS))
    assert [(e[2]["component"], e[2]["state"]) for e in events[2:]] == [("outbox", OK), ("device", OK)]


def test_ready_waits_for_every_pipeline_or_the_grace() -> None:
    assert ready_to_announce({}, 0.0, 30.0) == "every pipeline produced a result"
    pipelines = {"a": {"results": 1}, "b": {"results": 0}}
    assert ready_to_announce(pipelines, 29.0, 30.0) == ""
    assert ready_to_announce(pipelines, 30.0, 30.0) == "start grace of 30 s passed; no result yet from b"
    pipelines["b"]["results"] = 1
    assert ready_to_announce(pipelines, 1.0, 30.0) == "every pipeline produced a result"


def test_pause_detector_sees_a_stopped_process() -> None:
    now = [0.0]
    detector = PauseDetector(0.1, clock=lambda: now[0])
    for _ in range(50):
        now[0] += 0.1
        assert detector.tick(settle_s=5.0) == 0.0
    assert not detector.settling()
    now[0] += 20.0  # SIGSTOP for 20 s, then SIGCONT
    assert detector.tick(settle_s=5.0) == pytest.approx(20.0)
    assert detector.settling() and detector.pauses == 1
    now[0] += 5.1
    assert not detector.settling()
    detector = PauseDetector(0.1, clock=lambda: now[0])
    now[0] += 3.0  # a 3 s scheduling delay on a loaded board, with a 15 s stuck limit: no pause
    assert detector.tick(settle_s=15.0, min_gap_s=7.5) == 0.0 and not detector.settling()


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIMITS.stale_s = 1.0  # type: ignore[misc]


def test_store_problems_found_before_attaching_are_reported() -> None:
    """The model store is read before the daemon's health exists: its problems are not lost."""
    from edge_runtime.config import Config, HealthConfig, OutboxConfig
    from edge_runtime.healthwatch import DaemonHealth

    class Store:
        def __init__(self) -> None:
            self.problems = {"digits": "current.json is unreadable"}
            self.on_problem: Callable[[str, str], None] | None = None

    events: list[tuple[str, str]] = []
    config = Config.model_construct(
        health=HealthConfig(), outbox=OutboxConfig(), pipelines=[]
    )  # what it reads
    watch = DaemonHealth(lambda kind, message, fields: events.append((kind, message)), config)
    store = Store()
    watch.attach_store(store)
    assert events == [("model.store_broken", "model store digits: current.json is unreadable")]
    assert store.on_problem is not None
    store.problems["other"] = "committed model abc: model file missing"
    store.on_problem("other", store.problems["other"])
    assert events[-1] == ("model.store_broken", "model store other: committed model abc: model file missing")
    assert watch.extra()["model_store"]["problems"] == store.problems
