"""Models exported by real tools (models/training/export_fixtures.py) run through their
model.yaml alone: the YOLOv8 layout from ultralytics' exporter, the YOLOv5 layout from
torch. Each result is checked against the raw onnxruntime output decoded here by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from firmware_sim.camera import street
from models.package import ModelError
from models.runtime import LoadedModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def jpeg_roundtrip(frame: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", frame)
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def reference_best(name: str, image: np.ndarray) -> tuple[int, float, np.ndarray]:
    """(class, score, x1y1x2y2) of the best candidate of the raw output, for a 160x160
    picture (no resizing, so no letterbox to undo)."""
    session = ort.InferenceSession(str(FIXTURES / name / "model.onnx"))
    rgb = image[:, :, ::-1].astype(np.float32) / 255.0
    (out,) = session.run(None, {"images": rgb.transpose(2, 0, 1)[np.newaxis].copy()})
    if name.startswith("yolov8"):
        rows = out[0].T  # [N, 4 + C]
        boxes, scores = rows[:, :4], rows[:, 4:]
    else:
        rows = out[0]  # [N, 5 + C]
        boxes, scores = rows[:, :4], rows[:, 5:] * rows[:, 4:5]
    best = int(np.argmax(scores.max(axis=1)))
    cls = int(np.argmax(scores[best]))
    cx, cy, w, h = boxes[best]
    xyxy = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0, 160)
    return cls, float(scores[best, cls]), xyxy


@pytest.mark.parametrize("name", ["yolov8-tiny", "yolov5-tiny"])
def test_exported_model_runs_through_its_model_yaml(name: str) -> None:
    model = LoadedModel.load(FIXTURES / name)
    try:
        frame = jpeg_roundtrip(street(3, 160, 160))
        found = model.run(frame)
        spec = yaml.safe_load((FIXTURES / name / "model.yaml").read_text())
        assert 0 < len(found) <= spec["max_detections"]
        assert {f.label for f in found} <= set(spec["classes"])
        assert all(f.score >= spec["thresholds"]["score"] for f in found)
        best = max(found, key=lambda f: f.score)
        cls, score, box = reference_best(name, frame)
        assert best.label == spec["classes"][cls]
        assert best.score == pytest.approx(score, abs=1e-4)
        assert best.box == pytest.approx(tuple(box), abs=0.05)

        wide = jpeg_roundtrip(street(3, 640, 360))  # letterboxed: boxes in its pixels
        for f in model.run(wide):
            x1, y1, x2, y2 = f.box
            assert 0 <= x1 <= x2 <= 640
            assert 0 <= y1 <= y2 <= 360
    finally:
        model.close()


def test_the_wrong_decoder_for_an_exported_model_is_refused_at_load(tmp_path: Path) -> None:
    pkg = tmp_path / "wrong"
    shutil.copytree(FIXTURES / "yolov8-tiny", pkg)
    spec = yaml.safe_load((pkg / "model.yaml").read_text())
    spec["output"]["decoder"] = "yolov5"  # [1, 7, 525] read as [1, N, 5 + C]
    (pkg / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match="yolov5"):
        LoadedModel.load(pkg)


def test_the_published_model_yaml_schema_is_current_and_accepts_the_fixtures() -> None:
    from jsonschema import Draft202012Validator

    from models.package import json_schema

    root = Path(__file__).resolve().parents[2]
    published = (root / "docs" / "schemas" / "model.schema.json").read_text()
    assert published == json_schema(), "regenerate docs/schemas/model.schema.json"
    validator = Draft202012Validator(json.loads(published))
    for name in ("yolov8-tiny", "yolov5-tiny"):
        validator.validate(yaml.safe_load((FIXTURES / name / "model.yaml").read_text()))
    bad = yaml.safe_load((FIXTURES / "yolov8-tiny" / "model.yaml").read_text())
    bad["input"]["layout"] = "CHW"
    assert not validator.is_valid(bad)
