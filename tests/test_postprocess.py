from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from devkit.accuracy import floor
from edge_runtime.errors import PipelineError
from edge_runtime.geometry import plan
from edge_runtime.postprocess import (
    ClassificationConfig,
    ClassificationHead,
    Detection,
    DetectionConfig,
    EventRule,
    Head,
    Label,
    PostprocessConfig,
    RawConfig,
    SsdOutputs,
    box_iou,
    classify,
    combine_mean,
    combine_vote,
    decode_ssd,
    decode_yolo,
    make_head,
    nms,
    parse_labels,
    read_labels,
    softmax,
    top_k_order,
)
from edge_runtime.runtime.model import TensorSpec
from edge_runtime.runtime.quant import QuantParams, quantize

MODELS = Path(__file__).resolve().parent.parent / "edge_runtime" / "models"

DIGITS = [str(i) for i in range(10)]


def spec(
    position: int, name: str, shape: tuple[int, ...], dtype: str = "float32", quant: QuantParams | None = None
) -> TensorSpec:
    return TensorSpec(
        position=position, name=name, index=10 + position, shape=shape, dtype=dtype, quant=quant
    )


def yolo_row(
    box: tuple[float, float, float, float], size: tuple[int, int], obj: float, cls: int, *, classes: int = 3
) -> list[float]:
    """A row for a box x1, y1, x2, y2 in input pixels."""
    x1, y1, x2, y2 = box
    w, h = size
    row = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h, obj] + [0.0] * classes
    row[5 + cls] = 1.0
    return row


# --------------------------------------------------------------------------- config


def test_config_is_discriminated_by_type_and_forbids_extra_keys() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(PostprocessConfig)
    assert isinstance(adapter.validate_python({"type": "classification"}), ClassificationConfig)
    det = adapter.validate_python({"type": "detection", "format": "ssd", "outputs": {"boxes": "b"}})
    assert isinstance(det, DetectionConfig)
    assert det.outputs == SsdOutputs(boxes="b", classes=1, scores=2, count=3)
    assert isinstance(adapter.validate_python({"type": "raw", "outputs": [0, "x"]}), RawConfig)
    with pytest.raises(ValidationError, match="extra"):
        adapter.validate_python({"type": "classification", "topk": 3})
    with pytest.raises(ValidationError, match="format"):
        adapter.validate_python({"type": "detection", "format": "rcnn"})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "segmentation"})
    with pytest.raises(ValidationError, match="frozen"):
        det.min_score = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("model", [ClassificationConfig, DetectionConfig, RawConfig, EventRule, SsdOutputs])
def test_every_config_field_has_a_description(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
    assert model.model_config.get("frozen") is True
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name}"


# --------------------------------------------------------------------------- labels


def test_labels_file_plain_and_with_ids(tmp_path: Path) -> None:
    plain = tmp_path / "labels.txt"
    plain.write_text("cat\n dog \n\nbird\n")
    assert read_labels(plain) == ["cat", "dog", "bird"]
    assert parse_labels("0  person\n2  car\n") == ["person", "1", "car"]
    assert parse_labels("???\nperson\n") == ["???", "person"]
    with pytest.raises(PipelineError, match=r"missing\.txt"):
        read_labels(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PipelineError, match="empty"):
        read_labels(tmp_path / "empty.txt")


