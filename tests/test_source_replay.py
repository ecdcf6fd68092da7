"""Replay source (recorded files played in real time) and the source registry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from devkit.processes import wait_until
from edge_runtime.sources import (
    SOURCE_TYPES,
    CameraConfig,
    CameraSource,
    ReplayConfig,
    ReplaySource,
    SerialConfig,
    SerialSource,
    SourceConfig,
    build_source,
)
from edge_runtime.sources.replay import RESYNC_S

FAST_RECONNECT = {"initial_s": 0.1, "max_s": 0.5, "factor": 2.0, "jitter": 0.1}


def config(path: Path, **options: Any) -> ReplayConfig:
    data: dict[str, Any] = {"type": "replay", "path": str(path), "format": "csv"}
    data["reconnect"] = FAST_RECONNECT
    data.update(options)
    return ReplayConfig.model_validate(data)


def write_csv(path: Path, rows: Sequence[tuple[float, ...]], header: str = "t,ax,ay") -> Path:
    path.write_text(header + "\n" + "".join(",".join(repr(v) for v in row) + "\n" for row in rows))
    return path


@contextmanager
def running(source: ReplaySource) -> Iterator[ReplaySource]:
    source.start()
    try:
        yield source
    finally:
        source.stop()
        assert not source.alive


def assert_on_schedule(times: np.ndarray, step: float, resyncs: int) -> None:
    """Stored sample times keep the recorded spacing exactly, except where playback fell more than
    RESYNC_S behind and the schedule restarted from "now" (``resyncs`` of them): there the gap is
    longer by over RESYNC_S, never shorter. Checked whether or not the replay resynced."""
    gaps = np.diff(times)
    off = np.flatnonzero(np.abs(gaps - step) > 1e-6)
    assert len(off) == resyncs, (resyncs, gaps[off].tolist())
    assert all(gaps[i] > step + RESYNC_S for i in off), gaps[off].tolist()


def test_csv_rows_play_in_order_on_their_schedule(tmp_path: Path) -> None:
    rows = [(i * 0.05, float(i), -float(i)) for i in range(21)]  # 1 s of data
    path = write_csv(tmp_path / "rec.csv", rows)
    started = time.monotonic()  # before the start: the first row cannot be stored earlier
    with running(ReplaySource("rec", config(path))) as source:
        assert wait_until(lambda: source.state == "finished", 30), source.stats()
        finished = time.monotonic()
        times, ax = source.buffers.window("ax")
        assert ax.tolist() == [r[1] for r in rows]
        assert source.buffers.window("ay")[1].tolist() == [r[2] for r in rows]
        assert "t" not in source.buffers.channels
        assert_on_schedule(times, 0.05, source.resyncs)
        # never faster than recorded: each row waits for its due time, the first is due at start
        assert started <= times[0] and times[-1] - times[0] >= 1.0 - 1e-6
        assert finished - started >= 1.0 - 1e-6
        assert source.finished and source.rows == 21


def test_speed_scales_the_schedule(tmp_path: Path) -> None:
    rows = [(i * 0.1, float(i), 0.0) for i in range(21)]  # 2 s of data
    path = write_csv(tmp_path / "rec.csv", rows)
    started = time.monotonic()
    with running(ReplaySource("rec", config(path, speed=4.0))) as source:
        assert wait_until(lambda: source.state == "finished", 30), source.stats()
        finished = time.monotonic()
        times, _ = source.buffers.window("ax")
        assert len(times) == 21
        # 4x: the spacing is a quarter of the recorded one, 0.5 s in all (a speed ignored would
        # give 0.1 s gaps and take 2 s: the exact schedule check fails on it)
        assert_on_schedule(times, 0.025, source.resyncs)
        assert finished - started >= 0.5 - 1e-6


def test_bad_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    lines = [
        json.dumps({"meta": {"t": 0.0}, "ax": 1}).encode(),
        b"{not json",
        json.dumps({"ax": 9}).encode(),  # no time
        json.dumps({"meta": {"t": 0.02}, "ax": 2, "ok": True}).encode(),
        json.dumps({"meta": {"t": 0.01}, "ax": 9}).encode(),  # time goes backwards
        b"\xff\xfe",
        b"",
        json.dumps({"meta": {"t": 0.03}, "ax": 3, "label": "x"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = config(path, format="jsonl", time_field="meta.t")
    with running(ReplaySource("rec", cfg)) as source:
        assert wait_until(lambda: source.state == "finished"), source.stats()
        assert source.buffers.window("ax")[1].tolist() == [1.0, 2.0, 3.0]
        assert source.buffers.window("ok")[1].tolist() == [1.0]
        assert source.parse_errors == {
            "invalid json": 1,
            "missing time": 1,
            "time goes backwards": 1,
            "undecodable": 1,
        }
        assert source.stats()["parse_errors_total"] == 4


def test_csv_bad_rows_and_channel_filter(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    path.write_text("t, ax, ay\n0,1,2\n0.01,x,2\n0.02,3\n0.03,4,5\n")
    with running(ReplaySource("rec", config(path, channels=["ay"]))) as source:
        assert wait_until(lambda: source.state == "finished"), source.stats()
        assert source.buffers.channels == ["ay"]
        assert source.buffers.window("ay")[1].tolist() == [2.0, 5.0]
        assert source.parse_errors == {"not a number": 1, "field count": 1}


def test_loop_keeps_playing_with_a_steady_interval(tmp_path: Path) -> None:
    rows = [(10.0 + i * 0.05, float(i), 0.0) for i in range(5)]
    path = write_csv(tmp_path / "rec.csv", rows)
    with running(ReplaySource("rec", config(path, loop=True))) as source:
        assert wait_until(lambda: source.rows >= 16, 15), source.stats()
        assert source.state == "up" and not source.finished
        assert source.loops >= 3
        times, ax = source.buffers.window("ax")
        assert ax[:15].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] * 3
        assert_on_schedule(times, 0.05, source.resyncs)  # the gap at the wrap is the mean row interval


def test_missing_file_is_down_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.csv"
    with running(ReplaySource("rec", config(path))) as source:
        assert wait_until(lambda: source.state == "down" and source.reconnects >= 2), source.stats()
        assert str(path) in source.last_error
        write_csv(tmp_path / "part", [(0.0, 1.0, 2.0), (0.01, 3.0, 4.0)]).rename(path)  # appears whole
        assert wait_until(lambda: source.state == "finished"), source.stats()
        assert source.buffers.window("ax")[1].tolist() == [1.0, 3.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [("time,ax\n0,1\n", "no 't' column"), ("t,ax\n0.0,x\n", "no playable rows"), ("", "no 't' column")],
)
def test_unplayable_files_are_down(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with running(ReplaySource("rec", config(path, loop=True))) as source:
        assert wait_until(lambda: source.state == "down"), source.stats()
        assert message in source.last_error and str(path) in source.last_error


def test_stop_interrupts_a_long_wait(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rec.csv", [(0.0, 1.0, 0.0), (3600.0, 2.0, 0.0)])
    source = ReplaySource("rec", config(path))
    source.start()
    assert wait_until(lambda: source.rows == 1)
    source.stop()  # joins for at most 2 s: a wait it did not interrupt leaves the thread alive
    assert not source.alive and source.state == "stopped" and source.rows == 1


# -- the registry ----------------------------------------------------------------------------------------


def test_source_config_picks_the_model_by_type(tmp_path: Path) -> None:
    adapter: TypeAdapter[CameraConfig | SerialConfig | ReplayConfig] = TypeAdapter(SourceConfig)
    camera = adapter.validate_python({"type": "camera", "uri": 0})
    serial = adapter.validate_python({"type": "serial", "port": "loop://", "format": "kv"})
    replay = adapter.validate_python({"type": "replay", "path": "x.csv", "format": "csv"})
    assert isinstance(camera, CameraConfig)
    assert isinstance(serial, SerialConfig)
    assert isinstance(replay, ReplayConfig)
    assert isinstance(build_source("front", camera), CameraSource)
    assert isinstance(build_source("imu", serial), SerialSource)
    built = build_source("rec", replay)
    assert isinstance(built, ReplaySource) and built.name == "rec" and built.state == "stopped"
    assert set(SOURCE_TYPES) == {"camera", "serial", "replay"}
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_python({"type": "lidar"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        adapter.validate_python({"type": "replay", "path": "x", "format": "csv", "sped": 2})


@pytest.mark.parametrize("model", [CameraConfig, SerialConfig, ReplayConfig])
def test_every_field_is_described(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"


def test_configs_load_without_opencv_or_pyserial() -> None:
    code = (
        "import sys\n"
        "sys.modules['cv2'] = None\n"
        "sys.modules['serial'] = None\n"
        "from pydantic import TypeAdapter\n"
        "from edge_runtime.sources import SourceConfig, build_source\n"
        "adapter = TypeAdapter(SourceConfig)\n"
        "for data in ({'type': 'camera', 'uri': 'rtsp://cam/1'},\n"
        "             {'type': 'serial', 'port': '/dev/ttyUSB0', 'format': 'nmea'}):\n"
        "    build_source('x', adapter.validate_python(data))\n"
        "try:\n"
        "    import cv2\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
