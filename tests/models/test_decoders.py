"""Decoders on constructed outputs whose correct boxes are known, for every layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.decoders import (
    Decoded,
    DecodeError,
    classification,
    end2end,
    mask_groups,
    nms,
    yolov5,
    yolov8,
)
from models.package import ModelSpec

CLASSES = ["crack", "pothole", "manhole"]


def spec(decoder: str = "yolov8", **kw: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "t",
            "sha256": "0" * 64,
            "input": {"size": [640, 640]},
            "output": {"decoder": decoder},
            "classes": CLASSES,
            **kw,
        }
    )


def boxes(d: Decoded) -> list[tuple[int, float, list[float]]]:
    return [
        (int(c), round(float(s), 3), [round(float(v), 1) for v in b])
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True)
    ]


def test_yolov8_layout_is_transposed_and_has_no_objectness() -> None:
    # two real objects, a duplicate of the first (suppressed) and a weak one (filtered)
    rows = np.array(
        [
            [100, 100, 40, 20, 0.9, 0.05, 0.0],  # crack at (80, 90)-(120, 110)
            [102, 101, 40, 20, 0.8, 0.0, 0.0],  # same crack, lower score: NMS removes it
            [300, 200, 60, 60, 0.0, 0.7, 0.1],  # pothole at (270, 170)-(330, 230)
            [500, 500, 10, 10, 0.0, 0.0, 0.1],  # below the 0.25 threshold
        ],
        np.float32,
    )
    out = rows.T[np.newaxis]  # [1, 4 + C, N]
    assert boxes(yolov8([out], spec())) == [
        (0, 0.9, [80.0, 90.0, 120.0, 110.0]),
        (1, 0.7, [270.0, 170.0, 330.0, 230.0]),
    ]


def test_yolov5_layout_multiplies_objectness_and_class_probability() -> None:
    rows = np.array(
        [
            [100, 100, 40, 20, 0.9, 0.9, 0.1, 0.0],  # 0.81 crack
            [300, 200, 60, 60, 0.5, 0.1, 0.8, 0.0],  # 0.40 pothole
            [300, 200, 60, 60, 0.2, 0.1, 0.9, 0.0],  # 0.18: filtered
        ],
        np.float32,
    )
    assert boxes(yolov5([rows[np.newaxis]], spec("yolov5"))) == [
        (0, 0.81, [80.0, 90.0, 120.0, 110.0]),
        (1, 0.4, [270.0, 170.0, 330.0, 230.0]),
    ]


def test_end_to_end_layout_and_normalised_boxes() -> None:
    rows = np.array([[0.1, 0.2, 0.3, 0.4, 0.95, 2], [0, 0, 0, 0, 0.0, 0]], np.float32)
    s = spec("end2end", output={"decoder": "end2end", "boxes_normalized": True})
    assert boxes(end2end([rows[np.newaxis]], s)) == [(2, 0.95, [64.0, 128.0, 192.0, 256.0])]


def test_nms_is_class_aware() -> None:
    d = Decoded(
        np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([0, 0, 1], np.int32),
    )
    kept = nms(d, 0.5, 10)
    # the overlapping box of the same class goes; the other class's identical box stays
    assert boxes(kept) == [(0, 0.9, [0, 0, 10, 10]), (1, 0.7, [0, 0, 10, 10])]
    assert len(nms(d, 0.5, 1)) == 1


def test_overlapping_boxes_of_a_region_class_are_one_region() -> None:
    # a crack network found as three overlapping pieces (a chain: the first and the last do
    # not overlap each other) and one crack apart; two overlapping potholes are objects
    rows = np.array(
        [
            [100, 100, 40, 20, 0.5, 0.0, 0.0],  # crack (80, 90)-(120, 110)
            [130, 105, 40, 20, 0.8, 0.0, 0.0],  # crack (110, 95)-(150, 115), overlaps it
            [160, 110, 40, 20, 0.6, 0.0, 0.0],  # crack (140, 100)-(180, 120), overlaps that
            [400, 400, 20, 20, 0.4, 0.0, 0.0],  # a crack on its own
            [300, 200, 60, 60, 0.0, 0.7, 0.0],  # pothole (270, 170)-(330, 230)
            [320, 220, 60, 60, 0.0, 0.6, 0.0],  # pothole (290, 190)-(350, 250): IoU 0.29
        ],
        np.float32,
    )
    s = spec(regions=["crack"])
    assert boxes(yolov8([rows.T[np.newaxis]], s)) == [
        (0, 0.8, [80, 90, 180, 120]),
        (1, 0.7, [270, 170, 330, 230]),
        (1, 0.6, [290, 190, 350, 250]),
        (0, 0.4, [390, 390, 410, 410]),
    ]
    assert len(yolov8([rows.T[np.newaxis]], spec())) == 6  # without regions: as found
    with pytest.raises(ValueError, match="regions of unknown labels: road"):
        spec(regions=["road"])


def test_per_class_thresholds() -> None:
    rows = np.array(
        [[100, 100, 40, 20, 0.3, 0.0, 0.0], [300, 200, 60, 60, 0.0, 0.3, 0.0]], np.float32
    )
    s = spec(thresholds={"score": 0.25, "per_class": {"pothole": 0.5}})
    assert [c for c, _, _ in boxes(yolov8([rows.T[np.newaxis]], s))] == [0]


def test_classification_logits_and_probabilities() -> None:
    s = spec("classification", task="classify")
    best, prob, probs = classification([np.array([[2.0, 0.5, -1.0]], np.float32)], s)
    assert best == 0
    assert prob == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(0.5) + np.exp(-1)))
    assert probs.sum() == pytest.approx(1.0)
    best, prob, _ = classification([np.array([[0.1, 0.7, 0.2]], np.float32)], s)
    assert (best, prob) == (1, pytest.approx(0.7))


@pytest.mark.parametrize(
    ("fn", "decoder", "shape", "message"),
    [
        (yolov8, "yolov8", (1, 6, 100), r"yolov8 output must be \[1, 7, N\], got \[1, 6, 100\]"),
        (yolov5, "yolov5", (1, 100, 7), r"yolov5 output must be \[1, N, 8\]"),
        (end2end, "end2end", (1, 100, 7), r"end2end output must be \[1, K, 6\]"),
    ],
)
def test_wrong_output_shapes_are_named(fn, decoder, shape, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DecodeError, match=message):
        fn([np.zeros(shape, np.float32)], spec(decoder))


def test_class_index_out_of_range() -> None:
    rows = np.array([[0, 0, 10, 10, 0.9, 7]], np.float32)
    with pytest.raises(DecodeError, match="class index 7 outside the 3 classes"):
        end2end([rows[np.newaxis]], spec("end2end"))


def mask_spec(**masks: object) -> ModelSpec:
    return spec(output={"decoder": "yolov8", "masks": {"classes": ["crack"], **masks}})


def test_region_classes_from_a_probability_map() -> None:
    prob = np.zeros((1, 3, 640, 640), np.float32)
    prob[0, 0, 100:104, 50:150] = 0.9  # a crack stroke ...
    prob[0, 0, 110:114, 160:260] = 0.6  # ... and another 10 px away: one region with join 33
    prob[0, 0, 500:520, 500:504] = 0.7  # a crack far away
    prob[0, 0, 300:301, 300:302] = 0.95  # 2 pixels: under min_pixels
    prob[0, 0, 600:610, 10:20] = 0.4  # under the mask threshold
    prob[0, 1, 200:260, 200:260] = 0.99  # pothole probability: potholes come from the boxes
    rows = np.array(
        [
            [100, 100, 40, 20, 0.9, 0.0, 0.0],  # a crack box: ignored, cracks are the mask's
            [300, 200, 60, 60, 0.0, 0.7, 0.0],  # pothole (270, 170)-(330, 230)
        ],
        np.float32,
    )
    out = [rows.T[np.newaxis], prob]
    s = mask_spec(threshold=0.5, join=33, min_pixels=10)
    assert boxes(yolov8(out, s)) == [
        (0, 0.9, [50, 100, 260, 114]),
        (1, 0.7, [270, 170, 330, 230]),
        (0, 0.7, [500, 500, 504, 520]),
    ]
    # without joining the two strokes are two regions
    assert len(yolov8(out, mask_spec(threshold=0.5, min_pixels=10))) == 4
    # the class score threshold filters the groups by their highest probability
    s = mask_spec(threshold=0.5, join=33, min_pixels=10)
    s = s.model_copy(update={"thresholds": s.thresholds.model_copy(update={"score": 0.8})})
    assert [c for c, _, _ in boxes(yolov8(out, s))] == [0]


def test_a_coarse_probability_map_is_scaled_to_the_input() -> None:
    prob = np.zeros((1, 3, 160, 160), np.float32)  # stride 4
    prob[0, 0, 25:27, 10:40] = 1.0  # rows 100-108, columns 40-160 at the input
    (found,) = boxes(yolov8([np.zeros((1, 7, 0), np.float32), prob], mask_spec()))
    assert found[0] == 0
    assert found[2] == pytest.approx([40, 100, 160, 108], abs=3)


def test_mask_output_errors_are_named() -> None:
    rows = np.zeros((1, 7, 0), np.float32)
    with pytest.raises(DecodeError, match=r"masks from output 1; the model has 1 output"):
        yolov8([rows], mask_spec())
    with pytest.raises(
        DecodeError, match=r"mask output 1 must be \[1, 3, H, W\], got \[1, 2, 8, 8\]"
    ):
        yolov8([rows, np.zeros((1, 2, 8, 8), np.float32)], mask_spec())
    with pytest.raises(ValueError, match="masks of unknown classes: road"):
        spec(output={"decoder": "yolov8", "masks": {"classes": ["road"]}})
    with pytest.raises(ValueError, match=r"output\.masks is for detectors"):
        spec(
            "classification",
            task="classify",
            output={"decoder": "classification", "masks": {"classes": ["crack"]}},
        )


def test_mask_outputs_each_with_their_own_classes_and_settings() -> None:
    """A list under output.masks: cracks from output 1 joined over 33 px, potholes from a
    finer output 2, one per blob of touching pixels, at their own threshold; boxes of both
    classes from the box output are ignored."""
    coarse = np.zeros((1, 3, 160, 160), np.float32)  # stride 4
    coarse[0, 0, 25:27, 10:20] = 0.9  # crack, input rows 100-108, columns 40-80
    coarse[0, 0, 25:27, 26:36] = 0.9  # 24 px further: the same region with join 33
    coarse[0, 1, 100:120, 100:120] = 0.99  # pothole in the coarse output: not read
    fine = np.zeros((1, 3, 320, 320), np.float32)  # stride 2
    fine[0, 1, 50:60, 50:60] = 0.7  # pothole, input (100, 100)-(120, 120)
    fine[0, 1, 50:60, 62:72] = 0.45  # a blob 4 px away: separate (join 0), score 0.45
    fine[0, 1, 200:210, 200:210] = 0.3  # under the pothole threshold 0.4
    fine[0, 0, 250:300, 250:300] = 0.99  # crack in the fine output: not read
    rows = np.array([[300, 300, 60, 60, 0.9, 0.9, 0.0]], np.float32)  # boxes: ignored
    s = spec(
        output={
            "decoder": "yolov8",
            "masks": [
                {"output": 1, "classes": ["crack"], "threshold": 0.5, "join": 33},
                {"output": 2, "classes": ["pothole"], "threshold": 0.4, "min_pixels": 20},
            ],
        }
    )
    found = boxes(yolov8([rows.T[np.newaxis], coarse, fine], s))
    assert [(c, score) for c, score, _ in found] == [(0, 0.9), (1, 0.7), (1, 0.45)]
    assert found[0][2] == pytest.approx([40, 100, 144, 108], abs=3)
    assert found[1][2] == pytest.approx([100, 100, 120, 120], abs=2)
    assert found[2][2] == pytest.approx([124, 100, 144, 120], abs=2)
    with pytest.raises(DecodeError, match=r"masks from output 2; the model has 2 output"):
        yolov8([rows.T[np.newaxis], coarse], s)
    # with_boxes: the pothole boxes are kept too; one that overlaps a blob is one detection
    both = [
        {"output": 1, "classes": ["crack"], "threshold": 0.5, "join": 33},
        {"output": 2, "classes": ["pothole"], "threshold": 0.4, "with_boxes": True},
    ]
    s = spec(output={"decoder": "yolov8", "masks": both})
    rows = np.array(
        [
            [300, 300, 60, 60, 0.0, 0.9, 0.0],  # a pothole box on its own: kept
            [110, 110, 20, 20, 0.0, 0.6, 0.0],  # over the 0.7 blob: NMS keeps the blob
        ],
        np.float32,
    )
    found = boxes(yolov8([rows.T[np.newaxis], coarse, fine], s))
    assert [(c, score) for c, score, _ in found] == [(1, 0.9), (0, 0.9), (1, 0.7), (1, 0.45)]
    assert found[0][2] == pytest.approx([270, 270, 330, 330])


def test_a_class_from_two_mask_outputs_is_refused() -> None:
    with pytest.raises(ValueError, match="masks name a class more than once: crack"):
        spec(
            output={
                "decoder": "yolov8",
                "masks": [{"classes": ["crack"]}, {"output": 2, "classes": ["crack", "pothole"]}],
            }
        )


def whole_map_groups(
    prob: np.ndarray, threshold: float, join: int, min_pixels: int
) -> list[tuple[float, ...]]:
    """The grouping as defined: dilate the whole map, label, one group per label."""
    on = (prob >= threshold).astype(np.uint8)
    if join > 1:
        on = cv2.dilate(on, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (join, join)))
    n, labels = cv2.connectedComponents(on, connectivity=8)
    out = []
    for label in range(1, n):
        ys, xs = np.nonzero((labels == label) & (prob >= threshold))
        if len(xs) >= min_pixels:
            box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            out.append((*map(float, box), round(float(prob[ys, xs].max()), 6)))
    return sorted(out)


@pytest.mark.parametrize("seed", range(40))
def test_mask_groups_match_the_whole_map_definition(seed: int) -> None:
    """mask_groups works on the pixels' extent only; its groups are those of dilating and
    labelling the whole map, also for pixels at the edges and groups joined near them."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(20, 120)), int(rng.integers(20, 160))
    prob = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 6))):  # blobs and lines, some touching the edges
        x, y = int(rng.integers(-5, w)), int(rng.integers(-5, h))
        dx, dy = int(rng.integers(1, 30)), int(rng.integers(1, 8))
        prob[max(y, 0) : y + dy, max(x, 0) : x + dx] = rng.uniform(0.3, 1.0)
    prob += rng.uniform(0, 0.2, prob.shape).astype(np.float32)
    join, min_pixels = int(rng.choice([1, 5, 9, 33])), int(rng.integers(1, 20))
    boxes, scores = mask_groups(prob, 0.5, join, min_pixels)
    got = sorted((*map(float, b), round(float(s), 6)) for b, s in zip(boxes, scores, strict=True))
    assert got == whole_map_groups(prob, 0.5, join, min_pixels)


def test_a_map_with_nothing_over_the_threshold_gives_no_regions() -> None:
    prob = np.full((1, 3, 8, 8), 0.49, np.float32)
    rows = np.zeros((1, 7, 0), np.float32)
    assert len(yolov8([rows, prob], mask_spec(threshold=0.5))) == 0