def test_postprocessor_reads_a_labels_path(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("a\nb\nc\n")
    post = make_head(ClassificationConfig(labels=str(path)), [spec(0, "p", (1, 3))])
    assert post.labels == ("a", "b", "c")


# --------------------------------------------------------------------------- classification


def test_softmax_of_logits() -> None:
    p = softmax([1.0, 2.0, 3.0])
    assert p.sum() == pytest.approx(1.0)
    e = np.exp([1.0, 2.0, 3.0])
    assert p == pytest.approx(e / e.sum())
    big = softmax([1000.0, 1000.0, -1000.0])
    assert big == pytest.approx([0.5, 0.5, 0.0])
    assert softmax(np.zeros((2, 4))) == pytest.approx(np.full((2, 4), 0.25))


def test_classify_orders_top_k_and_applies_min_score() -> None:
    probs = [0.1, 0.5, 0.05, 0.3, 0.05]
    c = classify(probs, ["a", "b", "c", "d", "e"], top_k=3)
    assert c.top == (Label(1, "b", 0.5), Label(3, "d", 0.3), Label(0, "a", 0.1))
    assert [x.label for x in classify(probs, None, top_k=2).top] == ["1", "3"]
    assert [x.index for x in classify(probs, None, top_k=5, min_score=0.2).top] == [1, 3]
    # ties keep index order
    assert [x.index for x in classify(probs, None, top_k=5).top] == [1, 3, 0, 2, 4]
    assert classify(probs, None, top_k=10, min_score=0.9).top == ()
    with pytest.raises(PipelineError, match="1-D"):
        classify(np.zeros((2, 2)))


def test_classification_result_with_softmax_and_event() -> None:
    cfg = ClassificationConfig(
        labels=["idle", "running", "fault"],
        softmax=True,
        top_k=2,
        event=EventRule(labels=["fault"], min_score=0.6),
    )
    post = make_head(cfg, [spec(0, "logits", (1, 3))])
    result = post.process([np.array([[0.0, 1.0, 3.0]], dtype=np.float32)])
    e = np.exp([0.0, 1.0, 3.0])
    p = e / e.sum()
    assert result == {
        "type": "classification",
        "top": [
            {"index": 2, "label": "fault", "score": round(float(p[2]), 4)},
            {"index": 1, "label": "running", "score": round(float(p[1]), 4)},
        ],
        "event": True,
        "event_labels": ["fault"],
    }
    json.dumps(result)
    quiet = post.process([np.array([[0.0, 3.0, 1.0]], dtype=np.float32)])
    assert quiet["event"] is False and quiet["event_labels"] == []
    assert quiet["top"][0]["label"] == "running"


def test_int8_classification_is_dequantized_with_the_spec_params() -> None:
    q = QuantParams((1 / 256,), (-128,), "int8")
    post = make_head(ClassificationConfig(labels=["a", "b", "c", "d"]), [spec(0, "probs", (1, 4), "int8", q)])
    raw = np.array([[-128, 64, -64, -96]], dtype=np.int8)
    probs = post.probabilities([raw])
    assert probs.dtype == np.float64
    assert probs.tolist() == pytest.approx([0.0, 0.75, 0.25, 0.125])
    result = post.process([raw])
    assert [t["label"] for t in result["top"]] == ["b", "c", "d"]
    assert result["top"][0]["score"] == 0.75
    # a uint8 output with its own zero point
    qu = QuantParams((0.5,), (10,), "uint8")
    post_u = make_head(ClassificationConfig(), [spec(0, "u", (3,), "uint8", qu)])
    assert post_u.probabilities([np.array([10, 12, 30], dtype=np.uint8)]).tolist() == [0.0, 1.0, 10.0]


def test_classification_scores_are_rounded_to_4_decimals() -> None:
    post = make_head(ClassificationConfig(top_k=1), [spec(0, "p", (1, 2))])
    assert post.classification_result([0.123456789, 0.0])["top"] == [
        {"index": 0, "label": "0", "score": 0.1235}
    ]
    with pytest.raises(PipelineError, match="expected 2 class scores, got 3"):
        post.classification_result([0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- construction checks


def test_missing_output_is_a_clear_error() -> None:
    specs = [spec(0, "probs", (1, 4))]
    with pytest.raises(PipelineError, match=r"digits: class scores output 'logits' not found.*0 'probs'"):
        make_head(ClassificationConfig(output="logits"), specs, model="digits")
    with pytest.raises(PipelineError, match="output 2 not found"):
        make_head(ClassificationConfig(output=2), specs)
    with pytest.raises(PipelineError, match="count output 3 not found"):
        make_head(DetectionConfig(format="ssd"), [spec(i, f"o{i}", (1, 10, 4)) for i in range(3)])
    with pytest.raises(PipelineError, match="raw output 'nope' not found"):
        make_head(RawConfig(outputs=["nope"]), specs)


def test_label_count_mismatch_is_a_clear_error() -> None:
    with pytest.raises(PipelineError, match="'probs' has 4 classes but 3 labels are given"):
        make_head(ClassificationConfig(labels=["a", "b", "c"]), [spec(0, "probs", (1, 4))])
    with pytest.raises(PipelineError, match="'det' has 3 classes but 10 labels"):
        make_head(DetectionConfig(format="yolo", labels=DIGITS), [spec(0, "det", (1, 64, 8))])


def test_implausible_shapes_are_refused() -> None:
    with pytest.raises(PipelineError, match="one non-batch dimension"):
        make_head(ClassificationConfig(), [spec(0, "map", (1, 8, 8, 3))])
    with pytest.raises(PipelineError, match=r"yolo needs \[1, N, 5 \+ C\]"):
        make_head(DetectionConfig(format="yolo"), [spec(0, "det", (1, 64, 5))])
    with pytest.raises(PipelineError, match="yolo needs"):
        make_head(DetectionConfig(format="yolo"), [spec(0, "det", (1, 8, 8, 15))])
    ssd = [spec(0, "b", (1, 10, 4)), spec(1, "c", (1, 10)), spec(2, "s", (1, 10)), spec(3, "n", (1,))]
    make_head(DetectionConfig(format="ssd"), ssd)
    with pytest.raises(PipelineError, match="ssd boxes must be"):
        make_head(DetectionConfig(format="ssd", outputs=SsdOutputs(boxes=1, classes=0)), ssd)
    with pytest.raises(PipelineError, match="'n': expected \\[1, 10\\]"):
        make_head(DetectionConfig(format="ssd", outputs=SsdOutputs(scores=3, count=2)), ssd)


def test_unknown_event_labels_are_refused() -> None:
    cfg = ClassificationConfig(labels=["a", "b"], event=EventRule(labels=["c"]))
    with pytest.raises(PipelineError, match=r"event labels \['c'\]"):
        make_head(cfg, [spec(0, "p", (1, 2))])
    no_labels = ClassificationConfig(event=EventRule(labels=["1"]))
    make_head(no_labels, [spec(0, "p", (1, 2))])


def test_wrong_number_of_outputs_at_process_time() -> None:
    post = make_head(ClassificationConfig(), [spec(0, "p", (1, 2))])
    with pytest.raises(PipelineError, match="expected 1 outputs, got 2"):
        post.process([np.zeros((1, 2)), np.zeros(1)])


# --------------------------------------------------------------------------- NMS


def test_nms_suppresses_overlaps_best_first() -> None:
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0: best
            [1, 1, 11, 11],  # 1: IoU 81/119 = 0.68 with 0 -> suppressed
            [20, 20, 30, 30],  # 2: apart
            [0, 0, 10, 5],  # 3: IoU 0.5 with 0 -> suppressed at 0.45, kept at 0.5
            [21, 20, 31, 30],  # 4: IoU 0.82 with 2
        ],
        dtype=np.float64,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    assert nms(boxes, scores, 0.45, 10).tolist() == [4, 0]
    assert nms(boxes, scores, 0.5, 10).tolist() == [4, 0, 3]
    assert nms(boxes, scores, 0.45, 1).tolist() == [4]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5, 10).tolist() == []


def test_class_aware_nms_keeps_overlapping_boxes_of_other_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10.5]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 1, 0])
    assert nms(boxes, scores, 0.5, 10).tolist() == [0]
    assert nms(boxes, scores, 0.5, 10, classes=classes, class_aware=True).tolist() == [0, 1]
    with pytest.raises(PipelineError, match="class_aware"):
        nms(boxes, scores, 0.5, 10, class_aware=True)


