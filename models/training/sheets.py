"""Contact sheets for looking at a road package's errors: per class, the highest-scoring
false alarms and a spread of the missed objects, each a crop of its frame with the
ground truth (red) and the prediction (green) drawn in, and a JSON list of what each tile
shows (``road_eval --sheets DIR``).

A false alarm is a prediction that overlaps no object of its class at all (IoU < 0.1):
the ground truth marks nothing there. Looking at them tells a detector's mistakes apart
from objects the annotation left out. A miss is an object that nothing the node reports
overlaps at IoU >= 0.5, the package's thresholds and region joining applied (the recall
that ``road_eval`` prints pairs boxes and objects one to one, so it can count a few more).
Misses are taken evenly over the split, in frame order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models.training.road_data import CLASSES, Frame
from models.training.road_eval import Prediction, highway, iou_matrix, post_process

NOTHING_THERE = 0.1  # a prediction under this IoU with every object of its class
MATCH = 0.5
TILE = (320, 192)  # width, height of one crop on the sheet
COLUMNS = 4
CONTEXT = 240  # the least width of frame around an item, source pixels
GROUND_TRUTH = (0, 0, 255)  # BGR
PREDICTED = (0, 220, 0)
TEXT = (255, 255, 0)

Item = dict[str, Any]


def _best_iou(box: npt.NDArray[np.float32], others: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    if len(others) == 0:
        return np.zeros(0, np.float32)
    return np.asarray(iou_matrix(box[None].astype(np.float32), others.astype(np.float32))[0])


def false_alarms(frames: list[Frame], preds: list[Prediction], cls: int) -> list[Item]:
    """Every prediction of `cls` that overlaps no object of `cls` (IoU < 0.1), highest
    score first; ``green``: the prediction's box, drawn on its tile."""
    out: list[Item] = []
    for i, (f, (boxes, scores, classes)) in enumerate(zip(frames, preds, strict=True)):
        gt = f.boxes[f.classes == cls]
        for j in np.flatnonzero(classes == cls):
            iou = _best_iou(boxes[j], gt)
            if len(iou) == 0 or float(iou.max()) < NOTHING_THERE:
                box = boxes[j].tolist()
                out.append({"frame": i, "box": box, "score": float(scores[j]), "green": [box]})
    out.sort(key=lambda item: -item["score"])
    return out


def misses(
    frames: list[Frame],
    preds: list[Prediction],
    cls: int,
    thresholds: dict[str, float],
    regions: tuple[int, ...] | list[int] = (),
) -> list[Item]:
    """Every object of `cls` that no reported prediction of `cls` matches at IoU >= 0.5, in
    frame order; ``score`` is the best score among all the predictions that would have
    matched it (below the threshold), None when there was none; ``green``: what the node
    reported of `cls` in that frame."""
    reported = post_process(preds, thresholds, regions)
    out: list[Item] = []
    for i, f in enumerate(frames):
        boxes, scores, classes = preds[i]
        shown = reported[i][0][reported[i][2] == cls]
        candidates, candidate_scores = boxes[classes == cls], scores[classes == cls]
        for gt in f.boxes[f.classes == cls]:
            if len(shown) and float(_best_iou(gt, shown).max()) >= MATCH:
                continue
            near = candidate_scores[_best_iou(gt, candidates) >= MATCH]
            best = float(near.max()) if len(near) else None
            out.append({"frame": i, "box": gt.tolist(), "score": best, "green": shown.tolist()})
    return out


def unmarked(
    frames: list[Frame], preds: list[Prediction], thresholds: dict[str, float]
) -> dict[str, Any]:
    """Per class, the false alarms the node would report (at the class's threshold), by
    frame name, boxes in source pixels: where the masks may have left an object out
    (``road_eval --unmarked FILE``; ``train_road --ignore-unmarked FILE`` reads it)."""
    out: dict[str, Any] = {"thresholds": thresholds}
    for cls, name in enumerate(CLASSES):
        by_frame: dict[str, list[list[float]]] = {}
        for item in false_alarms(frames, preds, cls):
            if item["score"] < thresholds[name]:
                break  # highest score first
            box = [round(v, 1) for v in item["box"]]
            by_frame.setdefault(frames[item["frame"]].name, []).append(box)
        out[name] = by_frame
    return out


