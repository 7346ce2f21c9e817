"""Evaluate the road-defect package on road-dnit's ``test.txt`` through the product runtime.

    .venv/bin/python -m models.training.road_eval ../shared/data/road-dnit \\
        --model models/zoo/road_defect [--split test]
    .venv/bin/python -m models.training.road_eval ../shared/data/road-dnit --split val --pick

The package is loaded from its ``model.yaml`` by ``models.runtime`` exactly as a node loads
it (one intra-op thread: one core), each frame is read with OpenCV and run through the same
pre-processing, decoder and NMS. Ground truth comes from the masks
(``models.training.road_data``: one box per pothole blob, crack regions by dilation).

Figures per class: AP50 (all-point interpolated area under the precision-recall curve,
greedy matching at IoU >= 0.5, scores down to 0.05, boxes as the detector gives them), and
precision, recall and F1 of what the node reports: the package's own score thresholds and
its ``regions`` joined (overlapping crack-region boxes are one region); pothole recall by
box area (where the misses are); the same figures per highway; inference time per frame
(p50, mean) at the input size. ``--sheets DIR`` also writes contact sheets of each class's
highest-scoring false alarms and of its misses, to look at (``models.training.sheets``);
``--ceilings`` gives AP50 with part of the errors gone (`ceilings`), to see where the
rest of the way to a target lies.
Needs no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models.api import Decoded
from models.decoders import merge_regions, region_classes
from models.runtime import LoadedModel
from models.training.road_data import CLASSES, Frame, add_hold_out, load_split

F32 = npt.NDArray[np.float32]
Prediction = tuple[F32, F32, npt.NDArray[np.int64]]
IOU = 0.5
MASK_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # crack-mask thresholds tried on val


def iou_matrix(a: F32, b: F32) -> F32:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou: F32 = inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)
    return iou


def _greedy(
    pb: F32, gt: F32, iou: float = IOU
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Greedy matching of predictions `pb` (highest score first) to ground truth `gt` at
    IoU >= `iou`: (true-positive flag per prediction, matched flag per ground-truth box)."""
    ious = iou_matrix(pb, gt)
    used = np.zeros(len(gt), bool)
    hits = np.zeros(len(pb), bool)
    for i in range(len(pb)):
        if len(gt):
            cand = np.where(used, -1.0, ious[i])
            j = int(cand.argmax())
            if cand[j] >= iou:
                used[j] = hits[i] = True
    return hits, used


def _matches(
    frames: list[Frame], preds: list[Prediction], cls: int, iou: float = IOU
) -> tuple[F32, npt.NDArray[np.bool_], int]:
    """Scores and true/false-positive flags (at IoU >= `iou`) of all predictions of `cls`,
    and the GT count."""
    scores: list[F32] = []
    hits: list[npt.NDArray[np.bool_]] = []
    n_gt = 0
    for f, (boxes, conf, classes) in zip(frames, preds, strict=True):
        gt = f.boxes[f.classes == cls]
        n_gt += len(gt)
        sel = classes == cls
        order = np.argsort(-conf[sel])
        scores.append(conf[sel][order])
        hits.append(_greedy(boxes[sel][order], gt, iou)[0])
    return (
        np.concatenate(scores or [np.zeros(0, np.float32)]).astype(np.float32),
        np.concatenate(hits or [np.zeros(0, bool)]),
        n_gt,
    )


AREA_EDGES = (0.0, 300.0, 600.0, 1200.0, 2500.0, math.inf)  # box area, source pixels
LOOSER = (0.3, 0.1)  # IoU thresholds of `ap_by_iou` besides 0.5


def ap_by_iou(frames: list[Frame], preds: list[Prediction], cls: int) -> dict[str, float]:
    """AP of `cls` at IoU 0.5 and the looser ``LOOSER`` overlaps: what a looser match gains
    is objects found but with a misplaced or mis-sized box; what it does not gain is
    objects not found, or outranked by false alarms."""
    return {
        f"{iou:.1f}": round(average_precision(*_matches(frames, preds, cls, iou)), 4)
        for iou in (IOU, *LOOSER)
    }