def test_box_iou() -> None:
    assert box_iou(
        [0, 0, 10, 10], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]]
    ).tolist() == [
        1.0,
        pytest.approx(1 / 3),
        0.0,
        0.0,
    ]


boxes_strategy = st.lists(
    st.tuples(
        st.floats(0, 100),
        st.floats(0, 100),
        st.floats(0.5, 50),
        st.floats(0.5, 50),
        st.floats(0, 1),
        st.integers(0, 2),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(boxes_strategy, st.floats(0.05, 0.95), st.booleans())
def test_nms_kept_boxes_do_not_overlap_within_a_class(
    rows: list[tuple[float, float, float, float, float, int]], threshold: float, class_aware: bool
) -> None:
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows]).reshape(-1, 4)
    scores = np.array([r[4] for r in rows])
    classes = np.array([r[5] for r in rows], dtype=np.int64)
    keep = nms(boxes, scores, threshold, 100, classes=classes, class_aware=class_aware)
    assert len(set(keep.tolist())) == len(keep)
    assert np.all(np.diff(scores[keep]) <= 0)
    for a in range(len(keep)):
        for b in range(a + 1, len(keep)):
            same = classes[keep[a]] == classes[keep[b]] or not class_aware
            if same:
                assert box_iou(boxes[keep[a]], boxes[keep[b]])[0] <= threshold
    # every suppressed box overlaps a kept, better one of its class
    for i in set(range(len(rows))) - set(keep.tolist()):
        ious = box_iou(boxes[i], boxes[keep])
        mask = (classes[keep] == classes[i]) | (not class_aware)
        assert np.any((ious > threshold) & mask & (scores[keep] >= scores[i]))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.floats(0, 1), min_size=8, max_size=8), min_size=1, max_size=30),
    st.floats(0.0, 0.9),
    st.floats(0.1, 0.9),
)
def test_decoded_yolo_scores_and_overlaps(rows: list[list[float]], min_score: float, iou: float) -> None:
    found = decode_yolo(
        np.array([rows]), input_w=64, input_h=48, min_score=min_score, iou=iou, max_detections=100
    )
    assert all(d.score >= min_score for d in found)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    for i, a in enumerate(found):
        assert 0 <= a.box[0] <= a.box[2] <= 64 and 0 <= a.box[1] <= a.box[3] <= 48
        for b in found[i + 1 :]:
            if a.index == b.index:
                assert box_iou(a.box, [b.box])[0] <= iou


