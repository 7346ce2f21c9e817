"""Road packages joined into one graph (models.training.ensemble) with the shipped road
packages: the heads averaged, decoded once, and the result a package the runtime runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from models.package import ModelError
from models.runtime import LoadedModel
from models.training.ensemble import (
    NETWORKS,
    join,
    member_spec,
    mirrored,
    network_of,
    networks,
    source,
    write,
)

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "models" / "zoo"
ROAD = ZOO / "road_defect"
ROAD_INT8 = ZOO / "road_defect_int8"


def outputs(model: bytes | str, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": x})  # type: ignore[no-any-return]


def logit(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64).clip(1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(5).random((1, 3, 400, 640), dtype=np.float32)


def test_a_package_joined_with_itself_gives_its_own_outputs(image: np.ndarray) -> None:
    spec = member_spec(ROAD)
    joined = join([ROAD, ROAD], [spec, spec])
    alone = outputs(str(ROAD / "model.onnx"), image)
    both = outputs(joined.SerializeToString(), image)
    assert [a.shape for a in alone] == [b.shape for b in both] == [(1, 6, 4000), (1, 2, 50, 80)]
    for a, b in zip(alone, both, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_members_segmentation_logits_are_averaged(image: np.ndarray) -> None:
    joined = join([ROAD, ROAD_INT8], [member_spec(ROAD), member_spec(ROAD_INT8)])
    _, mask_a = outputs(str(ROAD / "model.onnx"), image)
    _, mask_b = outputs(str(ROAD_INT8 / "model.onnx"), image)
    _, mask = outputs(joined.SerializeToString(), image)
    assert not np.allclose(mask_a, mask_b, atol=1e-3)  # two different members
    expected = 1 / (1 + np.exp(-(logit(mask_a) + logit(mask_b)) / 2))
    np.testing.assert_allclose(mask, expected, atol=1e-4)


def test_an_ensemble_member_counts_as_its_networks(tmp_path: Path, image: np.ndarray) -> None:
    """The shipped package averages three networks; joined with another three-network
    package it makes six, and joining that with the first again weighs them 6:3, which is
    the plain average of all nine networks."""
    a, b = member_spec(ROAD), member_spec(ROAD_INT8)
    six = join([ROAD, ROAD_INT8], [a, b])
    assert networks(six) == 6
    write(tmp_path, six, dict(a))
    nine = join([tmp_path, ROAD], [a, a])
    assert networks(nine) == 9
    _, mask_a = outputs(str(ROAD / "model.onnx"), image)
    _, mask_b = outputs(str(ROAD_INT8 / "model.onnx"), image)
    _, mask = outputs(nine.SerializeToString(), image)
    expected = 1 / (1 + np.exp(-(6 * logit(mask_a) + 3 * logit(mask_b)) / 9))
    np.testing.assert_allclose(mask, expected, atol=1e-4)
    unweighted = 1 / (1 + np.exp(-(3 * logit(mask_a) + logit(mask_b)) / 4))
    assert not np.allclose(mask, unweighted, atol=1e-3)
    six.metadata_props[0].value = "many"
    with pytest.raises(SystemExit, match="not a count of networks"):
        networks(six)
    assert [p.key for p in six.metadata_props] == [NETWORKS]


def test_the_joined_package_loads_and_runs_in_the_runtime(tmp_path: Path) -> None:
    spec = member_spec(ROAD)
    write(tmp_path, join([ROAD, ROAD_INT8], [spec, member_spec(ROAD_INT8)]), dict(spec))
    model = LoadedModel.load(tmp_path, threads=1)
    frame = np.full((500, 800, 3), 105, np.uint8)
    cv2.ellipse(frame, (400, 380), (60, 25), 0, 0, 360, (30, 28, 26), -1)
    detections = model.run(frame)
    assert all(d.label in {"crack", "pothole"} for d in detections)
    assert model.spec.output.masks is not None
    # the file is verified against the sha256 written with it: a changed byte is refused
    data = bytearray((tmp_path / "model.onnx").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        LoadedModel.load(tmp_path, threads=1)


def test_a_package_without_a_crack_mask_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a road package with a crack mask"):
        member_spec(ZOO / "aerial")
    shutil.copytree(ROAD, tmp_path / "road")
    (tmp_path / "road" / "model.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SystemExit, match="not a road package"):
        member_spec(tmp_path / "road")
    spec = yaml.safe_load((ROAD / "model.yaml").read_text())
    fine = {"output": 2, "classes": ["pothole"], "threshold": 0.4}
    spec["output"]["masks"] = [spec["output"]["masks"], fine]
    (tmp_path / "road" / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit, match="more than one mask output"):
        member_spec(tmp_path / "road")


def ensemble_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The ensemble command as an operator runs it."""
    command = [sys.executable, "-m", "models.training.ensemble", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)