def recall_by_area(
    frames: list[Frame], preds: list[Prediction], cls: int, threshold: float
) -> list[dict[str, Any]]:
    """Recall of `cls` at `threshold` per ground-truth box area (``AREA_EDGES``, pixels of
    the 800x500 frames): where the misses are."""
    total = np.zeros(len(AREA_EDGES) - 1, np.int64)
    found = np.zeros(len(AREA_EDGES) - 1, np.int64)
    for f, (boxes, conf, classes) in zip(frames, preds, strict=True):
        gt = f.boxes[f.classes == cls]
        sel = (classes == cls) & (conf >= threshold)
        _, used = _greedy(boxes[sel][np.argsort(-conf[sel])], gt)
        area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        k = np.searchsorted(AREA_EDGES, area, side="right") - 1
        np.add.at(total, k, 1)
        np.add.at(found, k[used], 1)
    return [
        {
            "area": f"{AREA_EDGES[i]:.0f}-{AREA_EDGES[i + 1]:.0f}",
            "objects": int(total[i]),
            "recall": round(float(found[i]) / max(int(total[i]), 1), 4),
        }
        for i in range(len(total))
    ]


def _truth(f: Frame) -> Prediction:
    """`f`'s objects found exactly, at a score above any the package gives."""
    return (f.boxes.astype(np.float32), np.full(len(f.boxes), 2.0, np.float32), f.classes.copy())


def _found(f: Frame, p: Prediction, cls: int, least: float) -> Prediction:
    """`p` with every `cls` object of at least `least` px found: its ground-truth box added
    at a score above any other, and the boxes of `p` that match it at IoU 0.5 taken away."""
    gt = f.boxes[f.classes == cls]
    big = gt[(gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) >= least].astype(np.float32)
    boxes, conf, classes = p
    drop = (classes == cls) & (iou_matrix(boxes, big).max(axis=1, initial=0.0) >= IOU)
    return (
        np.concatenate([boxes[~drop], big]).astype(np.float32),
        np.concatenate([conf[~drop], np.full(len(big), 2.0, np.float32)]),
        np.concatenate([classes[~drop], np.full(len(big), cls, np.int64)]),
    )


def ceilings(frames: list[Frame], preds: list[Prediction], cls: int) -> dict[str, Any]:
    """What AP50 of `cls` would be with part of the errors gone: figures for deciding
    where work (or a target) can go, not figures of the package.

    - ``perfect_but``: per highway, that highway's frames as the package does them and every
      other frame's objects found exactly, ahead of every detection (what that highway costs);
    - ``found_from_area``: per area edge A (``AREA_EDGES``, 800x500 px), every object of at
      least A px found at a score above all others (what finding all of that size gives)."""

    def ap(changed: list[Prediction]) -> float:
        return round(average_precision(*_matches(frames, changed, cls)), 4)

    roads = [highway(f) for f in frames]
    return {
        "perfect_but": {
            road: ap(
                [
                    p if r == road else _truth(f)
                    for f, p, r in zip(frames, preds, roads, strict=True)
                ]
            )
            for road in sorted(set(roads))
        },
        "found_from_area": {
            f"{least:.0f}": ap(
                [_found(f, p, cls, least) for f, p in zip(frames, preds, strict=True)]
            )
            for least in AREA_EDGES[1:-1]
        },
    }


def _curve(scores: F32, hits: npt.NDArray[np.bool_], n_gt: int) -> tuple[F32, F32, F32]:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / max(n_gt, 1)
    precision = tp / np.maximum(tp + fp, 1)
    return scores[order], precision.astype(np.float32), recall.astype(np.float32)


def average_precision(scores: F32, hits: npt.NDArray[np.bool_], n_gt: int) -> float:
    if n_gt == 0 or len(scores) == 0:
        return 0.0
    _, p, r = _curve(scores, hits, n_gt)
    mrec = np.concatenate([[0.0], r, [1.0]])
    mpre = np.concatenate([[1.0], p, [0.0]])
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def post_process(
    preds: list[Prediction], thresholds: dict[str, float], regions: Sequence[int] = ()
) -> list[Prediction]:
    """What the runtime reports from the same raw predictions: the score thresholds, then
    overlapping boxes of the `regions` classes joined (``models.decoders.merge_regions``)."""
    floor = np.asarray([thresholds[name] for name in CLASSES], np.float32)
    out = []
    for boxes, conf, classes in preds:
        keep = conf >= floor[classes]
        d = merge_regions(Decoded(boxes[keep], conf[keep], classes[keep].astype(np.int32)), regions)
        out.append((d.boxes, d.scores, d.classes.astype(np.int64)))
    return out


