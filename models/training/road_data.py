"""The road-dnit frames as detection data: masks turned into boxes.

Classes: 0 = crack (a crack region), 1 = pothole.

- Pothole: one box per 8-connected blob of the POTHOLE mask, blobs under
  ``POTHOLE_MIN_AREA`` pixels (at 800x500) dropped as annotation specks.
- Crack region: the CRACK mask is dilated with an elliptical kernel of
  ``CRACK_JOIN`` pixels (at 800x500), so that crack fragments closer than about that
  distance join; every connected component of the dilated mask is one region, and its box
  is the bounding box of the *undilated* crack pixels inside it. Regions with fewer than
  ``CRACK_MIN_PIXELS`` crack pixels are dropped. A maintenance crew treats such a region as
  one job: this is the unit the road model reports and the unit its F1 is measured on.

Only numpy and OpenCV: the evaluation (``models.training.road_eval``) runs without torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

CLASSES = ("crack", "pothole")
SOURCE_SIZE = (800, 500)
POTHOLE_MIN_AREA = 40
CRACK_JOIN = 41
CRACK_MIN_PIXELS = 150


@dataclass(frozen=True, slots=True)
class Frame:
    name: str
    image: Path
    boxes: npt.NDArray[np.float32]  # [N, 4] x1 y1 x2 y2 in source pixels
    classes: npt.NDArray[np.int64]  # [N]


def _components(
    mask: npt.NDArray[np.uint8],
) -> tuple[int, npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return n, np.asarray(labels, np.int32), np.asarray(stats, np.int32)


def pothole_boxes(mask: npt.NDArray[np.uint8]) -> list[tuple[float, float, float, float]]:
    n, _, stats = _components((mask > 127).astype(np.uint8))
    out = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area >= POTHOLE_MIN_AREA:
            out.append((float(x), float(y), float(x + w), float(y + h)))
    return out


def crack_boxes(mask: npt.NDArray[np.uint8]) -> list[tuple[float, float, float, float]]:
    crack = (mask > 127).astype(np.uint8)
    if not crack.any():
        return []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (CRACK_JOIN, CRACK_JOIN))
    n, labels, _ = _components(np.asarray(cv2.dilate(crack, kernel), np.uint8))
    out = []
    for i in range(1, n):
        ys, xs = np.nonzero((labels == i) & (crack > 0))
        if len(xs) >= CRACK_MIN_PIXELS:
            out.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    return out


def split_names(root: Path, split: str, hold_out: Sequence[str] = ()) -> list[str]:
    """The frame names of `root/<split>.txt`. ``hold_out`` names stretches of the training
    highways (a part of the frame name, e.g. the segment ``290RS070691``): their frames
    leave ``train`` and join ``val``, so that val also has the training roads' kind of
    potholes (val.txt's DF highways have few small ones). ``test`` takes none."""
    names = [_name(line) for line in _listing(root, split).read_text().split()]
    if not hold_out:
        return names
    if split == "test":
        raise SystemExit("--hold-out: test.txt stays as it is (held-out frames come from train)")
    train = names if split == "train" else split_names(root, "train")
    held: dict[str, None] = {}  # ordered, without repeats
    for part in hold_out:
        found = [n for n in train if part in n]
        if not found:
            raise SystemExit(f"--hold-out {part}: no frame of train.txt has that in its name")
        held |= dict.fromkeys(found)
    if split == "train":
        return [n for n in names if n not in held]
    return names + [n for n in held if n not in names]


def add_hold_out(ap: argparse.ArgumentParser) -> None:
    """The ``--hold-out SEGMENT`` option of the recipes (see `split_names`)."""
    ap.add_argument(
        "--hold-out",
        action="append",
        default=[],
        metavar="SEGMENT",
        help="the train.txt frames whose name contains SEGMENT (e.g. the RS-290 stretch "
        "290RS070691) leave train and join val (repeatable); every step of one choice "
        "(training, ensemble, evaluation on val) takes the same",
    )


def _listing(root: Path, split: str) -> Path:
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise SystemExit(f"{listing}: not found (is {root} the road-dnit folder?)")
    return listing


def _name(line: str) -> str:
    name = Path(line).name
    for suffix in ("_RAW.jpg", "_RAW"):
        name = name.removesuffix(suffix)
    return name


def load_split(root: Path, split: str, hold_out: Sequence[str] = ()) -> list[Frame]:
    """The frames listed in `root/<split>.txt` with their boxes (``hold_out``: see
    `split_names`)."""
    frames = []
    for name in split_names(root, split, hold_out):
        d = root / "images" / name
        image = d / f"{name}_RAW.jpg"
        crack = cv2.imread(str(d / f"{name}_CRACK.png"), cv2.IMREAD_GRAYSCALE)
        pothole = cv2.imread(str(d / f"{name}_POTHOLE.png"), cv2.IMREAD_GRAYSCALE)
        if crack is None or pothole is None or not image.is_file():
            raise SystemExit(f"{d}: image or masks missing")
        crack_u8, pothole_u8 = np.asarray(crack, np.uint8), np.asarray(pothole, np.uint8)
        boxes = [(b, 0) for b in crack_boxes(crack_u8)]
        boxes += [(b, 1) for b in pothole_boxes(pothole_u8)]
        frames.append(
            Frame(
                name,
                image,
                np.asarray([b for b, _ in boxes], np.float32).reshape(-1, 4),
                np.asarray([c for _, c in boxes], np.int64),
            )
        )
    return frames
