"""Output decoders for the common model layouts, and class-aware NMS.

All return detections as arrays: boxes [N, 4] (x1, y1, x2, y2 in input pixels), scores
[N] and class indices [N], after score filtering and NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from models.api import Decoded, DecodeError, DecodeFn
from models.package import ModelSpec

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


def _xywh_to_xyxy(b: F32) -> F32:
    out = np.empty_like(b)
    out[:, 0] = b[:, 0] - b[:, 2] / 2
    out[:, 1] = b[:, 1] - b[:, 3] / 2
    out[:, 2] = b[:, 0] + b[:, 2] / 2
    out[:, 3] = b[:, 1] + b[:, 3] / 2
    return out


def _thresholds(spec: ModelSpec) -> F32:
    return np.asarray([spec.score_threshold(i) for i in range(len(spec.classes))], np.float32)


def nms(d: Decoded, iou: float, max_detections: int) -> Decoded:
    """Class-aware non-maximum suppression (boxes of different classes never suppress
    each other), highest scores first, at most `max_detections` kept."""
    if len(d) == 0:
        return d
    xywh = np.column_stack(
        [d.boxes[:, 0], d.boxes[:, 1], d.boxes[:, 2] - d.boxes[:, 0], d.boxes[:, 3] - d.boxes[:, 1]]
    )
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), d.scores.tolist(), d.classes.tolist(), 0.0, iou, top_k=max_detections
    )
    idx = np.asarray(keep, np.int64).reshape(-1)
    idx = idx[np.argsort(-d.scores[idx], kind="stable")][:max_detections]
    return Decoded(d.boxes[idx], d.scores[idx], d.classes[idx])


def merge_regions(d: Decoded, classes: Sequence[int]) -> Decoded:
    """Overlapping boxes of each class in `classes` joined into one box (their union, the
    highest score), until no two of them overlap; other classes untouched."""
    if len(d) == 0 or not classes:
        return d
    joined = np.isin(d.classes, classes)
    out_boxes, out_scores, out_classes = (
        [d.boxes[~joined]],
        [d.scores[~joined]],
        [d.classes[~joined]],
    )
    for c in np.unique(d.classes[joined]):
        sel = d.classes == c
        regions = _join(
            [(b.copy(), float(s)) for b, s in zip(d.boxes[sel], d.scores[sel], strict=True)]
        )
        out_boxes.append(np.asarray([r[0] for r in regions], np.float32).reshape(-1, 4))
        out_scores.append(np.asarray([r[1] for r in regions], np.float32))
        out_classes.append(np.full(len(regions), c, np.int32))
    scores = np.concatenate(out_scores)
    order = np.argsort(-scores, kind="stable")
    return Decoded(
        np.concatenate(out_boxes)[order].astype(np.float32),
        scores[order],
        np.concatenate(out_classes)[order].astype(np.int32),
    )


def _join(regions: list[tuple[F32, float]]) -> list[tuple[F32, float]]:
    """Join overlapping (box, score) pairs until none overlap."""
    while True:
        pair = next(
            (
                (i, j)
                for i in range(len(regions))
                for j in range(i + 1, len(regions))
                if _overlap(regions[i][0], regions[j][0])
            ),
            None,
        )
        if pair is None:
            return regions
        (a, sa), (b, sb) = regions[pair[0]], regions.pop(pair[1])
        union = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
        regions[pair[0]] = (union, max(sa, sb))


def _overlap(a: F32, b: F32) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def region_classes(spec: ModelSpec) -> list[int]:
    """The label indices of ``regions`` (`finish` maps classes to labels before NMS)."""
    return [spec.label_names.index(name) for name in spec.regions]


def mask_groups(prob: F32, threshold: float, join: int, min_pixels: int) -> tuple[F32, F32]:
    """Groups of the pixels of a probability map `prob` [h, w] at or above `threshold`:
    parts closer than `join` pixels (an elliptical dilation) are one group; groups of fewer
    than `min_pixels` pixels are dropped. Returns each group's box (x1, y1, x2, y2: the
    bounding box of its own pixels, not of the dilation) and score (its highest probability)."""
    ys, xs = np.nonzero(prob >= threshold)
    if not len(xs):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    # grouped within the pixels' extent plus the join distance: the same groups as on the
    # whole map (nothing outside can join them), a fraction of the work on most frames
    h, w = prob.shape
    x0, y0 = max(int(xs.min()) - join, 0), max(int(ys.min()) - join, 0)
    x1, y1 = min(int(xs.max()) + join + 1, w), min(int(ys.max()) + join + 1, h)
    on = np.zeros((y1 - y0, x1 - x0), np.uint8)
    on[ys - y0, xs - x0] = 1
    if join > 1:
        on = np.asarray(
            cv2.dilate(on, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (join, join))), np.uint8
        )
    _, labels = cv2.connectedComponents(on, connectivity=8)
    group = np.asarray(labels, np.int64)[ys - y0, xs - x0]
    order = np.argsort(group, kind="stable")
    group, xs, ys = group[order], xs[order], ys[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])  # one run per group
    count = np.diff(np.r_[starts, len(group)])
    boxes = np.stack(
        [
            np.minimum.reduceat(xs, starts),
            np.minimum.reduceat(ys, starts),
            np.maximum.reduceat(xs, starts) + 1,
            np.maximum.reduceat(ys, starts) + 1,
        ],
        1,
    ).astype(np.float32)
    best = np.maximum.reduceat(prob[ys, xs], starts).astype(np.float32)
    keep = count >= min_pixels
    return boxes[keep], best[keep]


def mask_detections(outputs: Sequence[npt.NDArray[np.generic]], spec: ModelSpec) -> Decoded:
    """The detections of ``output.masks``: for each entry, its output's probability map of
    each of its classes scaled to the input size, then ``mask_groups``."""
    size = spec.input.size
    c = len(spec.classes)
    parts = []
    for masks in spec.output.mask_outputs:
        if masks.output >= len(outputs):
            raise DecodeError(
                f"model.yaml reads masks from output {masks.output}; the model has "
                f"{len(outputs)} output(s)"
            )
        prob = np.asarray(outputs[masks.output], np.float32)
        if prob.ndim != 4 or prob.shape[0] != 1 or prob.shape[1] != c:
            raise DecodeError(
                f"mask output {masks.output} must be [1, {c}, H, W], got {list(prob.shape)}"
            )
        for name in masks.classes:
            cls = spec.classes.index(name)
            if prob[0, cls].max() < masks.threshold:  # nor can any pixel scaled from it
                continue
            scaled = cv2.resize(prob[0, cls], size, interpolation=cv2.INTER_LINEAR)
            boxes, scores = mask_groups(scaled, masks.threshold, masks.join, masks.min_pixels)
            parts.append(Decoded(boxes, scores, np.full(len(scores), cls, np.int32)))
    if not parts:
        return Decoded.empty()
    return Decoded(
        np.concatenate([p.boxes for p in parts]),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.classes for p in parts]),
    )


def finish(
    spec: ModelSpec,
    boxes: F32,
    scores: F32,
    classes: I32,
    outputs: Sequence[npt.NDArray[np.generic]],
) -> Decoded:
    if len(classes) and (classes.min() < 0 or classes.max() >= len(spec.classes)):
        raise DecodeError(
            f"class index {int(classes.max())} outside the {len(spec.classes)} classes of "
            "model.yaml"
        )
    if spec.output.boxes_normalized:
        boxes = boxes * np.asarray([*spec.input.size, *spec.input.size], np.float32)
    if spec.output.masks is not None:  # these classes come from the mask, not the boxes
        named = [
            spec.classes.index(n)
            for m in spec.output.mask_outputs
            if not m.with_boxes
            for n in m.classes
        ]
        from_boxes = ~np.isin(classes, named)
        m = mask_detections(outputs, spec)
        boxes = np.concatenate([boxes[from_boxes], m.boxes])
        scores = np.concatenate([scores[from_boxes], m.scores])
        classes = np.concatenate([classes[from_boxes], m.classes])
    keep = scores >= _thresholds(spec)[classes] if len(classes) else np.zeros(0, bool)
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    # from here on classes are labels: classes that share one are one class for NMS
    labels = np.asarray(spec.label_index, np.int32)[classes[finite]]
    d = Decoded(
        boxes[finite].astype(np.float32),
        scores[finite].astype(np.float32),
        labels.astype(np.int32),
    )
    return merge_regions(nms(d, spec.thresholds.iou, spec.max_detections), region_classes(spec))


def yolov5(outputs: Sequence[npt.NDArray[np.generic]], spec: ModelSpec) -> Decoded:
    """[1, N, 5 + C]: cx, cy, w, h, objectness, class probabilities."""
    out = np.asarray(outputs[0], np.float32)
    c = len(spec.classes)
    if out.ndim != 3 or out.shape[0] != 1 or out.shape[2] != 5 + c:
        raise DecodeError(f"yolov5 output must be [1, N, {5 + c}], got {list(out.shape)}")
    rows = out[0]
    rows = rows[rows[:, 4] >= _thresholds(spec).min()]  # class score <= objectness
    cls_scores = rows[:, 5:] * rows[:, 4:5]
    classes = cls_scores.argmax(axis=1).astype(np.int32)
    scores = cls_scores[np.arange(len(rows)), classes]
    return finish(spec, _xywh_to_xyxy(rows[:, :4]), scores, classes, outputs)


def yolov8(outputs: Sequence[npt.NDArray[np.generic]], spec: ModelSpec) -> Decoded:
    """[1, 4 + C, N] (YOLOv8 to v11): cx, cy, w, h, class scores; no objectness."""
    out = np.asarray(outputs[0], np.float32)
    c = len(spec.classes)
    if out.ndim != 3 or out.shape[0] != 1 or out.shape[1] != 4 + c:
        raise DecodeError(f"yolov8 output must be [1, {4 + c}, N], got {list(out.shape)}")
    cls_scores = out[0, 4:]  # [C, N]
    classes = cls_scores.argmax(axis=0).astype(np.int32)
    scores = np.take_along_axis(cls_scores, classes[None], axis=0)[0]
    # Most of the N candidates score near zero: drop them before building boxes.
    cand = np.flatnonzero(scores >= _thresholds(spec).min())
    boxes = _xywh_to_xyxy(out[0, :4][:, cand].T)
    return finish(spec, boxes, scores[cand], classes[cand], outputs)


def end2end(outputs: Sequence[npt.NDArray[np.generic]], spec: ModelSpec) -> Decoded:
    """[1, K, 6]: x1, y1, x2, y2, score, class (NMS done inside the model)."""
    out = np.asarray(outputs[0], np.float32)
    if out.ndim != 3 or out.shape[0] != 1 or out.shape[2] != 6:
        raise DecodeError(f"end2end output must be [1, K, 6], got {list(out.shape)}")
    rows = out[0]
    classes = rows[:, 5].round().astype(np.int32)
    return finish(spec, rows[:, :4], rows[:, 4], classes, outputs)


def classification(
    outputs: Sequence[npt.NDArray[np.generic]], spec: ModelSpec
) -> tuple[int, float, F32]:
    """[1, C] logits or probabilities -> (best class, its probability, all probabilities)."""
    out = np.asarray(outputs[0], np.float32).reshape(-1)
    if out.shape[0] != len(spec.classes):
        raise DecodeError(
            f"classification output has {out.shape[0]} values for {len(spec.classes)} classes"
        )
    logits = spec.output.logits
    if logits is None:
        logits = bool(out.min() < 0 or out.max() > 1 or abs(float(out.sum()) - 1) > 1e-3)
    probs = out
    if logits:
        e = np.exp(out - out.max())
        probs = (e / e.sum()).astype(np.float32)
    best = int(probs.argmax())
    return best, float(probs[best]), probs


BUILTIN_DECODERS: dict[str, DecodeFn] = {
    "yolov5": yolov5,
    "yolov8": yolov8,
    "end2end": end2end,
}
"""The detector decoders that ship; ``classification`` is the classifier's own path."""