def _f1_at(
    frames: list[Frame], preds: list[Prediction], cls: int, threshold: float, regions: Sequence[int]
) -> tuple[float, float, float]:
    """(precision, recall, F1) of `cls` at `threshold`, regions joined."""
    thresholds = dict.fromkeys(CLASSES, threshold)
    _, hits, n_gt = _matches(frames, post_process(preds, thresholds, regions), cls)
    tp = int(hits.sum())
    precision, recall = tp / max(len(hits), 1), tp / max(n_gt, 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-9)


def pick_thresholds(
    frames: list[Frame], preds: list[Prediction], regions: Sequence[int] = ()
) -> dict[str, float]:
    """Per class, the score threshold with the best F1 (use on validation data only); for a
    region class, the F1 after its overlapping boxes are joined (a grid of thresholds)."""
    out = {}
    for c, name in enumerate(CLASSES):
        if c in regions:
            grid = np.arange(0.05, 0.99, 0.0125)
            f1 = [_f1_at(frames, preds, c, float(t), regions)[2] for t in grid]
            out[name] = round(float(grid[int(np.argmax(f1))]), 3)
            continue
        s, p, r = _curve(*_matches(frames, preds, c))
        if len(s) == 0:
            out[name] = 0.3
            continue
        f1s = 2 * p * r / np.maximum(p + r, 1e-9)
        out[name] = round(max(float(s[int(f1s.argmax())]), 0.05), 3)
    return out


def evaluate(
    frames: list[Frame],
    preds: list[Prediction],
    thresholds: dict[str, float],
    regions: Sequence[int] = (),
) -> dict[str, Any]:
    """AP50 of the raw predictions (all scores, no joining); precision, recall and F1 of
    what the runtime reports (`post_process`: the thresholds, regions joined)."""
    out: dict[str, Any] = {}
    for c, name in enumerate(CLASSES):
        scores, hits, n_gt = _matches(frames, preds, c)
        precision, recall, f1 = _f1_at(frames, preds, c, thresholds[name], regions)
        out[name] = {
            "ap50": round(average_precision(scores, hits, n_gt), 4),
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "objects": n_gt,
            "threshold": thresholds[name],
        }
    return out


def highway(frame: Frame) -> str:
    """The highway a road-dnit frame was taken on, from its name (``..._RS_386_...``:
    ``RS-386``); the name itself when it does not follow that pattern."""
    parts = frame.name.split("_")
    return f"{parts[1]}-{parts[2]}" if len(parts) > 2 else frame.name


