"""Decoder plugins end to end: an installed package's entry point, the registry, a model
package whose model.yaml names the plugin's decoder, detections out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.api import Decoded, ModelSpec
from models.package import ModelError
from models.plugins import DecoderRegistry, builtin_decoders, installed_decoders
from models.runtime import LoadedModel
from tests.gateway.test_cli import cli
from tests.models.onnx_builders import constant_model, detect_spec, package

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["pothole", "crack"]

# YOLOv7 end-to-end rows: batch, x1, y1, x2, y2, class, score (input pixels, 64 x 64)
ROWS = np.asarray(
    [
        [0, 4, 4, 20, 20, 0, 0.9],
        [0, 30, 30, 60, 50, 1, 0.6],
        [0, 10, 40, 20, 50, 1, 0.1],  # below the threshold
        [1, 4, 4, 20, 20, 0, 0.9],  # another image of a batch
    ],
    np.float32,
)


def test_the_installed_plugin_is_in_the_registry_beside_the_builtin_decoders() -> None:
    registry = installed_decoders()
    assert registry.origins["yolov7_nms"].startswith("cityneuron-acme-decoders")
    assert {"yolov5", "yolov8", "end2end"} <= set(registry.decoders)
    assert registry.failures == []


def test_a_package_naming_the_plugin_runs_with_it(tmp_path: Path) -> None:
    pkg = package(
        tmp_path / "m",
        constant_model(ROWS, input_shape=(1, 3, 64, 64)),
        detect_spec("yolov7_nms", CLASSES, thresholds={"score": 0.25}),
    )
    model = LoadedModel.load(pkg)
    try:
        found = model.run(np.zeros((64, 64, 3), np.uint8))
    finally:
        model.close()
    assert [(f.label, round(f.score, 2), f.box) for f in found] == [
        ("pothole", 0.9, (4.0, 4.0, 20.0, 20.0)),
        ("crack", 0.6, (30.0, 30.0, 60.0, 50.0)),
    ]


def test_a_package_naming_an_unknown_decoder_is_refused_with_what_exists(tmp_path: Path) -> None:
    pkg = package(tmp_path / "m", constant_model(ROWS), detect_spec("yolov9_magic", CLASSES))
    with pytest.raises(ModelError) as info:
        LoadedModel.load(pkg)
    message = str(info.value)
    assert "output.decoder: unknown decoder 'yolov9_magic'" in message
    assert "yolov7_nms" in message and "yolov8" in message


def test_a_plugin_that_raises_fails_its_model_not_the_caller(tmp_path: Path) -> None:
    def broken(outputs: Sequence[Any], spec: ModelSpec) -> Decoded:
        raise IndexError("tuple index out of range")

    registry: DecoderRegistry = builtin_decoders()
    registry.decoders["broken"] = broken
    pkg = package(tmp_path / "m", constant_model(ROWS), detect_spec("broken", CLASSES))
    # the warm-up at load runs the decoder: the package is refused with the reason
    with pytest.raises(ModelError, match=r"decoder 'broken' failed: IndexError"):
        LoadedModel.load(pkg, decoders=registry)


def test_cityneuron_plugins_lists_the_decoder() -> None:
    result = cli("plugins")
    assert result.returncode == 0, result.stderr
    assert "yolov7_nms     cityneuron-acme-decoders (acme_decoders.yolov7:yolov7_nms)" in (
        result.stdout
    )
