"""The road model's evaluation (models.training.road_eval) on hand-made frames: AP50,
F1 at the package's thresholds and pothole recall by box area, as the model card reports
them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.training.road_data import Frame, load_split
from models.training.road_eval import (
    Prediction,
    ap_by_iou,
    by_highway,
    ceilings,
    evaluate,
    pick_thresholds,
    recall_by_area,
)

ROAD = Path(__file__).resolve().parents[2] / "models" / "zoo" / "road_defect"


def frame(*boxes: tuple[float, float, float, float, int], name: str = "f") -> Frame:
    return Frame(
        name,
        Path(f"{name}_RAW.jpg"),
        np.asarray([b[:4] for b in boxes], np.float32).reshape(-1, 4),
        np.asarray([b[4] for b in boxes], np.int64),
    )


def pred(*boxes: tuple[float, float, float, float, float, int]) -> Prediction:
    return (
        np.asarray([b[:4] for b in boxes], np.float32).reshape(-1, 4),
        np.asarray([b[4] for b in boxes], np.float32),
        np.asarray([b[5] for b in boxes], np.int64),
    )


def test_ap_f1_and_recall_by_area_count_what_was_found() -> None:
    frames = [
        # a small pothole (10x10 = 100 px) and a large one (60x60 = 3600 px), a crack region
        frame((0, 0, 10, 10, 1), (100, 100, 160, 160, 1), (200, 0, 400, 100, 0)),
        frame((0, 0, 30, 30, 1)),  # 900 px
    ]
    preds = [
        # the large pothole found (IoU 0.9), the small one missed; a false pothole;
        # the crack region found but with the pothole label (a miss for both classes)
        pred(
            (101, 101, 158, 158, 0.9, 1),
            (300, 300, 320, 320, 0.6, 1),
            (200, 0, 400, 100, 0.8, 1),
        ),
        pred((0, 0, 30, 28, 0.4, 1), (0, 0, 30, 30, 0.3, 0)),  # found, low score
    ]
    figures = evaluate(frames, preds, {"crack": 0.5, "pothole": 0.5})
    pothole = figures["pothole"]
    assert pothole["objects"] == 3
    # ranked: 0.9 hit, 0.8 miss, 0.6 miss, 0.4 hit -> AP = 1/3 * 1 + 1/3 * 0.5
    assert pothole["ap50"] == pytest.approx(0.5, abs=1e-4)
    # at 0.5: 3 detections, 1 hit
    assert (pothole["precision"], pothole["recall"]) == (pytest.approx(1 / 3, abs=1e-4),) * 2
    assert figures["crack"]["ap50"] == 0.0  # called a pothole; the one crack call is wrong
    by_area = recall_by_area(frames, preds, 1, 0.5)
    assert [(b["area"], b["objects"], b["recall"]) for b in by_area] == [
        ("0-300", 1, 0.0),
        ("300-600", 0, 0.0),
        ("600-1200", 1, 0.0),  # found at 0.4, under the threshold
        ("1200-2500", 0, 0.0),
        ("2500-inf", 1, 1.0),
    ]
    assert recall_by_area(frames, preds, 1, 0.3)[2]["recall"] == 1.0
    # thresholds picked for the best F1: the pothole one keeps the two hits
    assert pick_thresholds(frames, preds)["pothole"] == pytest.approx(0.4)


def test_ap_at_looser_overlaps_counts_misplaced_boxes_but_not_missed_objects() -> None:
    frames = [frame((0, 0, 20, 20, 1), (100, 0, 120, 20, 1), (200, 0, 220, 20, 1))]
    # one box right (IoU 1), one too wide (IoU 0.56), one shifted and too wide (IoU 0.25):
    # found at 0.1 only
    preds = [pred((0, 0, 20, 20, 0.9, 1), (92, 0, 128, 20, 0.8, 1), (210, 0, 240, 20, 0.7, 1))]
    assert evaluate(frames, preds, {"crack": 0.5, "pothole": 0.5})["pothole"]["ap50"] == (
        pytest.approx(2 / 3, abs=1e-4)
    )
    assert ap_by_iou(frames, preds, 1) == {
        "0.5": pytest.approx(2 / 3, abs=1e-4),
        "0.3": pytest.approx(2 / 3, abs=1e-4),
        "0.1": pytest.approx(1.0, abs=1e-4),
    }
    missed = [pred((0, 0, 20, 20, 0.9, 1))]  # two potholes with no box near them at all
    assert list(ap_by_iou(frames, missed, 1).values()) == [pytest.approx(1 / 3, abs=1e-4)] * 3


def test_f1_counts_a_crack_region_found_in_overlapping_pieces_as_found() -> None:
    frames = [frame((200, 0, 400, 100, 0))]
    # the region found as a chain of three overlapping boxes, each under IoU 0.5 with it
    preds = [
        pred((200, 0, 275, 100, 0.6, 0), (270, 0, 335, 100, 0.5, 0), (330, 0, 400, 100, 0.7, 0))
    ]
    thresholds = {"crack": 0.3, "pothole": 0.5}
    as_found = evaluate(frames, preds, thresholds)["crack"]
    joined = evaluate(frames, preds, thresholds, regions=[0])["crack"]
    assert (as_found["precision"], as_found["recall"]) == (0.0, 0.0)
    assert (joined["precision"], joined["recall"], joined["f1"]) == (1.0, 1.0, 1.0)
    assert joined["ap50"] == as_found["ap50"] == 0.0  # AP is of the boxes as found
    # the joining happens after the threshold: a piece under it is not part of the region
    assert evaluate(frames, preds, {"crack": 0.55, "pothole": 0.5}, [0])["crack"]["f1"] == 0.0
    assert pick_thresholds(frames, preds, [0])["crack"] <= 0.5


def test_figures_per_highway_come_from_that_highways_frames_only() -> None:
    frames = [
        frame((0, 0, 30, 30, 1), name="1_RS_386_386RS1_1"),
        frame((0, 0, 30, 30, 1), name="2_RS_386_386RS1_2"),
        frame((50, 50, 90, 90, 1), name="3_DF_020_020DF1_1"),
    ]
    # RS-386: both potholes found; DF-020: a detection in the wrong place
    preds = [
        pred((0, 0, 30, 30, 0.9, 1)),
        pred((1, 1, 30, 30, 0.8, 1)),
        pred((0, 0, 30, 30, 0.9, 1)),
    ]
    figures = by_highway(frames, preds, {"crack": 0.5, "pothole": 0.5})
    assert list(figures) == ["DF-020", "RS-386"]
    assert figures["RS-386"]["frames"] == 2
    assert figures["RS-386"]["pothole"]["objects"] == 2
    assert figures["RS-386"]["pothole"]["ap50"] == pytest.approx(1.0)
    assert (figures["DF-020"]["pothole"]["ap50"], figures["DF-020"]["pothole"]["f1"]) == (0, 0)
    # all frames together: two of the three found
    overall = evaluate(frames, preds, {"crack": 0.5, "pothole": 0.5})["pothole"]
    assert overall["recall"] == pytest.approx(2 / 3, abs=1e-4)


def test_ceilings_give_ap_with_a_highway_left_as_is_or_a_size_found_in_full() -> None:
    frames = [
        # RS-386: a 900 px pothole and a 100 px one; DF-020: a 1600 px one
        frame((0, 0, 30, 30, 1), (100, 100, 110, 110, 1), name="1_RS_386_386RS1_1"),
        frame((50, 50, 90, 90, 1), name="2_DF_020_020DF1_1"),
    ]
    preds = [
        # a false alarm on top, the 900 px pothole found, the small one missed
        pred((200, 200, 220, 220, 0.95, 1), (0, 0, 30, 30, 0.9, 1)),
        pred((50, 50, 90, 88, 0.5, 1)),  # found
    ]
    # ranked: miss, hit, hit: precision 1/2 then 2/3 up to recall 2/3 -> AP 4/9
    assert evaluate(frames, preds, {"crack": 0.5, "pothole": 0.5})["pothole"]["ap50"] == (
        pytest.approx(4 / 9, abs=1e-4)
    )
    got = ceilings(frames, preds, 1)
    assert got["perfect_but"] == {
        # DF-020 found first, then RS-386 as is: hit, miss, hit -> 1/3 + 1/3 * 2/3
        "RS-386": pytest.approx(5 / 9, abs=1e-4),
        # RS-386's two first, DF-020's found at 0.5 -> everything before any false alarm
        "DF-020": 1.0,
    }
    assert got["found_from_area"] == {
        # both larger ones at the top (their own boxes taken away); the false alarm, the
        # small one missed -> 2/3
        "300": pytest.approx(2 / 3, abs=1e-4),
        "600": pytest.approx(2 / 3, abs=1e-4),
        # only the 1600 px one: hit, false alarm, hit (the 900 px one at 0.9) -> 5/9
        "1200": pytest.approx(5 / 9, abs=1e-4),
        "2500": pytest.approx(4 / 9, abs=1e-4),  # nothing that large: as is
    }
    assert ceilings(frames, preds, 0) == {  # no cracks anywhere: nothing to find
        "perfect_but": {"DF-020": 0.0, "RS-386": 0.0},
        "found_from_area": dict.fromkeys(("300", "600", "1200", "2500"), 0.0),
    }


def test_run_frames_gives_every_candidate_down_to_the_floor_and_restores_the_package(
    tmp_path: Path,
) -> None:
    from models.runtime import LoadedModel
    from models.training.road_eval import run_frames

    rng = np.random.default_rng(3)
    frames = []
    for i in range(2):
        img = rng.normal(110, 25, (500, 800, 3)).clip(0, 255).astype(np.uint8)
        cv2.ellipse(img, (300 + 100 * i, 380), (40, 18), 0, 0, 360, (35, 30, 28), -1)
        cv2.line(img, (100, 300), (500, 250 + 40 * i), (20, 20, 20), 3)
        path = tmp_path / f"f{i}_RAW.jpg"
        cv2.imwrite(str(path), img)
        frames.append(Frame(f"f{i}", path, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)))
    model = LoadedModel.load(ROAD, threads=1)
    spec = model.spec
    preds, times = run_frames(model, frames)
    assert model.spec is spec
    assert len(preds) == len(times) == 2
    for (boxes, scores, classes), f in zip(preds, frames, strict=True):
        assert len(boxes) == len(scores) == len(classes)
        assert (scores >= 0.05).all()
        # below the package's thresholds: the floor applies, not the package's thresholds
        threshold = spec.score_threshold(1)
        assert scores.min() < threshold
        # at the package's threshold, the potholes the node reports
        potholes = [d for d in model.run(cv2.imread(str(f.image))) if d.label == "pothole"]
        assert len(potholes) == int((scores[classes == 1] >= threshold).sum())
    missing = Frame(
        "gone", tmp_path / "gone_RAW.jpg", np.zeros((0, 4), np.float32), frames[0].classes
    )
    with pytest.raises(SystemExit, match=r"gone_RAW\.jpg: cannot be read"):
        run_frames(model, [missing])
    assert model.spec is spec


def write_frame(root: Path, name: str, pothole: tuple[int, int, int, int]) -> None:
    """One road-dnit frame folder: a grey 800x500 image, a pothole blob at `pothole`
    (x1, y1, x2, y2), no cracks."""
    d = root / "images" / name
    d.mkdir(parents=True)
    cv2.imwrite(str(d / f"{name}_RAW.jpg"), np.full((500, 800, 3), 128, np.uint8))
    blank = np.zeros((500, 800), np.uint8)
    cv2.imwrite(str(d / f"{name}_CRACK.png"), blank)
    x1, y1, x2, y2 = pothole
    cv2.imwrite(
        str(d / f"{name}_POTHOLE.png"),
        cv2.rectangle(blank.copy(), (x1, y1), (x2 - 1, y2 - 1), 255, -1),
    )


def test_a_held_out_stretch_of_the_training_roads_leaves_train_and_joins_val(
    tmp_path: Path,
) -> None:
    names = {
        "train": ["1_RS_290_290RS070691_10", "2_RS_290_290RS070691_15", "3_DF_251_251BDF1_5"],
        "val": ["4_DF_080_080DF1_1"],
        "test": ["5_RS_386_386RS1_1"],
    }
    for split, frames in names.items():
        (tmp_path / f"{split}.txt").write_text("".join(f"{n}_RAW.jpg\n" for n in frames))
        for i, n in enumerate(frames):
            write_frame(tmp_path, n, (10 + i, 20, 40 + i, 50))

    # without it, the lists as they are
    assert [f.name for f in load_split(tmp_path, "train")] == names["train"]
    held = ["290RS070691"]
    assert [f.name for f in load_split(tmp_path, "train", held)] == ["3_DF_251_251BDF1_5"]
    val = load_split(tmp_path, "val", held)
    assert [f.name for f in val] == ["4_DF_080_080DF1_1", *names["train"][:2]]
    # the held-out frames come with their boxes, read from their masks like any other
    assert val[2].boxes.tolist() == [[11.0, 20.0, 41.0, 50.0]]
    assert val[2].classes.tolist() == [1]
    with pytest.raises(SystemExit, match=r"test\.txt stays as it is"):
        load_split(tmp_path, "test", held)
    with pytest.raises(SystemExit, match=r"--hold-out 290RS999: no frame of train\.txt"):
        load_split(tmp_path, "val", ["290RS999"])


def test_sheets_show_the_top_false_alarms_and_the_misses_with_what_each_tile_is(
    tmp_path: Path,
) -> None:
    from models.training.sheets import (
        COLUMNS,
        TILE,
        false_alarms,
        misses,
        unmarked,
        write_sheets,
    )

    rng = np.random.default_rng(5)
    frames = []
    for i in range(2):
        path = tmp_path / f"f{i}_RAW.jpg"
        cv2.imwrite(str(path), rng.integers(100, 150, (500, 800, 3), dtype=np.uint8))
        frames.append(
            Frame(
                f"1_RS_386_386RS1_{i}",
                path,
                np.asarray([[100, 100, 140, 130], [500, 300, 560, 340]], np.float32),
                np.asarray([1, 1]),
            )
        )
    preds = [
        # frame 0: the first pothole found; a box over nothing (0.7); one beside the
        # second pothole, misplaced (IoU 0.2: neither a hit nor "nothing there")
        pred(
            (101, 100, 140, 131, 0.9, 1), (300, 50, 330, 80, 0.7, 1), (530, 300, 590, 340, 0.8, 1)
        ),
        # frame 1: the second pothole found below the threshold (0.3), a higher alarm (0.95)
        pred((500, 300, 560, 341, 0.3, 1), (700, 400, 740, 440, 0.95, 1)),
    ]
    alarms = false_alarms(frames, preds, 1)
    assert [(a["frame"], a["score"]) for a in alarms] == [
        (1, pytest.approx(0.95)),
        (0, pytest.approx(0.7)),
    ]
    thresholds = {"crack": 0.5, "pothole": 0.5}
    missed = misses(frames, preds, 1, thresholds)
    # frame 0's second pothole (nothing matched it at all), frame 1's two (one under the
    # threshold, at 0.3; the other with no prediction over it)
    assert [(m["frame"], m["box"][0], m["score"]) for m in missed] == [
        (0, 500.0, None),
        (1, 100.0, None),
        (1, 500.0, pytest.approx(0.3)),
    ]

    # what the node would report where the masks mark nothing: the alarms at or above the
    # threshold, by frame (0.95 and 0.7 at 0.5; at 0.8 only the first)
    assert unmarked(frames, preds, thresholds)["pothole"] == {
        "1_RS_386_386RS1_1": [[700.0, 400.0, 740.0, 440.0]],
        "1_RS_386_386RS1_0": [[300.0, 50.0, 330.0, 80.0]],
    }
    strict = unmarked(frames, preds, {"crack": 0.5, "pothole": 0.8})
    assert strict == {
        "thresholds": {"crack": 0.5, "pothole": 0.8},
        "crack": {},
        "pothole": {"1_RS_386_386RS1_1": [[700.0, 400.0, 740.0, 440.0]]},
    }

    listing = write_sheets(tmp_path / "sheets", frames, preds, thresholds, count=2)
    pothole = listing["pothole"]
    assert (pothole["false_alarms_total"], pothole["misses_total"]) == (2, 3)
    assert [t["score"] for t in pothole["false_alarms"]] == [0.95, 0.7]
    # two of the three misses, spread over the split: the first and the last
    assert [(t["frame"], t["box"][0]) for t in pothole["misses"]] == [
        ("1_RS_386_386RS1_0", 500.0),
        ("1_RS_386_386RS1_1", 500.0),
    ]
    assert listing["crack"]["false_alarms"] == listing["crack"]["misses"] == []
    for name in ("pothole-false-alarms", "pothole-misses"):
        image = cv2.imread(str(tmp_path / "sheets" / f"{name}.jpg"))
        assert image is not None and image.shape == (TILE[1], TILE[0] * COLUMNS, 3)
    first = cv2.imread(str(tmp_path / "sheets" / "pothole-false-alarms.jpg"))
    # the green box of the alarm is drawn on its tile, the blank tiles stay black
    tile0 = first[:, : TILE[0]].astype(int)
    assert ((tile0[..., 1] > 180) & (tile0[..., 0] < 80) & (tile0[..., 2] < 80)).sum() > 20
    assert first[:, 2 * TILE[0] :].max() < 30
    assert json.loads((tmp_path / "sheets" / "sheets.json").read_text()) == listing


def test_road_eval_writes_the_sheets_it_is_asked_for_and_refuses_a_count_under_one(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    names = ["5_RS_386_386RS1_1", "6_RS_386_386RS1_2"]
    (tmp_path / "test.txt").write_text("".join(f"{n}_RAW.jpg\n" for n in names))
    for i, n in enumerate(names):
        write_frame(tmp_path, n, (300 + 20 * i, 380, 360 + 20 * i, 410))
    command = [sys.executable, "-m", "models.training.road_eval", str(tmp_path)]
    command += ["--model", str(ROAD), "--sheets", str(tmp_path / "s")]
    command += ["--unmarked", str(tmp_path / "unmarked.json")]
    done = subprocess.run(
        [*command, "--sheet-count", "2", "--ceilings"], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    # the two 1800 px potholes, found in full from 1200 px down, none at 2500
    assert figures["pothole"]["ceilings"] == {
        "perfect_but": {"RS-386": figures["pothole"]["ap50"]},  # the only highway
        "found_from_area": {"300": 1.0, "600": 1.0, "1200": 1.0, "2500": 0.0},
    }
    assert figures["sheets"] == str(tmp_path / "s")
    # nothing reported on a grey road: nothing unmarked either, at the package's thresholds
    assert figures["unmarked"] == {"crack": 0, "pothole": 0}
    listed = json.loads((tmp_path / "unmarked.json").read_text())
    assert listed["thresholds"]["pothole"] == figures["pothole"]["threshold"]
    assert listed["pothole"] == listed["crack"] == {}
    listing = json.loads((tmp_path / "s" / "sheets.json").read_text())
    # a grey road has no pothole the package reports: both are misses, on the sheet
    assert listing["pothole"]["misses_total"] == 2
    assert [t["frame"] for t in listing["pothole"]["misses"]] == names
    assert cv2.imread(str(tmp_path / "s" / "pothole-misses.jpg")) is not None
    refused = subprocess.run(
        [*command, "--sheet-count", "0"], check=False, capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "--sheet-count: '0': must be at least 1" in refused.stderr
    # a place that cannot be written is refused before any frame is run
    (tmp_path / "file").write_text("")
    for bad, message in (
        (["--sheets", str(tmp_path / "file" / "s")], "--sheets .*: cannot be made"),
        (["--unmarked", str(tmp_path / "no" / "u.json")], "--unmarked .*: there is no folder"),
        (["--pick"], "--pick only prints thresholds"),
    ):
        refused = subprocess.run([*command, *bad], check=False, capture_output=True, text=True)
        assert refused.returncode == 2
        assert re.search(message, refused.stderr), refused.stderr
    plain = [sys.executable, "-m", "models.training.road_eval", str(tmp_path), "--model", str(ROAD)]
    refused = subprocess.run(
        [*plain, "--ceilings", "--pick"], check=False, capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "--pick only prints thresholds" in refused.stderr
