from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.fusion import (
    ImageBuilder,
    SensorBuilder,
    StaleInput,
    resample_window,
    sample_at,
    window_times,
)
from edge_runtime.geometry import plan
from edge_runtime.runtime.model import TensorSpec
from edge_runtime.runtime.quant import QuantParams, quantize
from edge_runtime.sources.buffer import SensorBuffers

T = np.array([1.0, 2.0, 3.0, 4.0])
V = np.array([10.0, 20.0, 30.0, 40.0])


def test_latest_takes_the_last_sample_at_or_before_t() -> None:
    s = sample_at(T, V, 3.4, "latest")
    assert s.value == 30.0 and s.age_s == pytest.approx(0.4)
    assert sample_at(T, V, 9.0, "latest").value == 40.0


def test_nearest_looks_both_ways() -> None:
    assert sample_at(T, V, 3.4, "nearest").value == 30.0
    s = sample_at(T, V, 3.6, "nearest")
    assert s.value == 40.0 and s.age_s == pytest.approx(0.4)


def test_linear_interpolates_and_never_extrapolates() -> None:
    assert sample_at(T, V, 2.25, "linear").value == pytest.approx(22.5)
    s = sample_at(T, V, 5.0, "linear")
    assert s.value == 40.0 and s.age_s == pytest.approx(1.0)


def test_no_data_is_infinitely_old() -> None:
    s = sample_at(np.zeros(0), np.zeros(0), 1.0, "linear")
    assert s.age_s == float("inf")


def test_window_grid_ends_at_the_trigger_and_spans_the_window() -> None:
    grid = window_times(10.0, 0.64, 64)
    assert grid[-1] == pytest.approx(10.0)
    assert grid[1] - grid[0] == pytest.approx(0.01)
    assert grid.size == 64


def test_resample_window_follows_a_ramp_and_flags_short_history() -> None:
    t = np.arange(0, 5, 0.01)
    v = 2.0 * t
    values, fresh = resample_window(t, v, 4.0, 1.0, 10, max_age_s=0.1)
    assert fresh
    assert values == pytest.approx(2.0 * window_times(4.0, 1.0, 10))
    _, fresh = resample_window(t, v, 0.5, 1.0, 10, max_age_s=0.1)
    assert not fresh  # the data does not reach back a whole window
    _, fresh = resample_window(t, v, 7.0, 1.0, 10, max_age_s=0.1)
    assert not fresh  # the newest sample is 2 s old


def _spec(shape: tuple[int, ...], dtype: str = "int8", quant: QuantParams | None = None) -> TensorSpec:
    return TensorSpec(0, "x", 0, shape, dtype, quant)


def test_vector_input_quantizes_and_follows_the_stale_policy() -> None:
    q = QuantParams((0.01,), (0,), "int8")
    buffers = SensorBuffers(64)
    for i in range(10):
        buffers.append(float(i), {"a": i * 0.1, "b": -i * 0.1})
    builder = SensorBuilder(_spec((1, 2), quant=q), buffers, ["a", "b"], "skip", 0.5, "linear")
    out = builder.build(4.5)
    assert out.dtype == np.int8 and out.tolist() == [[45, -45]]
    with pytest.raises(StaleInput):
        builder.build(20.0)
    zero = SensorBuilder(_spec((1, 2), quant=q), buffers, ["a", "b"], "zero", 0.5)
    assert zero.build(20.0).tolist() == [[0, 0]]
    hold = SensorBuilder(_spec((1, 2), quant=q), buffers, ["a", "b"], "hold", 0.5)
    hold.build(9.0)
    assert hold.build(20.0).tolist() == [[90, -90]]
    assert hold.stale_count == 1


def test_window_input_is_time_major_or_channel_major_as_the_model_wants() -> None:
    buffers = SensorBuffers(512)
    for i in range(300):
        buffers.append(i / 100, {"x": float(i), "y": -float(i)})
    time_major = SensorBuilder(
        _spec((1, 4, 2), "float32"), buffers, ["x", "y"], "skip", 0.1, window=(0.04, 4)
    )
    out = time_major.build(2.0)
    assert out.tolist() == [[[197.0, -197.0], [198.0, -198.0], [199.0, -199.0], [200.0, -200.0]]]
    channel_major = SensorBuilder(
        _spec((1, 2, 4), "float32"), buffers, ["x", "y"], "skip", 0.1, window=(0.04, 4)
    )
    assert channel_major.build(2.0).tolist() == [
        [[197.0, 198.0, 199.0, 200.0], [-197.0, -198.0, -199.0, -200.0]]
    ]


def test_image_builder_letterboxes_quantizes_and_records_the_transform() -> None:
    q = QuantParams((1 / 255,), (-128,), "int8")
    frame = np.full((48, 96, 3), 255, dtype=np.uint8)  # white, twice as wide as high
    builder = ImageBuilder(_spec((1, 8, 8, 1), quant=q), "letterbox", "gray", 0, 0.0, 255.0)
    out = builder.build(frame)
    assert out.shape == (1, 8, 8, 1)
    assert builder.transform == plan(96, 48, 8, 8, "letterbox")
    rows = out[0, :, :, 0]
    assert (rows[:2] == -128).all() and (rows[6:] == -128).all()  # padding: black
    assert (rows[2:6] == 127).all()  # the frame: white


def test_image_builder_rgb_order_and_normalisation_match_the_formula() -> None:
    q = QuantParams((2 / 255,), (0,), "int8")
    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    frame[..., 0] = 10  # blue
    frame[..., 2] = 250  # red
    builder = ImageBuilder(_spec((1, 4, 4, 3), quant=q), "stretch", "rgb", 0, 127.5, 127.5)
    out = builder.build(frame)
    expected = quantize((np.array([250, 0, 10]) - 127.5) / 127.5, q)
    assert out[0, 0, 0].tolist() == expected.tolist()


def test_image_builder_refuses_a_channel_mismatch() -> None:
    from edge_runtime.errors import PipelineError

    with pytest.raises(PipelineError, match="channels"):
        ImageBuilder(_spec((1, 8, 8, 1)), "stretch", "rgb", 0, 0.0, 1.0)
