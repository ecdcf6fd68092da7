"""Data capture's parts in one process: the rules, the budgets (a controlled clock), the disk ring
(quota, eviction order, sweep of what a crash leaves) and the capture thread's drops when behind.
Real JPEGs of real scenes (devkit.media), a real state folder, the real capture thread."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from devkit.media import noisy, scene
from devkit.processes import wait_until
from edge_runtime.monitor.capture import Budget, CaptureConfig, reasons
from edge_runtime.monitor.capture_store import CaptureStore, SampleTooLargeError, id_time, make_id
from edge_runtime.monitor.capture_worker import QUEUE, Capturer
from edge_runtime.sources.base import Frame

cv2 = pytest.importorskip("cv2")


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def classification(score: float, label: str = "3", pipeline: str = "p") -> dict[str, Any]:
    top = [{"label": label, "score": score, "index": 3}]
    return {"pipeline": pipeline, "seq": 1, "result": {"type": "classification", "top": top}}


def jpeg(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    image = noisy(scene(seed, *size), np.random.default_rng(seed), 8.0)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(data.tobytes())


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


# -- budgets ---------------------------------------------------------------------------------------


def test_the_budget_allows_exactly_its_counts_per_minute_hour_and_day() -> None:
    clock = Clock()
    budget = Budget(CaptureConfig(per_minute=3, per_hour=5, per_day=7), clock)
    taken = [budget.take() for _ in range(10)]
    assert sum(t is not None for t in taken) == 3  # the minute's 3
    clock.t += 59.999
    assert budget.take() is None  # still inside the same 60 s
    clock.t += 0.001
    assert [budget.take() is not None for _ in range(4)] == [True, True, False, False]  # the hour's 5
    clock.t += 3600 - 60
    assert budget.take() is not None  # the first 3 left the hour (day: 6)
    clock.t += 60
    assert [budget.take() is not None for _ in range(3)] == [True, False, False]  # the day's 7
    assert budget.used() == {"minute": 1, "hour": 2, "day": 7}  # the two of minute 1 left the hour too
    clock.t += 86400 - 3600
    assert budget.take() is not None  # the first 5 left the day
    clock.t += 60
    assert budget.used()["day"] == 3


def test_a_capture_given_back_frees_its_place_and_the_disk_seeds_the_windows() -> None:
    clock = Clock()
    budget = Budget(CaptureConfig(per_minute=2), clock)
    first = budget.take()
    second = budget.take()
    assert first is not None and second is not None and budget.take() is None
    budget.give_back(second)
    assert budget.take() is not None and budget.take() is None
    restarted = Budget(CaptureConfig(per_minute=2, per_hour=3), clock)
    restarted.seed([clock.t - 30, clock.t - 10, clock.t - 7200])  # two in the minute, one too old
    assert restarted.take() is None
    clock.t += 31
    assert restarted.take() is not None and restarted.take() is None  # the hour's 3


# -- rules -----------------------------------------------------------------------------------------


def test_each_rule_matches_what_it_names_and_nothing_else() -> None:
    never = lambda: 1.0  # noqa: E731
    always = lambda: 0.0  # noqa: E731
    config = CaptureConfig(low_confidence=0.6, near_threshold=0.8, near_margin=0.05, classes=["7"])
    assert reasons(config, classification(0.5), draw=never) == ["low_confidence"]
    assert reasons(config, classification(0.83), draw=never) == ["near_threshold"]
    assert reasons(config, classification(0.99), draw=never) == []
    assert reasons(config, classification(0.99, "7"), draw=never) == ["class"]
    assert reasons(config, classification(0.99), drift_active=True, draw=never) == []
    drift = CaptureConfig(drift=True, random=0.1)
    assert reasons(drift, classification(0.99), drift_active=True, draw=never) == ["drift"]
    assert reasons(drift, classification(0.99), draw=always) == ["random"]
    assert reasons(drift, classification(0.99), commanded=True, draw=never) == ["command"]
    off = CaptureConfig(enabled=False, random=1.0)
    assert reasons(off, classification(0.1), draw=always) == []
    assert reasons(off, classification(0.1), commanded=True) == ["command"]
    boxes = {"result": {"type": "detection", "detections": [{"label": "car", "score": 0.3}]}}
    assert reasons(CaptureConfig(low_confidence=0.4, classes=["car"]), boxes) == ["low_confidence", "class"]
    assert reasons(config, {"result": "not a mapping"}, draw=never) == []


# -- the disk ring ---------------------------------------------------------------------------------


def test_the_quota_holds_exactly_and_the_oldest_go_first(tmp_path: Path) -> None:
    folder = tmp_path / "captures" / "p"
    quota = 40_000
    store = CaptureStore(folder, quota).open()
    written: list[str] = []
    clock = 1_800_000_000.0
    for i in range(60):
        size = (160, 120) if i % 3 else (320, 240)  # samples of different sizes
        before = {sid: s.bytes for sid, s in store.samples.items()}
        sample = store.write(clock + i * 0.25, [("camera", jpeg(i, size))], {"result": {"seq": i}})
        written.append(sample.id)
        on_disk = disk_bytes(folder)
        assert on_disk <= quota
        assert on_disk == store.used
        kept = sorted(p.name.removesuffix(".json") for p in folder.glob("*.json"))
        assert kept == written[-len(kept) :]  # the newest, contiguous: the oldest were evicted
        gone = sorted(set(before) - set(store.samples))
        if gone:  # no more than needed: keeping the newest of them would not have fitted
            assert store.used + before[gone[-1]] > quota
    assert store.evicted == len(written) - len(kept) > 20
    with pytest.raises(SampleTooLargeError):
        store.write(clock + 100, [("camera", b"\xff" * quota)], {})
    reopened = CaptureStore(folder, quota).open()
    assert list(reopened.samples) == kept and reopened.used == disk_bytes(folder) and reopened.swept == 0
    assert reopened.write(clock + 200, [("camera", jpeg(1))], {}).id > kept[-1]  # ids keep counting up


def test_a_sample_names_its_model_time_result_and_image_hashes(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "p", 1 << 20).open()
    image, second = jpeg(1), jpeg(2)
    doc = {"model": {"sha256": "ab" * 32}, "result": {"seq": 5}}
    sample = store.write(1_800_000_000.123, [("front", image), ("side", second)], doc)
    assert sample.id == "20270115T080000.123Z-000001" == make_id(1_800_000_000.123, 1)
    assert abs(id_time(sample.id) - 1_800_000_000.123) < 1e-6
    saved = json.loads((tmp_path / "p" / f"{sample.id}.json").read_bytes())
    assert saved["model"] == doc["model"] and saved["result"] == {"seq": 5} and saved["id"] == sample.id
    names = [f["name"] for f in saved["files"]]
    assert names == [f"{sample.id}.jpg", f"{sample.id}.side.jpg"]
    for f, data in zip(saved["files"], (image, second), strict=True):
        assert (tmp_path / "p" / f["name"]).read_bytes() == data
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data)
    rows, more = store.list(None, None, 10)
    assert rows[0]["files"] == sorted([*names, f"{sample.id}.json"]) and not more


def test_open_sweeps_what_an_interrupted_write_or_eviction_leaves(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    store = CaptureStore(folder, 1 << 20).open()
    good = [store.write(1_800_000_000.0 + i, [("camera", jpeg(i))], {}).id for i in range(3)]
    (folder / f".{good[0]}.jpg.tmp-4242").write_bytes(jpeg(9)[:500])  # a half-written temp file
    (folder / "20270115T080010.000Z-000009.jpg").write_bytes(jpeg(9))  # image whose JSON never came
    broken = "20270115T080011.000Z-000010"
    (folder / f"{broken}.jpg").write_bytes(jpeg(10))
    (folder / f"{broken}.json").write_text('{"files": [{"name": "x')  # cut short (not by us)
    lost = "20270115T080012.000Z-000011"
    (folder / f"{lost}.json").write_text(json.dumps({"files": [{"name": f"{lost}.jpg", "bytes": 5}]}))
    (folder / "notes.txt").write_text("not ours")  # left alone
    reopened = CaptureStore(folder, 1 << 20).open()
    assert list(reopened.samples) == good
    assert reopened.swept == 5
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["notes.txt", *(f"{i}.jpg" for i in good), *(f"{i}.json" for i in good)]
    )


# -- the capture thread ----------------------------------------------------------------------------


class Hook:
    """A pipeline as the capture sees it (its name and its capture hook)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capture: Callable[[dict[str, Any], Mapping[str, Frame], list[Any]], None] | None = None


