from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.accuracy import floor
from devkit.paths import MODELS
from edge_runtime.fusion import (
    ImageBuilder,
    SensorBuilder,
    StaleInput,
    area_plan,
    resample_window,
    sample_at,
    window_times,
)
from edge_runtime.geometry import ImageTransform, plan
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
    builder = SensorBuilder(_spec((1, 2), quant=q), buffers, ["a", "b"], "skip", 0.5, method="linear")
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


# -- fast INTER_AREA path of ImageBuilder -----------------------------------------------------------


def _texture(width: int, height: int, seed: int = 0) -> npt.NDArray[Any]:
    """A BGR test scene: fine noise (1-2 px grain), large blobs and a gradient, different per channel."""
    rng = np.random.default_rng(seed)
    fine = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 0.8)
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 12)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 60 + 80 * xx / width + 40 * yy / height
    scene = base[..., None] + 25 * fine / fine.std() + 35 * blobs / blobs.std()
    image: npt.NDArray[Any] = np.clip(scene, 0, 255).astype(np.uint8)
    return image


def _reference_pixels(
    frame: npt.NDArray[np.uint8], t: ImageTransform, interpolation: int | None = None
) -> npt.NDArray[Any]:
    """What ImageBuilder produced before the fast path: one cv2.resize of the whole frame to the
    scaled size (INTER_AREA when shrinking), then the crop window cut out."""
    if interpolation is None:
        shrinking = t.scaled_size[0] < frame.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized: npt.NDArray[Any] = cv2.resize(frame, t.scaled_size, interpolation=interpolation)
    if t.mode == "crop":
        x, y = int(-t.ox), int(-t.oy)
        return resized[y : y + t.dst_h, x : x + t.dst_w]
    return resized


def _reference_build(
    frame: npt.NDArray[np.uint8], t: ImageTransform, color: str, interpolation: int | None = None
) -> npt.NDArray[np.float32]:
    """The reference pixels as a float32 ImageBuilder (mean 0, std 1, pad 0) lays them out."""
    image = _reference_pixels(frame, t, interpolation)
    if color == "gray":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    image = image.reshape(image.shape[0], image.shape[1], -1)
    if t.mode != "letterbox":
        return image.astype(np.float32)[None]
    canvas = np.zeros((t.dst_h, t.dst_w, image.shape[2]), dtype=np.float32)
    new_w, new_h = t.scaled_size
    canvas[int(t.oy) : int(t.oy) + new_h, int(t.ox) : int(t.ox) + new_w] = image
    return canvas[None]


def _float_builder(width: int, height: int, mode: str, color: str) -> ImageBuilder:
    channels = 1 if color == "gray" else 3
    return ImageBuilder(_spec((1, height, width, channels), "float32"), mode, color, 0, 0.0, 1.0)


SOURCES = [(640, 480), (641, 479), (643, 487), (1920, 1080)]
MODES = ["stretch", "letterbox", "crop"]