def spread(items: list[Item], count: int) -> list[Item]:
    """`count` items evenly over the list (all of them when there are fewer)."""
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[k] for k in picks]


def tile(frame: Frame, image: npt.NDArray[Any], item: Item, cls: int, label: str) -> Any:
    """A crop of `image` around the item's box (twice its size, at least CONTEXT pixels
    wide), the frame's objects of `cls` in red, the item's ``green`` boxes in green,
    scaled to TILE with `label` written in."""
    h, w = image.shape[:2]
    view = image.copy()
    for box in frame.boxes[frame.classes == cls]:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(view, (x1 - 1, y1 - 1), (x2 + 1, y2 + 1), GROUND_TRUTH, 1)
    for box in item["green"]:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(view, (x1, y1), (x2, y2), PREDICTED, 1)
    x1, y1, x2, y2 = (round(float(v)) for v in item["box"])
    cw = min(w, max(CONTEXT, 2 * (x2 - x1), int(2 * (y2 - y1) * TILE[0] / TILE[1])))
    ch = min(h, int(cw * TILE[1] / TILE[0]))
    left = max(0, min(w - cw, (x1 + x2) // 2 - cw // 2))
    top = max(0, min(h - ch, (y1 + y2) // 2 - ch // 2))
    crop = cv2.resize(view[top : top + ch, left : left + cw], TILE, interpolation=cv2.INTER_AREA)
    cv2.putText(crop, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
    cv2.putText(crop, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT, 1)
    return crop


def sheet(frames: list[Frame], items: list[Item], cls: int) -> Any:
    """The tiles of `items` in rows of COLUMNS, numbered from 0 as listed."""
    tiles = []
    for k, item in enumerate(items):
        f = frames[item["frame"]]
        image = cv2.imread(str(f.image), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"{f.image}: cannot be read")
        score = "-" if item["score"] is None else f"{item['score']:.2f}"
        tiles.append(tile(f, image, item, cls, f"{k} {score} {highway(f)}"))
    blank = np.zeros((TILE[1], TILE[0], 3), np.uint8)
    tiles += [blank] * (-len(tiles) % COLUMNS)
    rows = [np.hstack(tiles[r : r + COLUMNS]) for r in range(0, len(tiles), COLUMNS)]
    return np.vstack(rows) if rows else blank


def write_sheets(
    out: Path,
    frames: list[Frame],
    preds: list[Prediction],
    thresholds: dict[str, float],
    regions: tuple[int, ...] | list[int] = (),
    *,
    count: int = 36,
) -> dict[str, Any]:
    """`CLASS-false-alarms.jpg` and `CLASS-misses.jpg` per class in `out` (the top `count`
    false alarms, `count` misses spread over the split) and `sheets.json`, which lists
    each tile's frame, box and score; returns that listing."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"{out}: cannot be made ({exc.strerror})") from None
    listing: dict[str, Any] = {}
    for cls, name in enumerate(CLASSES):
        alarms = false_alarms(frames, preds, cls)
        missed = misses(frames, preds, cls, thresholds, regions)
        entry: dict[str, Any] = {"false_alarms_total": len(alarms), "misses_total": len(missed)}
        for kind, items in (("false_alarms", alarms[:count]), ("misses", spread(missed, count))):
            path = out / f"{name}-{kind.replace('_', '-')}.jpg"
            if not cv2.imwrite(str(path), sheet(frames, items, cls)):
                raise SystemExit(f"{path}: cannot be written")
            entry[kind] = [
                {
                    "tile": k,
                    "frame": frames[item["frame"]].name,
                    "box": [round(v, 1) for v in item["box"]],
                    "score": None if item["score"] is None else round(item["score"], 3),
                }
                for k, item in enumerate(items)
            ]
        listing[name] = entry
    (out / "sheets.json").write_text(json.dumps(listing, indent=1))
    return listing
