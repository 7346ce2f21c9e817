"""Small centre-point detectors in plain PyTorch (no third-party model code).

Two backbones, one head:

- ``RoadNet``: plain residual 3x3 convolutions (strides 2..32) trained from scratch
  (depthwise convolutions train ten times slower on a CPU);
- ``MobileRoadNet``: MobileNetV2 (Sandler et al., 2018) started from ImageNet weights
  (``models.training.backbone``), its stride-2/4 layers frozen.

Each has a top-down feature pyramid merged at stride 8 (``RoadNet(stride=4)`` carries it
down to the stride-4 stem, for small objects, at about half the speed) and a
CenterNet-style head: a heatmap per class (the object centre), the box size (log, in
stride units) and the centre offset: with ``boxes="centre"`` (CenterNet) the sub-cell offset
of the centre cell, the only cell the box is trained at; with ``boxes="dense"`` (as in
TTFNet, Liu et al., 2020) the offset of the box centre from the cell's centre, unbounded,
trained at every cell around the centre that the heatmap's Gaussian covers and at its
eight neighbours, with a GIoU loss next to the L1 one: a peak a cell away from the centre
still gives the whole box.

For export the head is decoded inside the graph into the YOLOv8 layout the runtime reads,
``[1, 4 + C, N]`` (cx, cy, w, h in input pixels, then per-class scores), with the
CenterNet 3x3 peak test applied to the scores; the runtime's class-aware NMS does the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

STRIDE = 8  # the default output stride
BOXES = ("centre", "dense")  # how the box head is trained and decoded (see above)


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


class CentreNet(nn.Module):
    """The head shared by the backbones: `features` gives the map of `f` channels at the
    output stride `stride`."""

    def __init__(self, classes: int, f: int, stride: int = STRIDE, boxes: str = "centre") -> None:
        super().__init__()
        if boxes not in BOXES:
            raise ValueError(f"boxes {boxes!r}: one of {', '.join(BOXES)}")
        self.classes = classes
        self.stride = stride
        self.boxes = boxes
        self.head = nn.Sequential(conv_bn(f, f), conv_bn(f, f))
        self.heat = nn.Conv2d(f, classes, 1)
        self.box = nn.Conv2d(f, 4, 1)  # dx, dy (the centre's offset), log w, log h
        self.seg = nn.Conv2d(f, classes, 1)  # auxiliary, training only
        assert self.heat.bias is not None
        nn.init.constant_(self.heat.bias, -4.6)  # prior 0.01

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))
        return self.heat(h), self.box(h)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))
        return self.heat(h), self.box(h), self.seg(h)

    def forward_fine(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward_train` and the fine segmentation logits (stride 4), for a network
        built with `fine`."""
        raise ValueError(f"{type(self).__name__} has no fine segmentation head")

    @property
    def fine(self) -> bool:
        return False

    @property
    def dense_boxes(self) -> bool:
        """``boxes="dense"``: offsets from each cell's centre, unbounded."""
        return self.boxes == "dense"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


FINE = 4  # the stride of the fine segmentation head


