"""The contract of custom output decoders (entry-point group ``cityneuron.models.decoders``).

A decoder turns a model's raw outputs into detections. It is a callable with an
``api_version`` attribute (``"MAJOR.MINOR"``), called with the list of output arrays and the
model package's description (a mapping from its model.yaml), returning a list of
``(label_index, score, x1, y1, x2, y2)`` tuples in model-input pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

DECODER_API_VERSION = "1.0"

Box = tuple[int, float, float, float, float, float]


class Decoder(Protocol):
    api_version: str

    def __call__(self, outputs: Sequence[Any], spec: Mapping[str, Any]) -> list[Box]:
        """Detections from raw outputs."""
        ...