def test_thresholds_are_taken_from_an_earlier_ensemble_without_reading_val(
    tmp_path: Path,
) -> None:
    """Members refit on train + val: the thresholds come from the log of the ensemble that
    val chose them for, and the data folder is not read (here it does not exist)."""
    log = tmp_path / "ensemble-log.json"
    log.write_text(
        json.dumps({"mask_threshold": 0.55, "thresholds": {"crack": 0.9, "pothole": 0.6}})
    )
    out = tmp_path / "joined"
    argv = [str(tmp_path / "no-data"), str(ROAD), str(ROAD_INT8), "--out", str(out)]
    done = ensemble_cli(*argv, "--thresholds-from", str(log))
    assert done.returncode == 0, done.stderr
    spec = LoadedModel.load(out, threads=1).spec
    assert spec.output.masks is not None and spec.output.masks.threshold == 0.55
    assert spec.thresholds.per_class == {"crack": 0.9, "pothole": 0.6}
    assert spec.thresholds.score == 0.6
    written = json.loads((out / "ensemble-log.json").read_text())
    assert written["thresholds_from"] == str(log)
    assert written["members"] == [str(ROAD), str(ROAD_INT8)]
    for bad, message in [
        ({"mask_threshold": 0.5}, "not an ensemble-log.json"),
        ({"mask_threshold": 0.5, "thresholds": {"crack": 0.9}}, r"the members' classes are"),
        ({"mask_threshold": 1.5, "thresholds": {"crack": 0.9, "pothole": 0.6}}, "between 0 and 1"),
    ]:
        log.write_text(json.dumps(bad))
        done = ensemble_cli(*argv, "--thresholds-from", str(log))
        assert done.returncode != 0
        assert re.search(message, done.stderr), done.stderr


