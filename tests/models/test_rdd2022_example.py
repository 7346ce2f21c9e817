"""The RDD2022 model.yaml shown in the road model card loads and maps its classes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml

from models.package import load_spec
from models.runtime import LoadedModel
from tests.models.onnx_builders import constant_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "models" / "rdd2022-yolov8"


def yolov8_output(rows: list[tuple[float, float, float, float, int, float]]) -> np.ndarray:
    """[1, 4 + 4, N]: cx, cy, w, h and a score for each of RDD2022's 4 classes."""
    out = np.zeros((1, 8, 32), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


def test_the_example_maps_rdd2022_classes_onto_crack_and_pothole(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLE / "model.yaml").read_text())
    rows = [
        (200, 300, 100, 40, 0, 0.8),  # D00 longitudinal crack
        (260, 300, 100, 60, 2, 0.7),  # D20 alligator crack, overlapping it: one region
        (500, 500, 60, 60, 3, 0.9),  # D40 pothole
        (100, 100, 30, 30, 3, 0.28),  # a D40 under its own threshold (0.3)
        (400, 100, 50, 10, 1, 0.6),  # D10 transverse crack, on its own
    ]
    model_bytes = constant_model(yolov8_output(rows), input_shape=(1, 3, 640, 640))
    data = model_bytes.SerializeToString()
    package = tmp_path / "rdd2022"
    package.mkdir()
    (package / "model.onnx").write_bytes(data)
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    (package / "model.yaml").write_text(yaml.safe_dump(spec))

    loaded_spec = load_spec(package)
    assert loaded_spec.label_names == ["crack", "pothole"]
    model = LoadedModel.load(package)
    try:
        found = model.run(np.zeros((640, 640, 3), np.uint8))
    finally:
        model.close()
    got = sorted((f.label, round(f.score, 2), tuple(round(v) for v in f.box)) for f in found)
    assert got == [
        ("crack", 0.6, (375, 95, 425, 105)),
        ("crack", 0.8, (150, 270, 310, 330)),  # the D00 and D20 boxes joined
        ("pothole", 0.9, (470, 470, 530, 530)),
    ]
