"""The SDK of output decoder plugins (entry-point group ``cityneuron.models.decoders``).

A decoder turns a model's raw outputs into detections, exactly as the built-in ones
(yolov5, yolov8, end2end) do: a callable with an ``api_version`` attribute
(``"MAJOR.MINOR"``), called with the list of output arrays and the package's `ModelSpec`
(its model.yaml), returning `Decoded` boxes in model-input pixels. Most decoders only
reshape their layout into boxes, scores and class indices and hand them to `finish`,
which applies the package's thresholds, masks, NMS and region merging like the built-ins.
A package uses a plugin by naming it in ``output.decoder``.

This module loads numpy only; OpenCV loads with `finish`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from models.package import ModelSpec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    F32 = npt.NDArray[np.float32]
    I32 = npt.NDArray[np.int32]

__all__ = [
    "DECODER_API_VERSION",
    "DecodeError",
    "DecodeFn",
    "Decoded",
    "Decoder",
    "ModelSpec",
    "finish",
]

DECODER_API_VERSION = "2.0"  # 2.0: decoders return Decoded, like the built-in ones


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a decoder found, in model-input pixels (arrays of one length N)."""

    boxes: F32  # [N, 4] x1 y1 x2 y2
    scores: F32  # [N]
    classes: I32  # [N] class indices (after `finish`: indices of the labels)

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> Decoded:
        import numpy as np  # noqa: PLC0415

        return Decoded(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))


class DecodeError(ValueError):
    """The model's output does not have the layout its model.yaml declares."""


DecodeFn = Callable[[Sequence[Any], ModelSpec], Decoded]
"""What every decoder is: raw outputs and the package's spec in, `Decoded` out."""


class Decoder(Protocol):
    """A decoder plugin: a `DecodeFn` that says which decoder API it was written for."""

    api_version: str

    def __call__(self, outputs: Sequence[Any], spec: ModelSpec) -> Decoded:
        """Detections from the raw outputs of one inference."""
        ...


def finish(
    spec: ModelSpec, boxes: F32, scores: F32, classes: I32, outputs: Sequence[Any]
) -> Decoded:
    """Candidates (input pixels, or 0-1 with ``boxes_normalized``) filtered as the package
    says: class range checked, per-class thresholds, masks, NMS, regions merged."""
    from models.decoders import finish as _finish  # noqa: PLC0415 - OpenCV, for NMS

    return _finish(spec, boxes, scores, classes, outputs)