@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("dst", [(224, 224), (96, 64), (8, 8)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_fast_resize_stays_close_to_a_full_inter_area(
    src: tuple[int, int], dst: tuple[int, int], mode: str, color: str
) -> None:
    frame = _texture(*src)
    builder = _float_builder(*dst, mode, color)
    out = builder.build(frame)
    t = plan(*src, *dst, mode)  # type: ignore[arg-type]
    assert builder.transform == t  # boxes map back to the frame exactly as before
    assert area_plan(t) is not None  # the fast path ran
    reference = _reference_build(frame, t, color)
    assert out.shape == reference.shape
    diff = float(np.abs(out - reference).mean())
    assert diff <= 5.0, f"mean |fast - INTER_AREA| = {diff:.2f} grey levels"
    if min(t.src_w / t.scaled_size[0], t.src_h / t.scaled_size[1]) >= 4:
        # a plain INTER_LINEAR is far off here (aliasing): the fast path must not be
        linear = _reference_pixels(frame, t, cv2.INTER_LINEAR).astype(np.float32)
        plain = float(np.abs(linear - _reference_pixels(frame, t)).mean())
        assert diff < plain / 2, (diff, plain)


@pytest.mark.parametrize("src", [(640, 480), (641, 479), (1923, 1081)])
@pytest.mark.parametrize("mode", MODES)
def test_fast_resize_keeps_the_geometry_of_the_plan(src: tuple[int, int], mode: str) -> None:
    """A bright square lands where the plan puts it, also near the far edges (where trimming the
    frame to whole blocks would shift it by a third of an output pixel), and maps back to where
    it is in the frame."""
    width, height = src
    t = plan(width, height, 224, 224, mode)  # type: ignore[arg-type]
    new_w, new_h = t.scaled_size
    left, top = max(t.ox, 0.0), max(t.oy, 0.0)  # the part of the output that shows the frame
    shown_w, shown_h = min(new_w, t.dst_w), min(new_h, t.dst_h)
    builder = _float_builder(224, 224, mode, "gray")
    for fx, fy in [(0.06, 0.07), (0.5, 0.5), (0.95, 0.93)]:
        x = round((left + fx * shown_w - t.ox) / t.sx)
        y = round((top + fy * shown_h - t.oy) / t.sy)
        frame = np.zeros((height, width), dtype=np.uint8)
        frame[y - 8 : y + 8, x - 8 : x + 8] = 255  # centred on (x, y) (pixel i spans [i, i + 1))
        expected = np.array([x * t.sx + t.ox, y * t.sy + t.oy])
        got = _centroid(builder.build(frame)[0, :, :, 0])
        assert np.abs(got - expected).max() < 0.15, (got, expected)
        reference = _centroid(_reference_build(frame, t, "gray")[0, :, :, 0])
        assert np.abs(reference - expected).max() < 0.15  # (the measure itself is that precise)
        assert builder.transform is not None
        back = builder.transform.boxes_to_source([[*got, *got]])[0, :2]
        assert np.abs(back - (x, y)).max() < 0.15 / min(t.sx, t.sy)


def _centroid(image: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Intensity centroid (x, y) in continuous pixel coordinates (pixel i spans [i, i + 1))."""
    weights = image.astype(np.float64)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    total = weights.sum()
    return np.array([(weights * (xx + 0.5)).sum() / total, (weights * (yy + 0.5)).sum() / total])


def test_fast_resize_still_filters_out_detail_finer_than_the_output() -> None:
    """A one-pixel checkerboard is grey after an area resize; a plain INTER_LINEAR aliases it."""
    for width, height in [(640, 480), (641, 479)]:
        board = (np.indices((height, width)).sum(axis=0) % 2 * 255).astype(np.uint8)
        out = _float_builder(224, 224, "stretch", "gray").build(board)
        assert float(out.std()) < 1.0 and abs(float(out.mean()) - 127.5) < 1.0
        linear = cv2.resize(board, (224, 224), interpolation=cv2.INTER_LINEAR)
        assert float(linear.std()) > 20  # what the test guards against


@pytest.mark.parametrize(
    ("src", "dst", "mode"),
    [
        ((100, 80), (224, 224), "stretch"),  # upscale
        ((100, 80), (224, 224), "letterbox"),
        ((100, 80), (224, 224), "crop"),
        ((1000, 100), (224, 224), "stretch"),  # x shrinks, y grows
        ((300, 300), (224, 224), "stretch"),  # shrinks by less than 2
        ((160, 128), (8, 8), "crop"),  # the demo's digits: whole factors, exactly INTER_AREA
        ((1920, 1080), (8, 8), "stretch"),
        ((640, 480), (320, 240), "letterbox"),
        ((27, 23), (8, 8), "stretch"),  # small frames (a cascade's crops): INTER_AREA is cheap there
        ((180, 150), (32, 32), "crop"),
    ],
)
@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_upscales_small_frames_and_whole_factors_give_the_reference_pixels_exactly(
    src: tuple[int, int], dst: tuple[int, int], mode: str, color: str
) -> None:
    frame = _texture(*src)
    t = plan(*src, *dst, mode)  # type: ignore[arg-type]
    out = _float_builder(*dst, mode, color).build(frame)
    assert np.array_equal(out, _reference_build(frame, t, color))


def test_area_plan_reduces_by_whole_factors_then_by_less_than_two() -> None:
    fast = area_plan(plan(640, 480, 224, 224, "stretch"))
    assert fast is not None
    assert (fast.region, fast.factors, fast.size) == ((0, 0, 640, 480), (2, 2), (224, 224))
    assert fast.matrix is None  # 320x240 -> 224x224 by cv2.resize is exactly the plan's map
    odd = area_plan(plan(641, 479, 224, 224, "stretch"))
    assert odd is not None and odd.region == (0, 0, 640, 478) and odd.matrix is not None
    digits = area_plan(plan(640, 480, 8, 8, "crop"))
    assert digits is not None and digits.factors == (58, 60) and digits.size == (8, 8)
    x0, y0, x1, y1 = digits.region
    assert x0 <= 640 / 11 and x1 >= 9 * 640 / 11 and (y0, y1) == (0, 480)  # the crop window's source
    assert area_plan(plan(100, 80, 224, 224, "stretch")) is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 2000),
    st.integers(1, 2000),
    st.integers(1, 400),
    st.integers(1, 400),
    st.sampled_from(MODES),
)
def test_area_plan_regions_fit_the_frame_and_cover_the_output(
    src_w: int, src_h: int, dst_w: int, dst_h: int, mode: str
) -> None:
    t = plan(src_w, src_h, dst_w, dst_h, mode)  # type: ignore[arg-type]
    fast = area_plan(t)
    if fast is None:
        return
    x0, y0, x1, y1 = fast.region
    kx, ky = fast.factors
    assert 0 <= x0 < x1 <= src_w and 0 <= y0 < y1 <= src_h
    assert (x1 - x0) % kx == 0 and (y1 - y0) % ky == 0
    crop = t.mode == "crop"
    assert fast.size == ((t.dst_w, t.dst_h) if crop else t.scaled_size)
    # what remains after the whole factors shrinks by less than two (bilinear does not alias much)
    assert 0.5 < t.sx * kx <= 1 + 1e-9 and 0.5 < t.sy * ky <= 1 + 1e-9
    # the region holds the source of every output pixel, or the frame is too small for whole blocks
    need_x = (-t.ox / t.sx, (t.dst_w - t.ox) / t.sx) if crop else (0.0, float(src_w))
    need_y = (-t.oy / t.sy, (t.dst_h - t.oy) / t.sy) if crop else (0.0, float(src_h))
    assert x0 <= need_x[0] + 1e-6 and (x1 >= need_x[1] - 1e-6 or x1 - x0 > src_w - kx)
    assert y0 <= need_y[0] + 1e-6 and (y1 >= need_y[1] - 1e-6 or y1 - y0 > src_h - ky)


@functools.lru_cache(maxsize=1)
def _smooth_scene() -> npt.NDArray[Any]:
    scene: npt.NDArray[Any] = cv2.GaussianBlur(_texture(500, 400, seed=3), (0, 0), 3)
    return scene


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 500),
    st.integers(1, 400),
    st.integers(1, 120),
    st.integers(1, 120),
    st.sampled_from(MODES),
    st.sampled_from(["gray", "rgb"]),
)
def test_any_size_gives_the_reference_pixels_or_close_to_them(
    src_w: int, src_h: int, dst_w: int, dst_h: int, mode: str, color: str
) -> None:
    frame = np.ascontiguousarray(_smooth_scene()[:src_h, :src_w])
    t = plan(src_w, src_h, dst_w, dst_h, mode)  # type: ignore[arg-type]
    out = _float_builder(dst_w, dst_h, mode, color).build(frame)
    if area_plan(t) is None:
        assert np.array_equal(out, _reference_build(frame, t, color))
    else:  # (also where the width does not shrink: the old code took INTER_LINEAR there)
        reference = _reference_build(frame, t, color, cv2.INTER_AREA)
        assert out.shape == reference.shape
        assert float(np.abs(out - reference).mean()) <= 8.0


@pytest.mark.backend
def test_the_digits_model_reads_digits_through_the_fast_crop(backend_name: str) -> None:
    """640x480 frames (a non-whole ratio to 8x8): as accurate as the full INTER_AREA path."""
    from edge_runtime.demo import digit_frame
    from edge_runtime.runtime.model import Model

    model = Model(MODELS / "digits_int8.tflite", backend=backend_name)
    spec = model.inputs[0]
    with np.load(MODELS / "digits_heldout.npz") as data:
        images, labels = data["images"], data["labels"]
    builder = ImageBuilder(spec, "crop", "gray", 0, 0.0, 255.0)
    reference = ImageBuilder(spec, "crop", "gray", 0, 0.0, 255.0)
    fast, full = [], []
    for image in images:
        frame = digit_frame(image, (640, 480))
        fast.append(int(np.argmax(model.invoke([builder.build(frame)])[0])))
        reference.build(frame)
        assert reference.transform is not None
        pixels = cv2.cvtColor(_reference_pixels(frame, reference.transform), cv2.COLOR_BGR2GRAY)
        assert reference._lut is not None
        full.append(int(np.argmax(model.invoke([cv2.LUT(pixels, reference._lut).reshape(spec.shape)])[0])))
    assert builder._area is not None and builder._area.matrix is not None  # the warped path
    accuracy = float(np.mean(np.array(fast) == labels))
    assert accuracy >= floor("digits", "int8"), accuracy
    assert accuracy >= float(np.mean(np.array(full) == labels)) - 0.01
    assert float(np.mean(np.array(fast) == np.array(full))) >= 0.98
