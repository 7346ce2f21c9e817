"""How a driver asks the node's models about an image, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class FoundObject:
    """One object a model found in an image, in that image's pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2


class Inference(Protocol):
    """The node's models, by name (the ``models`` section of the config)."""

    async def infer(self, model: str, image: Any) -> list[FoundObject]:
        """Run model `model` on a BGR image (a numpy array, H x W x 3) off the event
        loop; raises `LookupError` with the reason when the model is not available."""
        ...