def frame(seed: int) -> Frame:
    image: npt.NDArray[np.uint8] = scene(seed, 160, 120)
    return Frame(image=image, seq=seed, t_mono=0.0, t_wall=1_800_000_000.0)


def test_samples_are_dropped_and_counted_when_the_writer_is_behind(tmp_path: Path) -> None:
    hook = Hook("p")
    capturer = Capturer()
    capturer.start({"p": CaptureConfig(random=1.0, per_minute=1000)}, [hook], tmp_path)
    try:
        assert hook.capture is not None
        pc = capturer.pipelines["p"]
        offered = 40
        with pc.store.lock:  # the writer is stuck on the disk (a capture.fetch holds the store)
            for i in range(offered):
                hook.capture(classification(0.9), {"camera": frame(i)}, [])
            assert wait_until(capturer.queue.full, 10)
            behind = pc.dropped_behind
            assert offered - QUEUE - 1 <= behind <= offered - QUEUE
        assert wait_until(lambda: pc.stored == offered - behind, 20)
        assert pc.candidates == offered and pc.dropped_budget == 0 and pc.errors == 0
        assert len(list((tmp_path / "captures" / "p").glob("*.json"))) == offered - behind
        assert pc.budget.used()["minute"] == offered - behind  # a dropped sample gave its budget back
        hook.capture({**classification(0.9), "pipeline": "other"}, {"camera": frame(1)}, [])
        assert pc.candidates == offered  # not this pipeline's
    finally:
        capturer.stop()


