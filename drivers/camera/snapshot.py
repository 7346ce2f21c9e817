"""JPEG snapshots of frames with detections (OpenCV; loaded only with a camera)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import cv2
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from drivers.api import FoundObject
    from drivers.camera.driver import SnapshotConfig


def encode_snapshot(
    frame: npt.NDArray[np.uint8], found: list[FoundObject], cfg: SnapshotConfig
) -> bytes | None:
    """A JPEG of `frame` under `cfg.max_bytes`, boxes drawn (blocking: run in a thread)."""
    image = frame
    scale = 1.0
    if image.shape[1] > cfg.max_width:
        scale = cfg.max_width / image.shape[1]
        image = cast(
            npt.NDArray[np.uint8],
            cv2.resize(image, (cfg.max_width, round(image.shape[0] * scale))),
        )
    else:
        image = image.copy()
    if cfg.draw_boxes:
        for f in found:
            x1, y1, x2, y2 = (round(v * scale) for v in f.box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 255), 2)
            cv2.putText(
                image,
                f"{f.label} {f.score:.2f}",
                (x1, max(12, y1 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (0, 0, 255),
                1,
            )
    quality = cfg.quality
    while True:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            return None
        if len(data) <= cfg.max_bytes:
            return bytes(data)
        if quality > 40:
            quality -= 15
        elif image.shape[1] > 320:
            image = cast(
                npt.NDArray[np.uint8],
                cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)),
            )
        else:
            return None