# --------------------------------------------------------------------------- YOLO


def test_decode_yolo_gives_exact_pixel_boxes() -> None:
    w, h = 100, 50
    out = np.array(
        [
            [0.5, 0.5, 0.2, 0.4, 0.9, 0.1, 0.8, 0.1],  # class 1, score 0.72: x 40..60, y 15..35
            [0.52, 0.5, 0.2, 0.4, 0.8, 0.1, 0.85, 0.05],  # same class, overlaps -> suppressed
            [0.5, 0.5, 0.2, 0.4, 0.7, 0.0, 0.0, 1.0],  # other class, same place -> kept
            [0.1, 0.2, 0.1, 0.2, 0.5, 0.9, 0.05, 0.05],  # class 0, score 0.45 x 5..15, y 5..15
            [0.9, 0.9, 0.3, 0.3, 0.3, 1.0, 0.0, 0.0],  # score 0.3 < 0.4
            [0.95, 0.05, 0.2, 0.2, 1.0, 0.0, 0.0, 1.0],  # clipped to the input: x 85..100, y 0..7.5
        ],
        dtype=np.float32,
    )
    found = decode_yolo(
        out[None], input_w=w, input_h=h, min_score=0.4, iou=0.45, max_detections=10, labels=["a", "b", "c"]
    )
    assert [(d.label, d.index) for d in found] == [("c", 2), ("b", 1), ("c", 2), ("a", 0)]
    assert [d.score for d in found] == pytest.approx([1.0, 0.72, 0.7, 0.45])
    assert found[0].box == pytest.approx((85.0, 0.0, 100.0, 7.5))
    assert found[1].box == pytest.approx((40.0, 15.0, 60.0, 35.0))
    assert found[2].box == pytest.approx((40.0, 15.0, 60.0, 35.0))
    assert found[3].box == pytest.approx((5.0, 5.0, 15.0, 15.0))
    assert found[1].box_norm == pytest.approx((0.4, 0.3, 0.6, 0.7))
    assert len(decode_yolo(out, input_w=w, input_h=h, min_score=0.4, iou=0.45, max_detections=2)) == 2
    with pytest.raises(PipelineError, match="yolo output"):
        decode_yolo(out[:, :5], input_w=w, input_h=h, min_score=0.4, iou=0.45, max_detections=2)


def test_letterboxed_box_maps_back_to_source_pixels() -> None:
    t = plan(640, 480, 64, 64, "letterbox")  # scale 0.1, 64x48 image, 8 px bars top and bottom
    assert (t.sx, t.sy, t.ox, t.oy) == (0.1, 0.1, 0.0, 8.0)
    source_box = (100.0, 200.0, 300.0, 400.0)
    in_input = (10.0, 28.0, 30.0, 48.0)
    out = np.array([[yolo_row(in_input, (64, 64), 1.0, 2, classes=3)]], dtype=np.float32)
    (d,) = decode_yolo(out, input_w=64, input_h=64, min_score=0.5, iou=0.5, max_detections=5, transform=t)
    assert d.box == pytest.approx(source_box, abs=1e-3)
    assert d.box_norm == pytest.approx((100 / 640, 200 / 480, 300 / 640, 400 / 480), abs=1e-6)
    post = make_head(DetectionConfig(format="yolo", labels=["x", "y", "z"]), [spec(0, "det", (1, 1, 8))])
    result = post.process([out], t)
    assert result == {
        "type": "detection",
        "detections": [
            {
                "label": "z",
                "index": 2,
                "score": 1.0,
                "box": [100.0, 200.0, 300.0, 400.0],
                "box_norm": [0.1562, 0.4167, 0.4688, 0.8333],
            }
        ],
        "count": 1,
        "event": False,
        "event_labels": [],
    }


