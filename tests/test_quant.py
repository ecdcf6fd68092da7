from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.runtime.quant import (
    QuantParams,
    dequantize,
    pixel_lut,
    preserves_order,
    quantize,
)


def test_quantize_matches_the_affine_formula() -> None:
    p = QuantParams((0.5,), (-3,), "int8")
    q = quantize([0.0, 1.0, -1.0, 0.26, 1000.0, -1000.0], p)
    assert q.dtype == np.int8
    assert q.tolist() == [-3, -1, -5, -2, 127, -128]
    assert dequantize(q, p).tolist() == pytest.approx([0.0, 1.0, -1.0, 0.5, 65.0, -62.5])


def test_uint8_saturates_at_both_ends() -> None:
    p = QuantParams((1 / 255,), (0,), "uint8")
    assert quantize([-0.5, 0.0, 0.5, 1.0, 2.0], p).tolist() == [0, 0, 128, 255, 255]


def test_per_channel_uses_the_axis() -> None:
    p = QuantParams((0.1, 1.0, 10.0), (0, 1, -1), "int8", axis=1)
    x = np.array([[1.0, 1.0, 100.0], [-1.0, -2.0, -50.0]])
    q = quantize(x, p)
    assert q.tolist() == [[10, 2, 9], [-10, -1, -6]]
    assert dequantize(q, p) == pytest.approx(np.array([[1.0, 1.0, 100.0], [-1.0, -2.0, -50.0]]))


@given(
    st.floats(1e-4, 10.0),
    st.integers(-128, 127),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=50),
)
def test_roundtrip_error_is_at_most_half_a_step_inside_the_range(
    scale: float, zero: int, values: list[float]
) -> None:
    p = QuantParams((scale,), (zero,), "int8")
    lo, hi = scale * (-128 - zero), scale * (127 - zero)
    x = np.clip(np.array(values), lo, hi)
    err = np.abs(dequantize(quantize(x, p), p) - x)
    assert np.all(err <= scale / 2 + 1e-4 * max(1.0, abs(lo), abs(hi)))


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        QuantParams((0.0,), (0,), "int8")
    with pytest.raises(ValueError, match="dtype"):
        QuantParams((1.0,), (0,), "float32")
    with pytest.raises(ValueError, match="equal length"):
        QuantParams((1.0, 2.0), (0,), "int8")


def test_pixel_lut_equals_normalise_then_quantize() -> None:
    p = QuantParams((1 / 255,), (-128,), "int8")
    lut = pixel_lut(p, mean=0.0, std=255.0)
    assert lut.shape == (256,) and lut.dtype == np.int8
    pixels = np.arange(256)
    assert np.array_equal(lut, quantize(pixels / 255.0, p))
    assert lut[0] == -128 and lut[255] == 127


def test_per_channel_normalisation_lut_with_cv2_matches_numpy() -> None:
    p = QuantParams((0.0078125,), (0,), "int8")
    mean, std = (127.5, 120.0, 110.0), (127.5, 64.0, 70.0)
    lut = pixel_lut(p, mean=mean, std=std)
    assert lut.shape == (256, 3)
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = quantize((image - np.array(mean)) / np.array(std), p)
    via_cv2 = cv2.LUT(image, lut.reshape(256, 1, 3))  # how ImageBuilder applies it
    assert np.array_equal(via_cv2, expected)


def test_lut_refuses_per_channel_quantization_and_wrong_pixels() -> None:
    with pytest.raises(ValueError, match="per-tensor"):
        pixel_lut(QuantParams((0.1, 0.2), (0, 0), "int8"))


def test_codes_rank_like_their_real_values_for_8_bit_per_tensor_params() -> None:
    assert preserves_order(QuantParams((1 / 256,), (-128,), "int8"))
    assert preserves_order(QuantParams((0.5,), (10,), "uint8"))
    assert not preserves_order(QuantParams((0.1, 0.2), (0, 0), "int8"))  # per channel: a scale each
    assert not preserves_order(QuantParams((0.1,), (0,), "int16"))
    assert not preserves_order(QuantParams((1e-45,), (0,), "int8"))  # float32 collapses them to 0
    assert not preserves_order(QuantParams((1e37,), (0,), "uint8"))  # overflows to inf


@given(
    st.floats(1e-6, 1e3),
    st.integers(-128, 127),
    st.lists(st.integers(-128, 127), min_size=1, max_size=50),
)
def test_ranking_codes_ranks_dequantized_values_the_same_way(
    scale: float, zero_point: int, codes: list[int]
) -> None:
    p = QuantParams((scale,), (zero_point,), "int8")
    assert preserves_order(p)
    q = np.array(codes, dtype=np.int8)
    by_code = np.argsort(-q.astype(np.int64), kind="stable")
    by_value = np.argsort(-dequantize(q, p).astype(np.float64), kind="stable")
    assert np.array_equal(by_code, by_value)
