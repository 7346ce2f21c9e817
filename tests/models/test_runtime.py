"""The model runtime with real ONNX models in onnxruntime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.package import ModelError
from models.runtime import LoadedModel, ModelHung
from tests.models.onnx_builders import constant_model, detect_spec, package

CLASSES = ["crack", "pothole"]


def yolov8_out(*objects: tuple[float, float, float, float, int, float]) -> np.ndarray:
    """[1, 4 + C, N] with one column per (cx, cy, w, h, class, score)."""
    cols = np.zeros((4 + len(CLASSES), len(objects)), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(objects):
        cols[:4, i] = (cx, cy, w, h)
        cols[4 + cls, i] = score
    return cols[np.newaxis]


def test_letterbox_boxes_come_back_in_frame_pixels(tmp_path: Path) -> None:
    out = yolov8_out((32, 32, 16, 8, 1, 0.9))  # centre of the 64x64 input
    pkg = package(tmp_path / "m", constant_model(out), detect_spec("yolov8", CLASSES))
    model = LoadedModel.load(pkg)
    frame = np.zeros((64, 128, 3), np.uint8)  # 128 wide: scaled by 0.5, padded 16 rows
    (found,) = model.run(frame)
    assert found.label == "pothole"
    assert found.score == pytest.approx(0.9)
    assert found.box == pytest.approx((48.0, 24.0, 80.0, 40.0))
    model.close()


def test_regions_from_a_mask_output_come_back_in_frame_pixels(tmp_path: Path) -> None:
    boxes = yolov8_out((32, 32, 16, 8, 0, 0.9), (10, 40, 8, 8, 1, 0.8))
    prob = np.zeros((1, 2, 16, 16), np.float32)  # stride 4
    prob[0, 0, 6:8, 4:12] = 0.7  # input pixels (16, 24)-(48, 32): a crack region
    prob[0, 1, 0:4, 0:4] = 0.9  # a pothole only in the map: potholes come from the boxes
    spec = detect_spec("yolov8", CLASSES, regions=["crack"])
    spec["output"]["masks"] = {"classes": ["crack"], "threshold": 0.5}
    model = LoadedModel.load(package(tmp_path / "m", constant_model(boxes, more=(prob,)), spec))
    frame = np.zeros((64, 128, 3), np.uint8)  # scaled by 0.5, padded 16 rows
    crack, pothole = sorted(model.run(frame), key=lambda f: f.label)
    assert (crack.label, pothole.label) == ("crack", "pothole")
    assert crack.score == pytest.approx(0.7, abs=0.01)
    # input (16, 24)-(48, 32) give or take the bilinear edge -> frame (32, 16)-(96, 32)
    assert crack.box == pytest.approx((32.0, 16.0, 96.0, 32.0), abs=6)
    assert pothole.box == pytest.approx((12.0, 40.0, 28.0, 56.0))
    model.close()


def test_tiled_inference_finds_one_object_per_tile(tmp_path: Path) -> None:
    out = yolov8_out((10, 10, 8, 8, 0, 0.8))
    spec = detect_spec(
        "yolov8", CLASSES, tiling={"enabled": True, "overlap": 0.0, "full_frame": False}
    )
    model = LoadedModel.load(package(tmp_path / "m", constant_model(out), spec))
    found = model.run(np.zeros((128, 192, 3), np.uint8))  # 3 x 2 tiles of 64x64
    corners = sorted((round(f.box[0]), round(f.box[1])) for f in found)
    assert corners == [(6, 6), (6, 70), (70, 6), (70, 70), (134, 6), (134, 70)]
    model.close()


def test_uint8_nhwc_bgr_input(tmp_path: Path) -> None:
    out = yolov8_out((32, 32, 16, 16, 0, 0.5))
    spec = detect_spec("yolov8", CLASSES)
    spec["input"] = {"size": [64, 64], "layout": "NHWC", "dtype": "uint8", "color": "BGR"}
    model = LoadedModel.load(
        package(
            tmp_path / "m",
            constant_model(out, input_shape=(1, 64, 64, 3), input_type=TensorProto.UINT8),
            spec,
        )
    )
    assert len(model.run(np.full((64, 64, 3), 200, np.uint8))) == 1
    model.close()


def test_classification_model(tmp_path: Path) -> None:
    spec = {
        "name": "road-surface",
        "task": "classify",
        "input": {"size": [64, 64]},
        "output": {"decoder": "classification"},
        "classes": ["dry", "wet", "snow"],
    }
    model = LoadedModel.load(
        package(tmp_path / "m", constant_model(np.array([[0.1, 3.0, 0.2]], np.float32)), spec)
    )
    (found,) = model.run(np.zeros((48, 80, 3), np.uint8))
    assert found.label == "wet"
    assert found.box == (0.0, 0.0, 80.0, 48.0)
    model.close()


@pytest.mark.parametrize("problem", ["sha256", "corrupt", "shape", "dtype", "yaml", "missing"])
def test_bad_packages_are_refused_with_the_reason(tmp_path: Path, problem: str) -> None:
    out = yolov8_out((32, 32, 16, 8, 1, 0.9))
    spec = detect_spec("yolov8", CLASSES)
    model = constant_model(out)
    if problem == "shape":
        model = constant_model(out, input_shape=(1, 3, 32, 32))
    if problem == "dtype":
        model = constant_model(out, input_type=TensorProto.UINT8)
    pkg = package(
        tmp_path / "m",
        model.SerializeToString() if problem != "corrupt" else b"\x08\x07garbage-not-a-model",
        spec,
    )
    if problem == "sha256":
        (pkg / "model.onnx").write_bytes((pkg / "model.onnx").read_bytes() + b"\x00")
    if problem == "yaml":
        (pkg / "model.yaml").write_text(
            (pkg / "model.yaml").read_text().replace("decoder: yolov8", "decoder: [oops")
        )
    if problem == "missing":
        (pkg / "model.yaml").unlink()
    expected = {
        "sha256": "sha256 is",
        "corrupt": "onnxruntime cannot load it",
        "shape": "the model's input images is [1, 3, 32, 32], model.yaml describes [1, 3, 64, 64]",
        "dtype": "the model's input is tensor(uint8), model.yaml says float32",
        "yaml": "model.yaml:",
        "missing": "no model.yaml",
    }[problem]
    with pytest.raises(ModelError) as info:
        LoadedModel.load(pkg)
    assert expected in str(info.value)


def slow_model(n: int = 1500) -> onnx.ModelProto:
    """A model that computes for a while (big matrix products) before answering."""
    w = numpy_helper.from_array(np.random.default_rng(0).random((n, n), np.float32), "w")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["w", "m"], ["x0"]),
    ]
    for i in range(6):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", ["x6"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output0"]),
    ]
    const = yolov8_out((32, 32, 16, 8, 0, 0.9))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(const.shape))],
        initializer=[
            w,
            numpy_helper.from_array(const, "const"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


async def test_watchdog_reports_a_hung_inference_and_the_model_carries_on(
    tmp_path: Path,
) -> None:
    model = await asyncio.to_thread(
        LoadedModel.load, package(tmp_path / "m", slow_model(), detect_spec("yolov8", CLASSES))
    )
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ModelHung, match=r"inference exceeded 0\.001s"):
        await model.infer(frame, watchdog=0.001)
    assert model.hung == 1
    found = await model.infer(frame, watchdog=60)
    assert [f.label for f in found] == ["crack"]
    await asyncio.to_thread(model.close)
    await asyncio.sleep(1.0)  # the abandoned thread finishes its inference and ends