def by_highway(
    frames: list[Frame],
    preds: list[Prediction],
    thresholds: dict[str, float],
    regions: Sequence[int] = (),
) -> dict[str, dict[str, Any]]:
    """`evaluate` per highway (the splits are by highway: how the figures vary by road)."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(highway(f), []).append(i)
    return {
        name: {"frames": len(idx)}
        | evaluate([frames[i] for i in idx], [preds[i] for i in idx], thresholds, regions)
        for name, idx in sorted(groups.items())
    }


def run_frames(model: LoadedModel, frames: list[Frame]) -> tuple[list[Prediction], list[float]]:
    """Every detection the package gives on each frame down to a score of 0.05, regions not
    joined (what AP50 is computed on), and the seconds each frame took."""
    spec = model.spec
    model.spec = spec.model_copy(
        update={
            "thresholds": spec.thresholds.model_copy(update={"score": 0.05, "per_class": {}}),
            "regions": [],
        }
    )
    preds: list[Prediction] = []
    times = []
    try:
        for f in frames:
            img = cv2.imread(str(f.image), cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"{f.image}: cannot be read")
            t = time.perf_counter()
            dets = model.run(np.asarray(img, np.uint8))
            times.append(time.perf_counter() - t)
            preds.append(
                (
                    np.asarray([d.box for d in dets], np.float32).reshape(-1, 4),
                    np.asarray([d.score for d in dets], np.float32),
                    np.asarray([CLASSES.index(d.label) for d in dets], np.int64),
                )
            )
    finally:
        model.spec = spec
    return preds, times


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", type=Path, help="the road-dnit folder")
    ap.add_argument("--model", type=Path, default=Path("models/zoo/road_defect"))
    ap.add_argument("--split", default="test")
    ap.add_argument(
        "--pick",
        action="store_true",
        help="print the per-class score thresholds with the best F1 on this split (val only: "
        "for the package's model.yaml), after the package's own post-processing",
    )
    ap.add_argument(
        "--sheets",
        type=Path,
        metavar="DIR",
        help="also write contact sheets of each class's top false alarms and of its misses "
        "into DIR, with sheets.json listing each tile (models/training/sheets.py)",
    )
    ap.add_argument(
        "--sheet-count",
        type=positive_int,
        default=36,
        metavar="N",
        help="tiles per sheet (default 36)",
    )
    ap.add_argument(
        "--unmarked",
        type=Path,
        metavar="FILE",
        help="also write to FILE (JSON) each class's false alarms at the package's "
        "thresholds, by frame: where the masks may have left objects out (for review, or "
        "for train_road --ignore-unmarked)",
    )
    ap.add_argument(
        "--ceilings",
        action="store_true",
        help="also give each class's AP50 with part of the errors gone: with every other "
        "highway perfect, and with every object from a size up found (where work can go)",
    )
    add_hold_out(ap)
    return ap


def main() -> None:
    ap = _parser()
    args = ap.parse_args()
    if args.pick and (args.sheets or args.unmarked or args.ceilings):
        ap.error("--pick only prints thresholds: --sheets, --unmarked and --ceilings go without it")
    if args.sheets is not None:  # before the frames are run, not after
        try:
            args.sheets.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ap.error(f"--sheets {args.sheets}: cannot be made ({exc.strerror})")
    if args.unmarked is not None and not args.unmarked.parent.is_dir():
        ap.error(f"--unmarked {args.unmarked}: there is no folder {args.unmarked.parent}")
    frames = load_split(args.data, args.split, args.hold_out)
    model = LoadedModel.load(args.model, threads=1)
    spec = model.spec
    regions = region_classes(spec)
    preds, times = run_frames(model, frames)
    if args.pick:
        print(json.dumps(pick_thresholds(frames, preds, regions)))
        return
    thresholds = {name: spec.score_threshold(c) for c, name in enumerate(CLASSES)}
    figures = evaluate(frames, preds, thresholds, regions)
    figures["pothole"]["recall_by_area"] = recall_by_area(
        frames, preds, CLASSES.index("pothole"), thresholds["pothole"]
    )
    for c, name in enumerate(CLASSES):
        figures[name]["ap_by_iou"] = ap_by_iou(frames, preds, c)
        if args.ceilings:
            figures[name]["ceilings"] = ceilings(frames, preds, c)
    figures["by_highway"] = by_highway(frames, preds, thresholds, regions)
    ms = sorted(t * 1000 for t in times)
    figures["inference"] = {
        "input": list(spec.input.size),
        "threads": 1,
        "p50_ms": round(statistics.median(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "fps_one_core": round(1000 / statistics.fmean(ms), 1),
    }
    held = f", with {' '.join(args.hold_out)} of train" if args.hold_out else ""
    figures["split"] = f"{args.split}{held} ({len(frames)} frames)"
    if args.sheets is not None or args.unmarked is not None:
        from models.training import sheets  # noqa: PLC0415 (it imports this module)

        if args.sheets is not None:
            sheets.write_sheets(
                args.sheets, frames, preds, thresholds, regions, count=args.sheet_count
            )
            figures["sheets"] = str(args.sheets)
        if args.unmarked is not None:
            found = sheets.unmarked(frames, preds, thresholds)
            try:
                args.unmarked.write_text(json.dumps(found, indent=1))
            except OSError as exc:
                raise SystemExit(f"--unmarked {args.unmarked}: cannot be written ({exc})") from None
            figures["unmarked"] = {name: sum(map(len, found[name].values())) for name in CLASSES}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