def test_box_in_the_letterbox_bar_is_clipped_to_the_frame() -> None:
    t = plan(640, 480, 64, 64, "letterbox")
    out = np.array([yolo_row((20.0, 0.0, 40.0, 16.0), (64, 64), 1.0, 0, classes=1)])
    (d,) = decode_yolo(out, input_w=64, input_h=64, min_score=0.5, iou=0.5, max_detections=5, transform=t)
    assert d.box == pytest.approx((200.0, 0.0, 400.0, 80.0))


def test_int8_yolo_through_the_postprocessor_with_events() -> None:
    q = QuantParams((1 / 255,), (-128,), "int8")
    rows = np.array(
        [
            yolo_row((8, 8, 24, 24), (64, 64), 1.0, 3, classes=10),
            yolo_row((40, 40, 56, 60), (64, 64), 0.9, 7, classes=10),
        ]
    )
    quantized = quantize(rows[None], q)
    cfg = DetectionConfig(format="yolo", labels=DIGITS, event=EventRule(labels=["7", "9"], min_score=0.8))
    post = make_head(cfg, [spec(0, "detections", (1, 2, 15), "int8", q)], input_size=(64, 64))
    result = post.process([quantized])
    assert result["count"] == 2
    assert [d["label"] for d in result["detections"]] == ["3", "7"]
    assert result["detections"][0]["box"] == pytest.approx([8.0, 8.0, 24.0, 24.0], abs=0.2)
    assert result["detections"][1]["score"] == pytest.approx(0.9, abs=0.01)
    assert result["event"] is True and result["event_labels"] == ["7"]
    json.dumps(result)
    with pytest.raises(PipelineError, match="input size or an image transform"):
        make_head(cfg, [spec(0, "detections", (1, 2, 15), "int8", q)]).process([quantized])


# --------------------------------------------------------------------------- SSD


def test_decode_ssd_with_class_offset_and_count() -> None:
    boxes = np.array(
        [
            [
                [0.1, 0.2, 0.5, 0.6],
                [0.0, 0.0, 1.0, 1.0],
                [0.5, 0.5, 0.9, 0.7],
                [0.2, 0.2, 0.3, 0.3],
                [0, 0, 0.1, 0.1],
            ]
        ],
        dtype=np.float32,
    )
    classes = np.array([[0.0, 1.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    scores = np.array([[0.8, 0.3, 0.9, 0.95, 0.99]], dtype=np.float32)
    count = np.array([4.0], dtype=np.float32)  # the last row is past the count
    labels = ["???", "person", "car"]
    found = decode_ssd(
        boxes, classes, scores, count, input_w=200, input_h=100, min_score=0.5, max_detections=10,
        class_offset=1, labels=labels,
    )  # fmt: skip
    assert [(d.index, d.label) for d in found] == [(2, "car"), (1, "person"), (1, "person")]
    assert [d.score for d in found] == pytest.approx([0.95, 0.9, 0.8])
    assert found[0].box == pytest.approx((40.0, 20.0, 60.0, 30.0))
    assert found[1].box == pytest.approx((100.0, 50.0, 140.0, 90.0))
    assert found[2].box == pytest.approx((40.0, 10.0, 120.0, 50.0))
    assert found[2].box_norm == pytest.approx((0.2, 0.1, 0.6, 0.5))
    zero_based = decode_ssd(
        boxes, classes, scores, count, input_w=200, input_h=100, min_score=0.5, max_detections=2,
        labels=["person", "car"],
    )  # fmt: skip
    assert [d.label for d in zero_based] == ["car", "person"]
    background = decode_ssd(
        boxes,
        classes,
        scores,
        count,
        input_w=200,
        input_h=100,
        min_score=0.0,
        max_detections=10,
        class_offset=-1,
    )
    assert [d.index for d in background] == [0, 0]


def test_ssd_through_the_postprocessor_by_output_name_with_a_transform() -> None:
    specs = [
        spec(0, "scores", (1, 3)),
        spec(1, "boxes", (1, 3, 4)),
        spec(2, "count", (1,)),
        spec(3, "classes", (1, 3)),
    ]
    cfg = DetectionConfig(
        format="ssd",
        outputs=SsdOutputs(boxes="boxes", classes="classes", scores="scores", count="count"),
        labels=["person", "car"],
        min_score=0.5,
        event=EventRule(min_score=0.6),
    )
    post = make_head(cfg, specs)
    t = plan(640, 480, 300, 300, "stretch")
    outputs = [
        np.array([[0.7, 0.55, 0.2]], dtype=np.float32),
        np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0, 0, 1, 1]]], dtype=np.float32),
        np.array([3.0], dtype=np.float32),
        np.array([[1.0, 0.0, 0.0]], dtype=np.float32),
    ]
    result = post.process(outputs, t)
    assert result["count"] == 2
    first = {
        "label": "car",
        "index": 1,
        "score": 0.7,
        "box": [0.0, 0.0, 320.0, 240.0],
        "box_norm": [0, 0, 0.5, 0.5],
    }
    assert result["detections"][0] == first
    assert result["detections"][1]["box"] == [320.0, 240.0, 640.0, 480.0]
    assert result["event"] is True and result["event_labels"] == ["car"]


