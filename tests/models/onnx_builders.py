"""Tiny real ONNX models for tests, built with onnx.helper (IR <= 10, opset <= 21)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper


def constant_model(
    output: np.ndarray,
    *,
    input_shape: tuple[int, ...] = (1, 3, 64, 64),
    input_type: int = TensorProto.FLOAT,
    sleep_graph: bool = False,
    more: tuple[np.ndarray, ...] = (),
) -> onnx.ModelProto:
    """A model whose output is `output` whatever the input (it still reads the input:
    output = constant + 0 * mean(input)); `more` are further constant outputs."""
    del sleep_graph
    const = numpy_helper.from_array(output.astype(np.float32), "const")
    extra = [
        numpy_helper.from_array(m.astype(np.float32), f"const{i + 1}") for i, m in enumerate(more)
    ]
    nodes = []
    inp_name = "images"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [inp_name], ["x_f"], to=TensorProto.FLOAT))
        inp_name = "x_f"
    nodes += [
        helper.make_node("ReduceMean", [inp_name], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output0"]),
    ]
    nodes += [
        helper.make_node("Identity", [t.name], [f"output{i + 1}"]) for i, t in enumerate(extra)
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("images", input_type, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))]
        + [
            helper.make_tensor_value_info(f"output{i + 1}", TensorProto.FLOAT, list(m.shape))
            for i, m in enumerate(more)
        ],
        initializer=[const, numpy_helper.from_array(np.zeros((), np.float32), "zero"), *extra],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def package(directory: Path, model: onnx.ModelProto | bytes, spec: dict[str, Any]) -> Path:
    """Write a model package (model.onnx + model.yaml with the right sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (directory / "model.onnx").write_bytes(data)
    full = {"sha256": hashlib.sha256(data).hexdigest(), **spec}
    (directory / "model.yaml").write_text(yaml.safe_dump(full), encoding="utf-8")
    return directory


def detect_spec(decoder: str, classes: list[str], size: int = 64, **extra: Any) -> dict[str, Any]:
    return {
        "name": "test-model",
        "input": {"size": [size, size]},
        "output": {"decoder": decoder},
        "classes": classes,
        **extra,
    }