def test_the_networks_of_an_ensemble_taken_apart_and_joined_again_give_it_back(
    tmp_path: Path, image: np.ndarray
) -> None:
    """PACKAGE#N: network N of the shipped three-network ensemble on its own; each one
    differs from the ensemble, and the three joined again give exactly its outputs."""
    spec = member_spec(ROAD)
    assert source(f"{ROAD}#2") == (ROAD, 2) and source(str(ROAD)) == (ROAD, None)
    alone = outputs(str(ROAD / "model.onnx"), image)
    parts = []
    for k in range(3):
        one = join([ROAD], [spec], [k])
        assert networks(one) == 1
        part = outputs(one.SerializeToString(), image)
        assert not np.allclose(part[1], alone[1], atol=1e-3)
        parts.append(logit(part[1]))
    expected = 1 / (1 + np.exp(-sum(parts) / 3))
    np.testing.assert_allclose(alone[1], expected, atol=1e-4)
    again = join([ROAD, ROAD, ROAD], [spec] * 3, [0, 1, 2])
    for a, b in zip(alone, outputs(again.SerializeToString(), image), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    write(tmp_path, join([ROAD], [spec], [1]), dict(spec))
    with pytest.raises(SystemExit, match="no network 0 in this package"):
        join([tmp_path], [spec], [0])
    with pytest.raises(SystemExit, match="no network 3 in this package"):
        join([ROAD], [spec], [3])
    with pytest.raises(SystemExit, match="must name a network by its number"):
        source(f"{ROAD}#last")
    nested = join([ROAD, ROAD_INT8], [spec, member_spec(ROAD_INT8)])
    with pytest.raises(SystemExit, match="itself an ensemble"):
        network_of(nested, 0)


def test_members_that_decode_their_heads_differently_are_refused(tmp_path: Path) -> None:
    """A package whose box offsets are not squashed into the cell (``train_road --boxes
    dense``) cannot be averaged with one whose are: its box logits mean something else."""
    model = onnx.load(str(ROAD / "model.onnx"))
    offset = next(
        n for n in model.graph.node if n.op_type == "Sigmoid" and n.input[0].startswith("/Slice")
    )
    offset.op_type = "Identity"
    spec = member_spec(ROAD)
    write(tmp_path, model, dict(spec))
    alone = join([tmp_path, tmp_path], [spec, spec])  # alike members join
    assert networks(alone) == 6
    with pytest.raises(SystemExit, match="decode their heads differently"):
        join([ROAD, tmp_path], [spec, spec])


def mirror_of(outs: list[np.ndarray]) -> list[np.ndarray]:
    """A road package's outputs for a frame turned into its outputs for the mirrored frame:
    the grid of detections reversed along the width, the box centres' x mirrored, the mask
    reversed along the width."""
    detections, mask = outs
    grid = detections.reshape(detections.shape[1], *mask.shape[2:])[:, :, ::-1].copy()
    grid[0] = mask.shape[3] * 8 - grid[0]  # stride 8: 640 px across
    return [grid.reshape(detections.shape), mask[..., ::-1]]


@pytest.mark.parametrize("package", [ROAD, ROAD_INT8], ids=["float", "int8"])
def test_with_flip_the_mirrored_frame_gives_the_mirrored_detections(
    tmp_path: Path, image: np.ndarray, package: Path
) -> None:
    """--flip averages each network's view of the frame and of its mirror image, mirrored
    back: the package then answers a mirrored frame with exactly the mirrored boxes,
    scores and mask, which the networks alone do not. It is run through the CLI, in the
    runtime, and cannot be flipped twice."""
    spec = member_spec(package)
    flipped = join([package], [spec], flip=True)
    assert networks(flipped) == 3 and mirrored(flipped)
    assert not mirrored(onnx.load(str(package / "model.onnx")))
    mirror_image = image[..., ::-1].copy()
    ours = outputs(flipped.SerializeToString(), image)
    theirs = mirror_of(outputs(flipped.SerializeToString(), mirror_image))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    alone = outputs(str(package / "model.onnx"), image)
    alone_mirrored = mirror_of(outputs(str(package / "model.onnx"), mirror_image))
    assert np.abs(alone[1] - alone_mirrored[1]).max() > 0.05  # the networks are not symmetric
    # the average of the two views, in the logits of the mask
    expected = 1 / (1 + np.exp(-(logit(alone[1]) + logit(alone_mirrored[1])) / 2))
    np.testing.assert_allclose(ours[1], expected, atol=1e-4)
    out = tmp_path / "flipped"
    thresholds = tmp_path / "ensemble-log.json"
    thresholds.write_text(
        json.dumps({"mask_threshold": 0.5, "thresholds": {"crack": 0.3, "pothole": 0.2}})
    )
    done = ensemble_cli(
        str(tmp_path / "no-data"), str(package), "--flip", "--thresholds-from", str(thresholds),
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = LoadedModel.load(out, threads=1)
    frame = np.full((400, 640, 3), 105, np.uint8)  # the input size: no letterbox margins
    cv2.ellipse(frame, (230, 300), (50, 22), 0, 0, 360, (30, 28, 26), -1)
    cv2.ellipse(frame, (500, 330), (30, 14), 0, 0, 360, (40, 36, 34), -1)
    cv2.polylines(frame, [np.array([[60, 390], [140, 250], [170, 160]])], False, (50, 50, 50), 2)
    found = sorted((d.label, d.box[0], d.box[1], d.box[2], d.score) for d in model.run(frame))
    mirrored_found = sorted(
        (d.label, 640 - d.box[2], d.box[1], 640 - d.box[0], d.score)
        for d in model.run(frame[:, ::-1].copy())
    )
    assert found and [f[0] for f in found] == [f[0] for f in mirrored_found]
    np.testing.assert_allclose([f[1:] for f in found], [f[1:] for f in mirrored_found], atol=0.01)
    with pytest.raises(SystemExit, match="already averages the mirrored frame"):
        join([out, package], [member_spec(out), spec])