# --------------------------------------------------------------------------- raw


def test_raw_outputs_are_dequantized_nested_lists() -> None:
    q = QuantParams((0.5,), (1,), "int8")
    specs = [spec(0, "a", (1, 2, 2), "int8", q), spec(1, "b", (3,))]
    result = make_head(RawConfig(), specs).process(
        [np.array([[[1, 3], [5, -1]]], dtype=np.int8), np.array([0.1, 0.2, 1 / 3], dtype=np.float32)]
    )
    assert result == {"type": "raw", "outputs": {"a": [[[0.0, 1.0], [2.0, -1.0]]], "b": [0.1, 0.2, 0.333333]}}
    only_b = make_head(RawConfig(outputs=["b"]), specs).process([np.zeros((1, 2, 2), np.int8), np.ones(3)])
    assert only_b == {"type": "raw", "outputs": {"b": [1.0, 1.0, 1.0]}}
    json.dumps(result)


def test_methods_for_another_task_are_refused() -> None:
    post = make_head(RawConfig(), [spec(0, "a", (2,))])
    with pytest.raises(PipelineError, match="classification"):
        post.probabilities([np.zeros(2)])
    with pytest.raises(PipelineError, match="detection"):
        post.detections([np.zeros(2)])


# --------------------------------------------------------------------------- ensembles


def test_combine_mean_normalises_weights() -> None:
    a, b = np.array([0.8, 0.2, 0.0]), np.array([0.2, 0.2, 0.6])
    assert combine_mean([a, b]).tolist() == pytest.approx([0.5, 0.2, 0.3])
    assert combine_mean([a, b], [3.0, 1.0]).tolist() == pytest.approx([0.65, 0.2, 0.15])
    assert combine_mean([a, b], [0.75, 0.25]).tolist() == pytest.approx([0.65, 0.2, 0.15])
    with pytest.raises(PipelineError, match=r"same 1-D class vector, got shapes \[\(3,\), \(4,\)\]"):
        combine_mean([a, np.zeros(4)])
    with pytest.raises(PipelineError, match="2 ensemble members but 3 weights"):
        combine_mean([a, b], [1, 2, 3])
    with pytest.raises(PipelineError, match="non-negative"):
        combine_mean([a, b], [1, -1])
    with pytest.raises(PipelineError, match="at least one"):
        combine_mean([])


def test_combine_vote_with_weights() -> None:
    members = [np.array([0.6, 0.4, 0.0]), np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.8, 0.1])]
    votes = combine_vote(members)
    assert votes == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-5)
    assert int(np.argmax(votes)) == 0
    weighted = combine_vote(members, [1, 1, 3])
    assert weighted == pytest.approx([0.4, 0.6, 0.0], abs=1e-5)
    assert int(np.argmax(weighted)) == 1