def test_a_frame_shared_by_fan_in_cameras_is_stored_once_and_a_bad_frame_is_an_error(tmp_path: Path) -> None:
    hook = Hook("p")
    capturer = Capturer()
    capturer.start({"p": CaptureConfig(random=1.0)}, [hook], tmp_path)
    try:
        assert hook.capture is not None
        pc = capturer.pipelines["p"]
        shared = frame(1)
        hook.capture(classification(0.9), {"left": shared, "right": shared, "side": frame(2)}, [])
        assert wait_until(lambda: pc.stored == 1, 20)
        empty = Frame(image=np.zeros((0, 0, 3), np.uint8), seq=3, t_mono=0.0, t_wall=0.0)
        hook.capture(classification(0.9), {"left": empty}, [])  # nothing cv2 can encode
        assert wait_until(lambda: pc.errors == 1, 20), pc.stats()
        hook.capture(classification(0.9), {"left": frame(4)}, [])  # the thread goes on
        assert wait_until(lambda: pc.stored == 2, 20), pc.stats()
        assert "JPEG encoding failed" in pc.last_error and pc.budget.used()["minute"] == 2
    finally:
        capturer.stop()
    first = json.loads(next(iter(sorted((tmp_path / "captures" / "p").glob("*.json")))).read_bytes())
    assert [f["source"] for f in first["files"]] == ["left", "side"]
    assert set(first["frames"]) == {"left", "side"}


def test_capture_sees_the_drift_of_either_side_of_its_pipeline() -> None:
    from edge_runtime.monitor.service import Monitor

    monitor = Monitor(lambda kind, message, data: None)
    active = monitor.capture.drift_active
    assert not active("p")
    monitor.drift_levels[("p", "output")] = "ok"
    monitor.drift_levels[("p", "input")] = "watch"
    assert active("p") and not active("q")
    monitor.drift_levels[("p", "input")] = "ok"
    assert not active("p")
    monitor.drift_levels[("p", "output")] = "drift"
    assert active("p")
