"""RateMeter against exact, known event schedules (an injected clock), and LatencyWindow."""

from __future__ import annotations

import pytest

from edge_runtime.stats import LatencyWindow, RateMeter


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _play(meter: RateMeter, clock: Clock, times: list[float]) -> None:
    for t in times:
        clock.t = t
        meter.tick()


def test_steady_1hz_reads_exactly_1() -> None:
    clock = Clock()
    meter = RateMeter(10.0, clock)
    _play(meter, clock, [float(i) for i in range(1, 101)])  # one event a second for 100 s
    assert meter.rate() == 1.0
    for extra in (0.25, 0.5, 0.999):  # between two events the window still holds 10 of them
        clock.t = 100 + extra
        assert meter.rate() == 1.0


def test_20hz_over_the_first_second_reads_20() -> None:
    clock = Clock()
    meter = RateMeter(10.0, clock)
    _play(meter, clock, [i * 0.05 for i in range(1, 21)])  # 20 events in (0, 1]
    assert clock.t == pytest.approx(1.0)
    assert meter.rate() == 20.0


def test_steady_rates_after_the_window_fills() -> None:
    for hz in (0.5, 2.0, 15.0, 30.0):
        clock = Clock()
        meter = RateMeter(10.0, clock)
        period = 1.0 / hz
        _play(meter, clock, [i * period for i in range(1, int(60 * hz) + 1)])  # 60 s
        assert meter.rate() == pytest.approx(hz, abs=1e-9), hz


def test_rate_decays_to_zero_when_events_stop() -> None:
    clock = Clock()
    meter = RateMeter(10.0, clock)
    _play(meter, clock, [i * 0.1 for i in range(1, 201)])  # 10 Hz for 20 s
    assert meter.rate() == 10.0
    clock.t = 25.0  # dead for 5 s: half the window is empty
    assert meter.rate() == 5.0
    clock.t = 30.0 + 1e-6
    assert meter.rate() == 0.0


def test_a_pause_reads_as_silence_not_a_burst() -> None:
    """A SIGSTOPped process: 10 Hz, then 60 s frozen, then 3 events at once on SIGCONT."""
    clock = Clock()
    meter = RateMeter(10.0, clock)
    _play(meter, clock, [i * 0.1 for i in range(1, 101)])
    _play(meter, clock, [70.0, 70.0, 70.0])
    assert meter.rate() == 0.3  # 3 events in the last 10 s, not 3 / (a few microseconds)


def test_reset_starts_a_new_window() -> None:
    clock = Clock()
    meter = RateMeter(5.0, clock)
    _play(meter, clock, [1.0, 2.0, 3.0])
    clock.t = 4.0
    meter.reset()
    assert meter.rate() == 0.0
    _play(meter, clock, [4.5, 5.0])
    assert meter.rate() == 2.0  # 2 events in the 1 s since the reset


def test_last_age_counts_from_the_last_event() -> None:
    clock = Clock()
    meter = RateMeter(10.0, clock)
    assert meter.last_age() is None
    _play(meter, clock, [1.0, 2.5])
    clock.t = 60.0  # long after the window emptied
    assert meter.last_age() == 57.5 and meter.rate() == 0.0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s must be positive"):
        RateMeter(0.0)


def test_latency_window_keeps_the_last_values() -> None:
    window = LatencyWindow(size=4)
    assert window.percentiles() == {"p50": None, "p95": None, "p99": None}
    for ms in (100.0, 1.0, 2.0, 3.0, 4.0):  # 100 falls out of the window
        window.add(ms)
    assert window.count == 5
    assert window.percentiles((0, 50, 100)) == {"p0": 1.0, "p50": 2.5, "p100": 4.0}


def test_camera_fps_is_exact_and_decays_when_frames_stop() -> None:
    """The camera's own fps (health ``sources.*.fps``) follows the same rule as RateMeter."""
    import numpy as np

    from edge_runtime.sources.camera import FPS_WINDOW_S, CameraConfig, CameraSource

    clock = Clock()
    camera = CameraSource("cam", CameraConfig(uri="http://127.0.0.1:9/cam.mjpg"), clock=clock)
    image = np.zeros((4, 4, 3), np.uint8)
    for i in range(1, 15 * 20 + 1):  # 15 fps for 20 s
        clock.t = i / 15
        camera._emit(image, clock.t)
    assert camera.measured_fps() == pytest.approx(15.0)
    clock.t = 20.0 + FPS_WINDOW_S / 2  # the stream died: half the window is empty
    assert camera.measured_fps() == pytest.approx(7.5, abs=0.2)
    clock.t = 20.0 + FPS_WINDOW_S + 0.01
    assert camera.measured_fps() == 0.0  # before: 15.0 until a new frame came
