"""Train the aerial small-object detector on synthetic tiles, export it, and evaluate it.

    .venv-train/bin/python -m models.training.train_aerial --steps 700 --out models/zoo/aerial
    .venv/bin/python -m models.training.train_aerial --evaluate models/zoo/aerial

Training tiles are ``firmware_sim.aerial.tile(seed)`` for seeds 0..``--tiles``-1; the score
thresholds are picked on seeds 1000-1003; the evaluation uses seeds 2000-2011, never seen
before. The network (``models.training.road_net``) is trained on 384x384 crops at the tiles'
native resolution, since the runtime runs it tile by tile (``tiling`` in model.yaml: 512 px
tiles, 20 % overlap, merged by NMS).

``--evaluate`` (no torch needed) loads the package through ``models.runtime`` exactly as a
node does, once with its tiling and once on the whole 2048x2048 image shrunk to the input
size, and reports recall, precision and F1 per class, recall for objects under 32 px, and
the time per tile.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_sim.aerial import CLASSES, tile
from models.training.road_eval import iou_matrix

SIZE = 512
CROP = 384
TRAIN_SEEDS = range(48)
VAL_SEEDS = range(1000, 1004)
TEST_SEEDS = range(2000, 2012)
SMALL = 32
F32 = npt.NDArray[np.float32]


def match(
    gt: F32, gt_cls: npt.NDArray[np.int64], boxes: F32, classes: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Greedy IoU >= 0.5 matching per class: (found per GT box, correct per prediction)."""
    found = np.zeros(len(gt), bool)
    correct = np.zeros(len(boxes), bool)
    for c in range(len(CLASSES)):
        gi, pi = np.flatnonzero(gt_cls == c), np.flatnonzero(classes == c)
        ious = iou_matrix(boxes[pi], gt[gi])
        for row, p in enumerate(pi):
            if len(gi) == 0:
                break
            cand = np.where(found[gi], -1.0, ious[row])
            j = int(cand.argmax())
            if cand[j] >= 0.5:
                found[gi[j]] = True
                correct[p] = True
    return found, correct


