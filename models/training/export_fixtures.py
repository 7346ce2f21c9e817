"""Export the compatibility fixtures under tests/fixtures/models (run once, results committed).

Two small untrained detectors in the output layouts users bring most often:

- ``yolov8-tiny``: built by the ultralytics package from its own YOLOv8 architecture YAML
  (a very narrow width so the file stays small; random weights, nothing downloaded) and
  exported by ultralytics' ONNX exporter: output ``[1, 4 + C, N]``;
- ``yolov5-tiny``: a plain-torch network with a YOLOv5 detection head (three anchors per
  cell on strides 8/16/32, sigmoid, grid and anchor decoding in the graph, exactly as
  YOLOv5's ``export.py`` writes it): output ``[1, N, 5 + C]``.

Each gets a ``model.yaml`` written the way a user would; the test suite loads them through
that file alone and never needs torch. The class biases are set so that the untrained
heads report moderate scores: the whole decoding path then produces detections.

    ./scripts/train-env
    .venv-train/bin/python -m models.training.export_fixtures
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "models"
CLASSES = ["crack", "pothole", "patch"]
SIZE = 160
MAX_IR = 10  # onnxruntime 1.31 rejects newer IR versions
OPSET = 17


def finish(onnx_path: Path, directory: Path, spec: dict[str, Any]) -> None:
    """Copy the ONNX file into `directory` (IR version capped) and write its model.yaml."""
    model = onnx.load(str(onnx_path))
    model.ir_version = min(model.ir_version, MAX_IR)
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", 0) > 21:
        raise SystemExit(f"{onnx_path}: opset {opsets['']} is newer than onnxruntime accepts")
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "model.onnx"
    onnx.save(model, str(target))
    spec["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    text = yaml.safe_dump(spec, sort_keys=False)
    (directory / "model.yaml").write_text(text)
    print(f"{directory.relative_to(ROOT)}: {target.stat().st_size} bytes")


def common_spec(name: str, decoder: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "file": "model.onnx",
        "sha256": "",
        "task": "detect",
        "description": description,
        "input": {"size": [SIZE, SIZE], "layout": "NCHW", "dtype": "float32", "color": "RGB"},
        "output": {"decoder": decoder},
        "classes": CLASSES,
        "thresholds": {"score": 0.25, "iou": 0.45},
        "max_detections": 50,
    }


def export_yolov8(work: Path) -> None:
    import ultralytics  # noqa: PLC0415 - only this fixture needs it
    from ultralytics.models import YOLO  # noqa: PLC0415
    from ultralytics.nn.tasks import yaml_model_load  # noqa: PLC0415

    # the architecture shipped inside ultralytics
    arch = yaml_model_load("yolov8.yaml")  # type: ignore[no-untyped-call]
    arch["nc"] = len(CLASSES)
    arch["scales"] = {"t": [0.33, 0.0625, 1024]}  # narrower than "n": a 16x smaller file
    arch["scale"] = "t"
    cfg = work / "yolov8t.yaml"
    cfg.write_text(yaml.safe_dump(arch, sort_keys=False))
    torch.manual_seed(8)
    yolo = YOLO(str(cfg), task="detect")
    head = yolo.model.model[-1]  # type: ignore[union-attr]
    for branch in head.cv3:  # class logits around 0: untrained scores near 0.5
        nn.init.zeros_(branch[-1].bias)
    with contextlib.chdir(work):  # the exporter writes next to the current directory
        exported = yolo.export(format="onnx", imgsz=SIZE, opset=OPSET, simplify=True, dynamic=False)
    spec = common_spec(
        "yolov8-tiny",
        "yolov8",
        f"Untrained YOLOv8 (ultralytics {ultralytics.__version__}, random weights): "
        "compatibility fixture for the [1, 4+C, N] layout.",
    )
    finish(work / Path(exported), OUT / "yolov8-tiny", spec)


class _Conv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()
        )


class TinyYolov5(nn.Module):
    """A small backbone and YOLOv5's anchor-based head with in-graph decoding."""

    anchors = (
        ((10, 13), (16, 30), (33, 23)),
        ((30, 61), (62, 45), (59, 119)),
        ((116, 90), (156, 198), (373, 326)),
    )
    strides = (8, 16, 32)

    def __init__(self, nc: int) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.na = 3
        self.stem = nn.Sequential(_Conv(3, 8, 2), _Conv(8, 16, 2), _Conv(16, 16, 2))
        self.down16 = _Conv(16, 32, 2)
        self.down32 = _Conv(32, 32, 2)
        heads = [nn.Conv2d(c, self.na * self.no, 1) for c in (16, 32, 32)]
        for head in heads:  # objectness ~0.88 and classes ~0.5 before any training
            assert head.bias is not None
            bias = head.bias.data.view(self.na, self.no)
            bias[:, 4] = 2.0
            bias[:, 5:] = 0.0
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p8 = self.stem(x)
        p16 = self.down16(p8)
        p32 = self.down32(p16)
        out = []
        for i, feature in enumerate((p8, p16, p32)):
            p = self.heads[i](feature)
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            y = p.sigmoid()
            gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2).float()
            anchor = torch.tensor(self.anchors[i], dtype=torch.float32).view(1, self.na, 1, 1, 2)
            xy = (y[..., 0:2] * 2 - 0.5 + grid) * self.strides[i]
            wh = (y[..., 2:4] * 2) ** 2 * anchor
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(out, 1)


def export_yolov5(work: Path) -> None:
    torch.manual_seed(5)
    net = TinyYolov5(len(CLASSES)).eval()
    path = work / "yolov5-tiny.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(path),
        opset_version=OPSET,
        input_names=["images"],
        output_names=["output0"],
        dynamo=False,
    )
    spec = common_spec(
        "yolov5-tiny",
        "yolov5",
        "Untrained network with a YOLOv5 head (random weights): compatibility fixture "
        "for the [1, N, 5+C] layout.",
    )
    finish(path, OUT / "yolov5-tiny", spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["yolov8", "yolov5"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fixtures-"))
    try:
        if "yolov8" in args.which:
            export_yolov8(work)
        if "yolov5" in args.which:
            export_yolov5(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