def test_combine_vote_breaks_a_tie_by_the_mean_probability() -> None:
    # one vote each for classes 0 and 1; class 1 has the higher mean probability (0.55 vs 0.45)
    members = [np.array([0.5, 0.4, 0.1]), np.array([0.4, 0.7, 0.0])]
    votes = combine_vote(members)
    assert votes == pytest.approx([0.5, 0.5, 0.0], abs=1e-5)
    assert int(np.argmax(votes)) == 1
    # with weights 2:1 the first member wins outright despite the lower mean
    assert int(np.argmax(combine_vote(members, [2, 1]))) == 0
    # and the classification shows the tie order
    post = make_head(ClassificationConfig(labels=["a", "b", "c"], top_k=3), [spec(0, "p", (1, 3))])
    result = post.classification_result(votes)
    assert [t["label"] for t in result["top"]] == ["b", "a", "c"]
    assert [t["score"] for t in result["top"]] == [0.5, 0.5, 0.0]


def test_ensemble_of_two_postprocessors() -> None:
    q = QuantParams((1 / 256,), (-128,), "int8")
    p1 = make_head(ClassificationConfig(labels=["a", "b"]), [spec(0, "p", (1, 2), "int8", q)])
    p2 = make_head(ClassificationConfig(labels=["a", "b"], softmax=True), [spec(0, "logits", (1, 2))])
    probs = [p1.probabilities([np.array([[64, -64]], np.int8)]), p2.probabilities([np.array([[0.0, 0.0]])])]
    result = p1.classification_result(combine_mean(probs, [1.0, 1.0]))
    assert result["top"] == [
        {"index": 0, "label": "a", "score": 0.625},
        {"index": 1, "label": "b", "score": 0.375},
    ]


def _full_path(post: Head[Any], outputs: list[npt.NDArray[Any]]) -> dict[str, Any]:
    """What process() does for classification without the code ranking: dequantize every score."""
    return post.classification_result(post.probabilities(outputs))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 1001),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["int8", "uint8"]),
    st.integers(1, 255),
    st.floats(0.0, 1.0),
)
def test_top_k_of_raw_codes_gives_the_full_path_result(
    classes: int, top_k: int, seed: int, dtype: str, spread: int, min_score: float
) -> None:
    """Classes, scores, tie order and events as when all scores are dequantized and sorted; a
    small ``spread`` of codes makes many ties."""
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    start = int(rng.integers(lo, hi - spread + 2))
    codes = rng.integers(start, min(start + spread, hi + 1), (1, classes)).astype(dtype)
    q = QuantParams((float(rng.uniform(1e-4, 0.1)),), (int(rng.integers(lo, hi + 1)),), dtype)
    labels = [f"c{i}" for i in range(classes)]
    cfg = ClassificationConfig(
        labels=labels, top_k=min(top_k, classes + 2), min_score=min_score, event=EventRule(min_score=0.0)
    )
    post = ClassificationHead(cfg, [spec(0, "scores", (1, classes), dtype, q)])
    assert post._rank_codes
    assert post.process([codes]) == _full_path(post, [codes])


@given(st.lists(st.integers(-128, 127), min_size=1, max_size=60), st.integers(1, 70))
def test_top_k_order_is_a_stable_descending_sort_cut_at_k(values: list[int], k: int) -> None:
    array = np.array(values, dtype=np.int8)
    expected = np.argsort(-np.array(values), kind="stable")[:k]
    assert top_k_order(array, k).tolist() == expected.tolist()
    assert top_k_order(array.astype(np.int16) + 128, k).tolist() == expected.tolist()


def test_classification_falls_back_to_the_full_path_when_codes_do_not_rank() -> None:
    q = QuantParams((1 / 256,), (-128,), "int8")
    raw = np.array([[-128, 64, 64, -96]], dtype=np.int8)
    logits = ClassificationHead(ClassificationConfig(softmax=True), [spec(0, "x", (1, 4), "int8", q)])
    assert not logits._rank_codes  # softmax needs every score
    assert logits.process([raw]) == _full_path(logits, [raw])
    post = ClassificationHead(ClassificationConfig(top_k=2), [spec(0, "x", (1, 4), "int8", q)])
    assert post._rank_codes
    floats = raw.astype(np.float32)  # not the spec's dtype: read as real values, as before
    assert post.process([floats]) == _full_path(post, [floats])
    assert [t["index"] for t in post.process([raw])["top"]] == [1, 2]
    with pytest.raises(PipelineError, match="expected 4 class scores"):
        post.process([np.zeros((1, 5), np.int8)])
    with pytest.raises(PipelineError, match="expected 1 outputs"):
        post.process([raw, raw])