def figures(results: list[tuple[Any, F32, F32, npt.NDArray[np.int64]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    founds, corrects, gts, gt_sizes, pred_cls, gt_cls_all = [], [], [], [], [], []
    for t, boxes, _, classes in results:
        found, correct = match(t.boxes, t.classes, boxes, classes)
        founds.append(found)
        corrects.append(correct)
        gt_sizes.append(np.maximum(t.boxes[:, 2] - t.boxes[:, 0], t.boxes[:, 3] - t.boxes[:, 1]))
        gt_cls_all.append(t.classes)
        pred_cls.append(classes)
        gts.append(len(t.boxes))
    found, correct = np.concatenate(founds), np.concatenate(corrects)
    sizes, gcls, pcls = (
        np.concatenate(gt_sizes),
        np.concatenate(gt_cls_all),
        np.concatenate(pred_cls),
    )
    for c, name in enumerate(CLASSES):
        recall = float(found[gcls == c].mean()) if (gcls == c).any() else 0.0
        precision = float(correct[pcls == c].mean()) if (pcls == c).any() else 0.0
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        out[name] = {
            "recall": round(recall, 4),
            "precision": round(precision, 4),
            "f1": round(f1, 4),
            "objects": int((gcls == c).sum()),
        }
    small = sizes < SMALL
    out["small_objects"] = {
        "under_px": SMALL,
        "objects": int(small.sum()),
        "recall": round(float(found[small].mean()), 4),
    }
    out["all"] = {
        "recall": round(float(found.mean()), 4),
        "precision": round(float(correct.mean()) if len(correct) else 0.0, 4),
    }
    return out


def evaluate(package: Path) -> dict[str, Any]:
    from models.runtime import LoadedModel  # noqa: PLC0415 - onnxruntime only here

    model = LoadedModel.load(package, threads=1)
    tiled_spec = model.spec
    whole_spec = tiled_spec.model_copy(
        update={"tiling": tiled_spec.tiling.model_copy(update={"enabled": False})}
    )
    report: dict[str, Any] = {"seeds": f"{TEST_SEEDS.start}-{TEST_SEEDS.stop - 1}"}
    for mode, spec in (("tiled", tiled_spec), ("whole_image", whole_spec)):
        model.spec = spec
        results = []
        times = []
        for seed in TEST_SEEDS:
            t = tile(seed)
            started = time.perf_counter()
            found = model.run(t.image)
            times.append(time.perf_counter() - started)
            results.append(
                (
                    t,
                    np.asarray([f.box for f in found], np.float32).reshape(-1, 4),
                    np.asarray([f.score for f in found], np.float32),
                    np.asarray([CLASSES.index(f.label) for f in found], np.int64),
                )
            )
        report[mode] = figures(results)
        report[mode]["seconds_per_2048_image"] = round(statistics.fmean(times), 3)
    model.close()
    return report


def train(args: argparse.Namespace) -> None:  # noqa: PLR0915 - a training script
    import torch  # noqa: PLC0415 - training only
    import torch.nn.functional as F  # noqa: N812, PLC0415

    from models.training.road_net import STRIDE, Exported, RoadNet  # noqa: PLC0415
    from models.training.train_road import export, focal, targets  # noqa: PLC0415

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tiles = [tile(s) for s in range(args.tiles)]
    val = [tile(s) for s in VAL_SEEDS]
    print(f"{len(tiles)} training tiles, {len(val)} validation tiles", flush=True)
    net = RoadNet(len(CLASSES), args.width).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    g = CROP // STRIDE

    def sample() -> tuple[npt.NDArray[np.uint8], F32, npt.NDArray[np.int64]]:
        t = rng.choice(tiles)
        if len(t.boxes) and rng.random() < 0.8:
            b = t.boxes[rng.randrange(len(t.boxes))]
            x0 = int(np.clip((b[0] + b[2]) / 2 - rng.uniform(0.1, 0.9) * CROP, 0, 2048 - CROP))
            y0 = int(np.clip((b[1] + b[3]) / 2 - rng.uniform(0.1, 0.9) * CROP, 0, 2048 - CROP))
        else:
            x0, y0 = rng.randrange(2048 - CROP), rng.randrange(2048 - CROP)
        img = t.image[y0 : y0 + CROP, x0 : x0 + CROP, ::-1]  # RGB
        boxes = t.boxes - np.asarray([x0, y0, x0, y0], np.float32)
        inside = (
            (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= CROP) & (boxes[:, 3] <= CROP)
        )
        boxes, classes = boxes[inside], t.classes[inside]
        if rng.random() < 0.5:
            img = img[:, ::-1]
            boxes = boxes.copy()
            boxes[:, [0, 2]] = CROP - boxes[:, [2, 0]]
        if rng.random() < 0.5:
            img = img[::-1]
            boxes = boxes.copy()
            boxes[:, [1, 3]] = CROP - boxes[:, [3, 1]]
        x = img.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
        return np.ascontiguousarray(x.clip(0, 255).astype(np.uint8)), boxes, classes

    started = time.monotonic()
    for step in range(args.steps):
        imgs, heats, box_t, masks = [], [], [], []
        for _ in range(args.batch):
            img, b, kinds = sample()
            h, bx, m = targets(b, kinds, g, g, len(CLASSES))
            imgs.append(img)
            heats.append(h)
            box_t.append(bx)
            masks.append(m)
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255)
        heat_p, box_p = net(x.contiguous(memory_format=torch.channels_last))
        bt = torch.from_numpy(np.stack(box_t))
        mt = torch.from_numpy(np.stack(masks)).unsqueeze(1)
        n = mt.sum().clamp(min=1)
        off = (F.l1_loss(torch.sigmoid(box_p[:, :2]), bt[:, :2], reduction="none") * mt).sum() / n
        size = (F.l1_loss(box_p[:, 2:], bt[:, 2:], reduction="none") * mt).sum() / n
        loss = focal(heat_p, torch.from_numpy(np.stack(heats))) + off + size
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(
                f"step {step} loss {loss.item():.3f} {(time.monotonic() - started) / 60:.1f} min",
                flush=True,
            )

    # score thresholds: best F1 per class on the validation tiles (tiled, as deployed)
    net.eval()
    exported = Exported(net, SIZE, SIZE).eval()
    scores: dict[int, list[tuple[float, bool]]] = {c: [] for c in range(len(CLASSES))}
    totals = dict.fromkeys(range(len(CLASSES)), 0)
    from models.api import Decoded  # noqa: PLC0415
    from models.decoders import nms  # noqa: PLC0415

    with torch.no_grad():
        for t in val:
            parts = []
            for y in range(0, 2048 - SIZE + 1, int(SIZE * 0.8)):
                for x0 in range(0, 2048 - SIZE + 1, int(SIZE * 0.8)):
                    crop = np.ascontiguousarray(t.image[y : y + SIZE, x0 : x0 + SIZE, ::-1])
                    o = exported(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)[
                        0
                    ].numpy()
                    cls, conf = o[4:].argmax(0), o[4:].max(0)
                    keep = conf >= 0.05
                    cx, cy, w, h = o[:4, keep]
                    boxes = np.stack(
                        [cx - w / 2 + x0, cy - h / 2 + y, cx + w / 2 + x0, cy + h / 2 + y], 1
                    )
                    parts.append(
                        Decoded(boxes.astype(np.float32), conf[keep], cls[keep].astype(np.int32))
                    )
            merged = nms(
                Decoded(
                    np.concatenate([p.boxes for p in parts]),
                    np.concatenate([p.scores for p in parts]),
                    np.concatenate([p.classes for p in parts]),
                ),
                0.45,
                500,
            )
            _, correct = match(t.boxes, t.classes, merged.boxes, merged.classes.astype(np.int64))
            for s, k, ok in zip(merged.scores, merged.classes, correct, strict=True):
                scores[int(k)].append((float(s), bool(ok)))
            for c in range(len(CLASSES)):
                totals[c] += int((t.classes == c).sum())
    thresholds = {}
    for c, name in enumerate(CLASSES):
        ranked = sorted(scores[c], reverse=True)
        best, best_t, tp = 0.0, 0.3, 0
        for i, (s, ok) in enumerate(ranked):
            tp += ok
            p, r = tp / (i + 1), tp / max(totals[c], 1)
            f1 = 2 * p * r / max(p + r, 1e-9)
            if f1 > best:
                best, best_t = f1, s
        thresholds[name] = round(max(best_t, 0.05), 3)
    print("thresholds", thresholds, flush=True)
    export(
        net,
        args.out,
        thresholds,
        "Vehicles, debris/garbage piles and standing water in nadir drone imagery (about "
        "0.1 m/px), for tiled inference; trained on synthetic tiles (firmware_sim.aerial) by "
        "models/training/train_aerial.py.",
        name="aerial",
        classes=CLASSES,
        size=(SIZE, SIZE),
        extra={
            "tiling": {"enabled": True, "tile": [SIZE, SIZE], "overlap": 0.2, "full_frame": False},
            "max_detections": 300,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--evaluate", type=Path, help="evaluate this package (no training)")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--tiles", type=int, default=len(TRAIN_SEEDS))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("models/zoo/aerial"))
    args = ap.parse_args()
    if args.evaluate:
        print(json.dumps(evaluate(args.evaluate), indent=1))
    else:
        train(args)


if __name__ == "__main__":
    main()
