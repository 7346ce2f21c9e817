"""Synthetic aerial tiles: deterministic, large, with small objects where the boxes say."""

from __future__ import annotations

import numpy as np

from firmware_sim.aerial import CLASSES, tile


def test_tiles_are_deterministic_large_and_full_of_small_objects() -> None:
    a, b, c = tile(7), tile(7), tile(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (2048, 2048, 3)
    assert set(a.classes.tolist()) == set(range(len(CLASSES)))
    sides = np.maximum(a.boxes[:, 2] - a.boxes[:, 0], a.boxes[:, 3] - a.boxes[:, 1])
    assert (sides < 32).mean() > 0.8  # the objects tiling exists for
    assert (a.boxes[:, :2] >= 0).all() and (a.boxes[:, 2:] <= 2048).all()
    # boxes never overlap: each object is one ground-truth box
    for i, p in enumerate(a.boxes):
        for q in a.boxes[i + 1 :]:
            assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]


def test_objects_stand_out_from_their_surroundings() -> None:
    t = tile(3)
    img = t.image.astype(np.float32)
    for box, cls in zip(t.boxes, t.classes, strict=True):
        x1, y1, x2, y2 = (round(v) for v in box)
        ring = np.zeros(img.shape[:2], bool)
        ring[max(0, y1 - 5) : y2 + 5, max(0, x1 - 5) : x2 + 5] = True
        ring[y1:y2, x1:x2] = False
        inside = img[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
        around = img[ring].mean(axis=0)
        assert np.abs(inside - around).sum() > 15, (CLASSES[cls], box, inside, around)
