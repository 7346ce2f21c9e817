"""Motion gate: skip inference while nothing moves (frame differencing at low resolution)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt


class MotionGate:
    """`changed(frame)` is true when enough of the (unmasked) picture changed since the
    last frame that was let through."""

    def __init__(
        self,
        *,
        threshold: int = 25,
        min_area: float = 0.002,
        width: int = 160,
        masks: Sequence[Sequence[tuple[float, float]]] = (),
    ) -> None:
        self.threshold = threshold
        self.min_area = min_area
        self.width = width
        self.masks = [list(m) for m in masks]  # polygons in 0-1 frame coordinates
        self._previous: npt.NDArray[np.uint8] | None = None
        self._mask: npt.NDArray[np.uint8] | None = None
        self.passed = 0
        self.skipped = 0

    def _small(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        h, w = frame.shape[:2]
        height = max(1, round(h * self.width / w))
        gray = cv2.cvtColor(cv2.resize(frame, (self.width, height)), cv2.COLOR_BGR2GRAY)
        return cast(npt.NDArray[np.uint8], cv2.GaussianBlur(gray, (5, 5), 0))

    def _ignore(self, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        if self._mask is None or self._mask.shape != shape:
            mask = np.full(shape, 255, np.uint8)
            for poly in self.masks:
                pts = np.asarray([(x * shape[1], y * shape[0]) for x, y in poly], np.int32)
                cv2.fillPoly(mask, [pts], 0)
            self._mask = mask
        return self._mask

    def changed(self, frame: npt.NDArray[np.uint8]) -> bool:
        small = self._small(frame)
        previous = self._previous
        if previous is None or previous.shape != small.shape:
            self._previous = small
            self.passed += 1
            return True
        diff = cv2.absdiff(small, previous)
        _, moving = cv2.threshold(diff, self.threshold, 255, cv2.THRESH_BINARY)
        if self.masks:
            moving = cv2.bitwise_and(moving, self._ignore(moving.shape))
        fraction = cv2.countNonZero(moving) / moving.size
        if fraction >= self.min_area:
            self._previous = small
            self.passed += 1
            return True
        self.skipped += 1
        return False
