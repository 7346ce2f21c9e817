"""Model packages: a folder with ``model.onnx`` and ``model.yaml``.

Any model a user exports from a common YOLO tool runs by writing a model.yaml: the input
(size, layout, type, colour order, normalisation, resize), the output decoder (YOLOv5,
YOLOv8-v11, end-to-end, classification, or a plugin), the class names and thresholds. The
file's sha256 is checked at load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.kernel.yamlsource import SourceError, load_model, published_schema


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    size: tuple[int, int] = Field(description="Input width and height in pixels.")
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Tensor layout.")
    dtype: Literal["float32", "float16", "uint8"] = Field(
        default="float32", description="Tensor element type."
    )
    color: Literal["RGB", "BGR"] = Field(default="RGB", description="Channel order expected.")
    resize: Literal["letterbox", "stretch"] = Field(
        default="letterbox", description="letterbox keeps the aspect ratio and pads."
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="Letterbox padding grey.")
    scale: float = Field(default=1 / 255, description="Pixel values are multiplied by this...")
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="...then this is subtracted (per channel)..."
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="...and the result divided by this."
    )

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        if not all(16 <= s <= 8192 for s in self.size):
            raise ValueError("input size must be 16..8192 pixels per side")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")
        return self


class MaskOutput(_Model):
    """Classes found from a probability map rather than from boxes: regions such as a
    crack network, whose extent a mask gives better than a box regressor."""

    output: int = Field(
        default=1,
        ge=0,
        description="Index of the model output holding per-class probabilities, "
        "[1, C, h, w] over the input (h, w: the input size or a fraction of it).",
    )
    classes: list[str] = Field(
        min_length=1,
        description="Classes found from the mask (their boxes from the box output are "
        "ignored unless `with_boxes`): each group of pixels at or above `threshold` is one "
        "detection, its box the bounding box of those pixels, its score their highest "
        "probability.",
    )
    threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Probability from which a pixel is the class."
    )
    join: int = Field(
        default=0,
        ge=0,
        le=512,
        description="Parts closer than this many input pixels are one group (0: only "
        "touching parts).",
    )
    min_pixels: int = Field(
        default=1, ge=1, description="Groups with fewer pixels (input scale) are dropped."
    )
    with_boxes: bool = Field(
        default=False,
        description="Keep these classes' boxes from the box output as well: a group and a "
        "box that overlap are one detection after NMS (the higher-scored).",
    )


class OutputSpec(_Model):
    decoder: str = Field(
        description="yolov5 ([1,N,5+C]), yolov8 ([1,4+C,N], also v9-v11), end2end ([1,K,6]: "
        "x1,y1,x2,y2,score,class), classification ([1,C]), or a decoder plugin's name."
    )
    boxes_normalized: bool = Field(
        default=False, description="Box coordinates are 0-1 instead of input pixels."
    )
    logits: bool | None = Field(
        default=None, description="classification: apply softmax (None: detect it)."
    )
    masks: MaskOutput | list[MaskOutput] | None = Field(
        default=None,
        description="Detectors: classes read from a probability-map output (a list: "
        "different classes from different outputs or with different settings).",
    )

    @property
    def mask_outputs(self) -> list[MaskOutput]:
        """`masks` as a list (empty without masks)."""
        if self.masks is None:
            return []
        return self.masks if isinstance(self.masks, list) else [self.masks]


class Thresholds(_Model):
    score: float = Field(default=0.25, ge=0, le=1, description="Minimum detection score.")
    iou: float = Field(default=0.45, gt=0, le=1, description="NMS overlap threshold.")
    per_class: dict[str, float] = Field(
        default_factory=dict, description="Score thresholds for particular classes."
    )


class Tiling(_Model):
    enabled: bool = Field(default=False, description="Slice large images into tiles.")
    tile: tuple[int, int] | None = Field(
        default=None, description="Tile width and height (the input size when unset)."
    )
    overlap: float = Field(default=0.2, ge=0, lt=0.9, description="Overlap between tiles.")
    full_frame: bool = Field(
        default=True, description="Also run on the whole image, for large objects."
    )


class ModelSpec(_Model):
    """The model.yaml of a package."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Model name.")
    version: str = Field(default="0", description="Version of this model package.")
    file: str = Field(default="model.onnx", description="The ONNX file in the package.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the ONNX file.")
    task: Literal["detect", "classify"] = Field(default="detect", description="What it does.")
    input: InputSpec = Field(description="How frames become the input tensor.")
    output: OutputSpec = Field(description="How the output becomes detections.")
    classes: list[str] = Field(min_length=1, description="Class names, by index.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Report a class under another label, e.g. RDD2022's D00, D10 and D20 "
        "as crack and D40 as pothole; classes that share a label are one class from NMS "
        "on (regions, detections, rules). Unlisted classes keep their name.",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds, description="Filtering.")
    max_detections: int = Field(default=100, ge=1, le=10000, description="Kept per image.")
    regions: list[str] = Field(
        default_factory=list,
        description="Classes that are regions rather than objects (e.g. a crack network): "
        "overlapping boxes of one of them are one region, reported as their union with the "
        "highest score.",
    )
    tiling: Tiling = Field(default_factory=Tiling, description="Sliced inference.")
    description: str | None = Field(default=None, description="What the model finds.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        unknown = set(self.thresholds.per_class) - set(self.classes)
        if unknown:
            raise ValueError(f"thresholds for unknown classes: {', '.join(sorted(unknown))}")
        unknown = set(self.labels) - set(self.classes)
        if unknown:
            raise ValueError(f"labels for unknown classes: {', '.join(sorted(unknown))}")
        unknown = set(self.regions) - set(self.label_names)
        if unknown:
            raise ValueError(f"regions of unknown labels: {', '.join(sorted(unknown))}")
        masks = self.output.mask_outputs
        named = [name for m in masks for name in m.classes]
        unknown = set(named) - set(self.classes)
        if unknown:
            raise ValueError(f"masks of unknown classes: {', '.join(sorted(unknown))}")
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ValueError(f"masks name a class more than once: {', '.join(twice)}")
        if masks and self.task != "detect":
            raise ValueError("output.masks is for detectors (task detect)")
        if (self.task == "classify") != (self.output.decoder == "classification"):
            raise ValueError("task classify goes with decoder classification, and only with it")
        return self

    @property
    def label_names(self) -> list[str]:
        """The labels detections carry, in order of first appearance among the classes."""
        return list(dict.fromkeys(self.labels.get(c, c) for c in self.classes))

    @property
    def label_index(self) -> list[int]:
        """For each class index, the index of its label in `label_names`."""
        names = self.label_names
        return [names.index(self.labels.get(c, c)) for c in self.classes]

    def score_threshold(self, cls: int) -> float:
        name = self.classes[cls] if 0 <= cls < len(self.classes) else ""
        return self.thresholds.per_class.get(name, self.thresholds.score)


class ModelError(Exception):
    """A model package cannot be used; the message says precisely why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_spec(directory: Path) -> ModelSpec:
    """The validated model.yaml of the package in `directory`."""
    path = directory / "model.yaml"
    if not path.exists():
        raise ModelError(
            f"{directory}: no model.yaml (a model package is a folder with "
            "model.onnx and model.yaml)"
        )
    try:
        return load_model(path, ModelSpec)
    except SourceError as exc:
        raise ModelError(str(exc)) from None


def verify_file(directory: Path, spec: ModelSpec) -> Path:
    """The ONNX file, after checking that it exists and matches its sha256."""
    path = directory / spec.file
    if not path.exists():
        raise ModelError(f"{path}: missing")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise ModelError(
            f"{path}: sha256 is {digest}, model.yaml says {spec.sha256} (corrupt or replaced file)"
        )
    return path


def json_schema() -> str:
    """The JSON Schema of model.yaml (docs/schemas/model.schema.json)."""
    return published_schema(ModelSpec, "model")
