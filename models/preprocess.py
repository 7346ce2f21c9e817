"""Frames (OpenCV BGR uint8 images) to input tensors, and boxes back to frame pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from models.package import InputSpec


@dataclass(frozen=True, slots=True)
class Transform:
    """How input-tensor pixels map back to frame pixels."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """[N, 4] x1, y1, x2, y2 in input pixels -> frame pixels."""
        out = boxes.copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        return out


def prepare(
    image: npt.NDArray[np.uint8], spec: InputSpec
) -> tuple[npt.NDArray[np.generic], Transform]:
    """The input tensor (batch of one) for a BGR frame, and the way back."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image.shape}")
    h, w = image.shape[:2]
    tw, th = spec.size
    if spec.resize == "stretch":
        resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)
        transform = Transform(tw / w, th / h, 0.0, 0.0)
    else:
        ratio = min(tw / w, th / h)
        nw, nh = round(w * ratio), round(h * ratio)
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        px, py = (tw - nw) // 2, (th - nh) // 2
        resized = cv2.copyMakeBorder(
            resized,
            py,
            th - nh - py,
            px,
            tw - nw - px,
            cv2.BORDER_CONSTANT,
            value=(spec.pad_value,) * 3,
        )
        transform = Transform(ratio, ratio, float(px), float(py))
    if spec.color == "RGB":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    if spec.dtype == "uint8":
        tensor: npt.NDArray[np.generic] = resized
    else:
        x: npt.NDArray[np.float32] = resized.astype(np.float32) * np.float32(spec.scale)
        if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
            x = np.subtract(x, np.asarray(spec.mean, np.float32), dtype=np.float32)
            x = np.divide(x, np.asarray(spec.std, np.float32), dtype=np.float32)
        tensor = x.astype(np.float16) if spec.dtype == "float16" else x
    if spec.layout == "NCHW":
        tensor = np.transpose(tensor, (2, 0, 1))
    return np.ascontiguousarray(tensor[np.newaxis]), transform