class RoadNet(CentreNet):
    """`fine`: a light segmentation head at stride 4 besides the stride-8 heads (the
    stride-4 stem and the upsampled pyramid, 16 channels): masks sharp enough to read
    small potholes from as blobs, the way the ground truth is made."""

    def __init__(
        self,
        classes: int = 2,
        width: int = 16,
        stride: int = STRIDE,
        fine: bool = False,
        boxes: str = "centre",
    ) -> None:
        if stride not in (4, 8):
            raise ValueError(f"stride {stride}: RoadNet has outputs at stride 4 or 8")
        if fine and stride != STRIDE:
            raise ValueError("the fine segmentation head goes with stride 8 outputs")
        w = width
        super().__init__(classes, w * 4, stride, boxes)
        self.stem = nn.Sequential(conv_bn(3, w, 3, 2), conv_bn(w, w * 2, 3, 2), Residual(w * 2))
        self.s8 = nn.Sequential(conv_bn(w * 2, w * 4, 3, 2), Residual(w * 4))
        self.s16 = nn.Sequential(conv_bn(w * 4, w * 8, 3, 2), Residual(w * 8))
        self.s32 = nn.Sequential(conv_bn(w * 8, w * 8, 3, 2), Residual(w * 8))
        self.lat32 = conv_bn(w * 8, w * 4, 1)
        self.lat16 = conv_bn(w * 8, w * 4, 1)
        if stride == 4:
            self.lat4 = conv_bn(w * 2, w * 4, 1)
        self.fine_head: nn.Module | None = None
        if fine:
            self.fine_stem = conv_bn(w * 2, 16, 1)
            self.fine_top = conv_bn(w * 4, 16, 1)
            self.fine_head = nn.Sequential(conv_bn(16, 16), nn.Conv2d(16, classes, 1))

    @property
    def fine(self) -> bool:
        return self.fine_head is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid(x)[1]

    def forward_fine(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fine_head is None:
            return super().forward_fine(x)
        c4, p = self.pyramid(x)
        h = self.head(p)
        top = F.interpolate(self.fine_top(p), size=c4.shape[-2:], mode="nearest")
        fine = self.fine_head(self.fine_stem(c4) + top)
        return self.heat(h), self.box(h), self.seg(h), fine

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stride-4 stem's map and the pyramid at the output stride."""
        c4 = self.stem(x)
        c8 = self.s8(c4)
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        p: torch.Tensor = self.lat16(c16) + F.interpolate(
            self.lat32(c32), size=c16.shape[-2:], mode="nearest"
        )
        p = c8 + F.interpolate(p, size=c8.shape[-2:], mode="nearest")
        if self.stride == 4:
            p = self.lat4(c4) + F.interpolate(p, size=c4.shape[-2:], mode="nearest")
        return c4, p


# MobileNetV2's inverted residual stages: expansion, channels, repeats, first stride
MOBILENET_V2: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def conv_bn6(cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1, linear); shortcut where shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = conv_bn6(cin, hidden, 1) if expand != 1 else []
        layers += conv_bn6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.shortcut = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.shortcut else self.conv(x)  # type: ignore[no-any-return]


class MobileRoadNet(CentreNet):
    """MobileNetV2 up to stride 32 (its parameter names, so ImageNet weights load as they
    are), lateral 1x1 convolutions into a stride-8 pyramid. The input stays RGB in 0..1:
    the ImageNet normalisation is the graph's first operation."""

    FROZEN = 4  # the stride-2 and stride-4 layers keep their ImageNet weights
    mean: torch.Tensor  # buffers: the ImageNet normalisation
    std: torch.Tensor

    def __init__(self, classes: int = 2, f: int = 64, boxes: str = "centre") -> None:
        super().__init__(classes, f, boxes=boxes)
        layers: list[nn.Module] = [nn.Sequential(*conv_bn6(3, 32, 3, 2))]
        cin = 32
        for expand, cout, repeats, stride in MOBILENET_V2:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        self.backbone = nn.Sequential(*layers)  # 0-6: stride 8, 7-13: 16, 14-17: 32
        self.lat8, self.lat16, self.lat32 = conv_bn(32, f, 1), conv_bn(96, f, 1), conv_bn(320, f, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for p in self.backbone[: self.FROZEN].parameters():
            p.requires_grad_(False)

    def load_backbone(self, state: dict[str, torch.Tensor]) -> None:
        """ImageNet weights of MobileNetV2 (``features.N...`` names; its last 1x1
        convolution to 1280 channels and classifier are not used)."""
        ours = {k.removeprefix("features."): v for k, v in state.items()}
        ours = {k: v for k, v in ours.items() if int(k.split(".")[0]) < len(self.backbone)}
        self.backbone.load_state_dict(ours)

    def train(self, mode: bool = True) -> MobileRoadNet:
        super().train(mode)
        self.backbone[: self.FROZEN].eval()  # frozen layers keep their batch statistics
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        c8 = self.backbone[:7](x)
        c16 = self.backbone[7:14](c8)
        c32 = self.backbone[14:](c16)
        p = self.lat16(c16) + F.interpolate(self.lat32(c32), size=c16.shape[-2:], mode="nearest")
        return self.lat8(c8) + F.interpolate(p, size=c8.shape[-2:], mode="nearest")  # type: ignore[no-any-return]


class Decoder(nn.Module):
    """The heads' logits decoded into the YOLOv8 layout ``[1, 4 + C, N]``; with the
    segmentation logits, a second output: its probabilities ``[1, C, H/s, W/s]``
    (model.yaml ``output.masks``: region classes read from the mask), and each peak's
    score becomes the geometric mean of the peak and the highest mask probability of its
    class within one cell (the two heads agreeing ranks detections better: val pothole
    AP50 0.231 -> 0.256 for the stride-4 road model)."""

    gx: torch.Tensor  # buffers: each output cell's column and row
    gy: torch.Tensor

    def __init__(self, stride: int, height: int, width: int, dense: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.dense = dense  # boxes="dense": the offset is from the cell's centre, unbounded
        gh, gw = height // stride, width // stride
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        self.register_buffer("gx", xs.reshape(1, 1, -1).float())
        self.register_buffer("gy", ys.reshape(1, 1, -1).float())

    def decode(
        self, heat: torch.Tensor, box: torch.Tensor, seg: torch.Tensor | None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The heads' logits (`seg` with `masks`) to the outputs."""
        scores = torch.sigmoid(heat)
        peaks = F.max_pool2d(scores, 3, 1, 1)
        scores = scores * (scores >= peaks).float()
        if seg is not None:  # confirmed by the segmentation head nearby: sqrt(peak x mask)
            mask = torch.sigmoid(seg)
            scores = torch.sqrt(scores * F.max_pool2d(mask, 3, 1, 1))
        b = box.flatten(2)
        if self.dense:
            cx = (self.gx + 0.5 + b[:, 0:1]) * self.stride
            cy = (self.gy + 0.5 + b[:, 1:2]) * self.stride
        else:
            cx = (self.gx + torch.sigmoid(b[:, 0:1])) * self.stride
            cy = (self.gy + torch.sigmoid(b[:, 1:2])) * self.stride
        w = torch.exp(b[:, 2:3].clamp(-4, 6)) * self.stride
        h = torch.exp(b[:, 3:4].clamp(-4, 6)) * self.stride
        detections = torch.cat([cx, cy, w, h, scores.flatten(2)], 1)
        return (detections, mask) if seg is not None else detections


class Exported(Decoder):
    """A CentreNet and its `Decoder`: images in, the package's outputs out (`masks`: the
    segmentation probabilities as the second output; `fine`: the fine head's
    probabilities, stride 4, as the third)."""

    def __init__(
        self, net: CentreNet, height: int, width: int, masks: bool = False, fine: bool = False
    ) -> None:
        super().__init__(net.stride, height, width, dense=net.dense_boxes)
        if fine and not (masks and net.fine):
            raise ValueError("the fine output goes with masks and a network with a fine head")
        self.net = net
        self.masks = masks
        self.fine = fine

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, ...]:
        if self.fine:
            parts = self.net.forward_fine(x)
            decoded = self.decode(*parts[:3])
            assert isinstance(decoded, tuple)  # with the segmentation logits
            return (*decoded, torch.sigmoid(parts[3]))
        if self.masks:
            heat, box, seg = self.net.forward_train(x)
        else:
            (heat, box), seg = self.net(x), None
        return self.decode(heat, box, seg)
