"""A small centre-point detector in plain PyTorch (no third-party model code).

Backbone of plain residual 3x3 convolutions (strides 2..32; depthwise convolutions
train ten times slower on a CPU), a top-down feature
pyramid merged at stride 8, and a CenterNet-style head: a heatmap per class (the object
centre), the box size (log, in stride units) and the sub-cell centre offset.

For export the head is decoded inside the graph into the YOLOv8 layout the runtime reads,
``[1, 4 + C, N]`` (cx, cy, w, h in input pixels, then per-class scores), with the
CenterNet 3x3 peak test applied to the scores; the runtime's class-aware NMS does the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

STRIDE = 8


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)))


class RoadNet(nn.Module):
    def __init__(self, classes: int = 2, width: int = 16) -> None:
        super().__init__()
        w = width
        self.classes = classes
        self.stem = nn.Sequential(conv_bn(3, w, 3, 2), conv_bn(w, w * 2, 3, 2), Residual(w * 2))
        self.s8 = nn.Sequential(conv_bn(w * 2, w * 4, 3, 2), Residual(w * 4))
        self.s16 = nn.Sequential(conv_bn(w * 4, w * 8, 3, 2), Residual(w * 8))
        self.s32 = nn.Sequential(conv_bn(w * 8, w * 8, 3, 2), Residual(w * 8))
        f = w * 4
        self.lat32 = conv_bn(w * 8, f, 1)
        self.lat16 = conv_bn(w * 8, f, 1)
        self.head = nn.Sequential(conv_bn(f, f), conv_bn(f, f))
        self.heat = nn.Conv2d(f, classes, 1)
        self.box = nn.Conv2d(f, 4, 1)  # dx, dy (offset in the cell), log w, log h
        self.seg = nn.Conv2d(f, classes, 1)  # auxiliary, training only
        nn.init.constant_(self.heat.bias, -4.6)  # prior 0.01

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.heat(h), self.box(h)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.heat(h), self.box(h), self.seg(h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c8 = self.s8(self.stem(x))
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        p = self.lat16(c16) + F.interpolate(self.lat32(c32), size=c16.shape[-2:], mode="nearest")
        p = c8 + F.interpolate(p, size=c8.shape[-2:], mode="nearest")
        return self.head(p)  # type: ignore[no-any-return]


class Exported(nn.Module):
    """RoadNet with the head decoded into the YOLOv8 layout ``[1, 4 + C, N]``."""

    def __init__(self, net: RoadNet, height: int, width: int) -> None:
        super().__init__()
        self.net = net
        gh, gw = height // STRIDE, width // STRIDE
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        self.register_buffer("gx", xs.reshape(1, 1, -1).float())
        self.register_buffer("gy", ys.reshape(1, 1, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heat, box = self.net(x)
        scores = torch.sigmoid(heat)
        peaks = F.max_pool2d(scores, 3, 1, 1)
        scores = scores * (scores >= peaks).float()
        b = box.flatten(2)
        cx = (self.gx + torch.sigmoid(b[:, 0:1])) * STRIDE
        cy = (self.gy + torch.sigmoid(b[:, 1:2])) * STRIDE
        w = torch.exp(b[:, 2:3].clamp(-4, 6)) * STRIDE
        h = torch.exp(b[:, 3:4].clamp(-4, 6)) * STRIDE
        return torch.cat([cx, cy, w, h, scores.flatten(2)], 1)