@pytest.mark.backend
def test_digits_model_results_are_the_same_through_the_code_ranking(backend_name: str) -> None:
    from edge_runtime.runtime.model import Model

    model = Model(MODELS / "digits_int8.tflite", backend=backend_name)
    (inp,) = model.inputs
    assert inp.quant is not None
    with np.load(MODELS / "digits_heldout.npz") as data:
        images = data["images"]
    post = ClassificationHead(ClassificationConfig(labels=DIGITS, top_k=3), model.outputs)
    assert post._rank_codes
    for image in images:
        outputs = model.invoke([quantize(image.astype(np.float64)[None, ..., None] / 255.0, inp.quant)])
        assert post.process(outputs) == _full_path(post, outputs)


# --------------------------------------------------------------------------- real model


def precision_recall(
    found: list[list[Detection]], gt_boxes: npt.NDArray[Any], gt_classes: npt.NDArray[Any]
) -> tuple[float, float]:
    """Precision and recall at IoU >= 0.5 with the right class; ``gt_classes`` -1 is padding."""
    tp = fp = n_gt = 0
    for dets, all_boxes, all_classes in zip(found, gt_boxes, gt_classes, strict=True):
        valid = all_classes >= 0
        boxes, classes = all_boxes[valid].astype(np.float64), all_classes[valid]
        n_gt += len(classes)
        matched = np.zeros(len(classes), dtype=bool)
        for d in dets:
            ious = box_iou(d.box, boxes)
            ok = ~matched & (classes == d.index) & (ious >= 0.5)
            if ok.any():
                matched[int(np.argmax(np.where(ok, ious, -1.0)))] = True
                tp += 1
            else:
                fp += 1
    return tp / max(tp + fp, 1), tp / max(n_gt, 1)


def test_the_precision_recall_helper() -> None:
    gt_boxes = np.array(
        [[[0, 0, 10, 10], [20, 20, 30, 30]], [[5, 5, 15, 15], [0, 0, 0, 0]]], dtype=np.float32
    )
    gt_classes = np.array([[1, 2], [3, -1]])

    def det(index: int, box: tuple[float, float, float, float]) -> Detection:
        return Detection(index, str(index), 0.9, box, box)

    perfect = [[det(1, (0, 0, 10, 10)), det(2, (20, 20, 30, 30))], [det(3, (5, 5, 15, 15))]]
    assert precision_recall(perfect, gt_boxes, gt_classes) == (1.0, 1.0)
    # wrong class, a duplicate and a miss: 2 true positives of 4 detections, 2 of 3 objects
    flawed = [
        [det(1, (1, 1, 11, 11)), det(1, (0, 0, 10, 10)), det(3, (20, 20, 30, 30))],
        [det(3, (5, 5, 15, 14))],
    ]
    assert precision_recall(flawed, gt_boxes, gt_classes) == pytest.approx((0.5, 2 / 3))


@pytest.mark.backend
def test_detector_finds_the_held_out_digits(backend_name: str) -> None:
    model_path, data_path = MODELS / "detect_int8.tflite", MODELS / "detect_heldout.npz"
    if not (model_path.exists() and data_path.exists()):
        pytest.fail(
            "detect_int8.tflite and detect_heldout.npz are missing: rebuild with tools/build_models.py"
        )
    from edge_runtime.runtime.model import Model

    model = Model(model_path, backend=backend_name)
    (inp,) = model.inputs
    assert inp.quant is not None
    labels = read_labels(MODELS / "digits_labels.txt") if (MODELS / "digits_labels.txt").exists() else None
    post = make_head(DetectionConfig(format="yolo", labels=labels), model.outputs, input_size=(64, 64))
    data = np.load(data_path)
    images = quantize(data["images"].astype(np.float64)[..., None] / 255.0, inp.quant)
    found = [post.detections(model.invoke([x[None]])) for x in images]
    precision, recall = precision_recall(found, data["boxes"], data["classes"])
    # the manifest's figures were measured with this decoding (score >= 0.4, class-agnostic NMS at
    # IoU 0.45: DetectionConfig's defaults) on the same 200 held-out canvases (408 digits)
    assert precision >= floor("detect", "int8", "precision"), (precision, recall)
    assert recall >= floor("detect", "int8", "recall"), (precision, recall)
