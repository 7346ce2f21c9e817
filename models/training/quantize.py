"""An int8 variant of a model package (onnxruntime static quantization, QDQ, per channel).

    .venv/bin/python -m models.training.quantize models/zoo/road_defect \\
        models/zoo/road_defect_int8 --calibrate ../shared/data/road-dnit/val.txt

Calibration frames come from the list given (validation frames: never the test split), run
through the package's own pre-processing. The convolutions of the backbone and neck are
quantised; the output convolutions and the in-graph decoding (sigmoid, exp, peak test) stay
in float, so boxes and scores keep their precision. Prints the time per inference of both
packages on one core of this machine, measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from models.package import load_spec
from models.preprocess import prepare


class Frames(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, tensors: list[np.ndarray], name: str) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter({name: t} for t in tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration(listing: Path, directory: Path, n: int) -> list[np.ndarray]:
    spec = load_spec(directory)
    root = listing.parent
    names = listing.read_text().split()[:n]
    out = []
    for name in names:
        img = cv2.imread(str(root / "images" / name / f"{name}_RAW.jpg"), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{name}: cannot be read")
        tensor, _ = prepare(np.asarray(img, np.uint8), spec.input)
        out.append(tensor)
    return out


def per_inference_ms(path: Path, tensor: np.ndarray, runs: int = 40) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(5):
        session.run(None, {name: tensor})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {name: tensor})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("package", type=Path, help="the float model package")
    ap.add_argument("out", type=Path, help="where to write the int8 package")
    ap.add_argument("--calibrate", type=Path, required=True, help="a road-dnit list file")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument(
        "--keep-float",
        default="heat,box,seg,fine_head.1",
        help="output convolutions kept in float",
    )
    args = ap.parse_args()
    spec = load_spec(args.package)
    source = args.package / spec.file
    tensors = calibration(args.calibrate, args.package, args.frames)
    model = onnx.load(str(source))
    keep = [n.name for n in model.graph.node if n.op_type == "Conv"
            and any(f"/{k}/" in n.name for k in args.keep_float.split(","))]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(source), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped),
            str(target),
            Frames(tensors, model.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=keep,
        )
    q = onnx.load(str(target))
    q.ir_version = min(q.ir_version, 10)
    onnx.save(q, str(target))
    data = yaml.safe_load((args.package / "model.yaml").read_text())
    data["name"] = f"{spec.name}-int8"
    data["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    data["description"] = (
        f"{data.get('description', '')} int8 (static, QDQ, per channel; output convolutions "
        "in float) by models/training/quantize.py."
    ).strip()
    (args.out / "model.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    init = args.package / "__init__.py"
    if init.exists():
        shutil.copy(init, args.out / "__init__.py")
    f32 = per_inference_ms(source, tensors[0])
    i8 = per_inference_ms(target, tensors[0])
    print(
        f"one core, median of 40: float {f32:.1f} ms, int8 {i8:.1f} ms "
        f"(x{f32 / i8:.2f}); {source.stat().st_size / 1e6:.2f} MB -> "
        f"{target.stat().st_size / 1e6:.2f} MB; excluded: {keep}"
    )


if __name__ == "__main__":
    main()
