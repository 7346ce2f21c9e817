"""YOLOv7's end-to-end ONNX export (``export.py --grid --end2end``, ONNX NMS inside).

Its one output is ``[N, 7]``: batch index, x1, y1, x2, y2, class, score, in input
pixels, already through NMS; N is the number of detections (0 to max-wh). The layout
is not one of cityneuron's built-in decoders, so it comes as a plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.api import DECODER_API_VERSION, Decoded, DecodeError, ModelSpec, finish


def yolov7_nms(outputs: Sequence[Any], spec: ModelSpec) -> Decoded:
    """[N, 7] rows of (batch, x1, y1, x2, y2, class, score) -> `Decoded`."""
    out = np.asarray(outputs[0], np.float32)
    if out.ndim != 2 or out.shape[1] != 7:
        raise DecodeError(f"yolov7_nms output must be [N, 7], got {list(out.shape)}")
    rows = out[out[:, 0] == 0]  # the node sends one image at a time
    classes = rows[:, 5].round().astype(np.int32)
    return finish(spec, rows[:, 1:5], rows[:, 6], classes, outputs)


yolov7_nms.api_version = DECODER_API_VERSION  # type: ignore[attr-defined]
