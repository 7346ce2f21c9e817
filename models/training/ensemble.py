"""Join road packages into one: their networks side by side in one ONNX graph, the heads
averaged, decoded once (an ensemble a node runs as one model).

    .venv/bin/python -m models.training.ensemble ../shared/data/road-dnit \\
        models/zoo/road_defect /work/train-runs/scale45 --out /work/train-runs/ensemble

Each package's graph is cut after its three head convolutions (the heat, box and
segmentation logits of ``road_net.CentreNet``), its names prefixed, its input shared;
the logits of the members are averaged (ONNX ``Mean``) and decoded by the first member's
own decoding subgraph (``road_net.Decoder`` as exported), so the ensemble decodes exactly
as one network's package does. A member may itself be an ensemble: it is weighted by the
number of networks in it (recorded in the graph's metadata as ``networks``), so that
adding a network to a shipped ensemble gives the plain average of all the networks.
``PACKAGE#N`` names network N (from 0) of an ensemble package, decoded as that package
decodes: to swap one network of a shipped ensemble for another, e.g. a retrained one.
Needs no torch. The crack-mask threshold and the per-class score thresholds are then
chosen on ``val.txt`` through the product runtime, by the criterion ``train_road``
selects checkpoints with (pothole AP50 + crack-region F1); ``test.txt`` is for
``road_eval`` afterwards. Members refit on train + val (``train_road --refit``) cannot be
judged on val: ``--thresholds-from ENSEMBLE_LOG`` takes the thresholds from the
``ensemble-log.json`` of the ensemble of the same recipes that val chose them for, and
nothing is measured on val. ``--flip`` adds each network once more on the mirror image
of the frame (test-time augmentation): its logits are mirrored back, the box's x offset
negated, and averaged with the others (twice the compute). The members must be packages
of the road recipe with crack regions from the mask, all at the same input size and
output stride.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import onnx
import onnx.utils
import yaml

from models.decoders import region_classes
from models.package import MaskOutput
from models.runtime import LoadedModel
from models.training.road_data import add_hold_out, load_split
from models.training.road_eval import MASK_GRID, evaluate, pick_thresholds, run_frames

HEADS = ("/heat/Conv_output_0", "/box/Conv_output_0", "/seg/Conv_output_0")
INPUT_NAME = "images"
NETWORKS = "networks"  # metadata key: how many networks an ensemble averages
MIRRORED = "mirrored"  # metadata key, "1": the networks also see the mirrored frame
INT64_MIN = -(2**63)


def member_spec(path: Path) -> dict[str, Any]:
    """A member's model.yaml, checked to be a road package with crack regions from the mask."""
    try:
        spec: dict[str, Any] = yaml.safe_load((path / "model.yaml").read_text())
        masks = spec["output"]["masks"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a road package with a crack mask ({exc})") from None
    if masks is None or spec["output"].get("decoder") != "yolov8":
        raise SystemExit(f"{path}: not a road package with a crack mask (output.masks)")
    if isinstance(masks, list):
        raise SystemExit(
            f"{path}: reads classes from more than one mask output (a fine head); "
            "ensembles join networks with the crack mask only"
        )
    return spec


def graph_of(path: Path, spec: dict[str, Any]) -> onnx.ModelProto:
    """A member's ONNX graph, checked to have the road heads, its tensors typed (the
    extractor needs the heads' types)."""
    model = onnx.load(str(path / spec["file"]))
    produced = {o for n in model.graph.node for o in n.output}
    missing = [h for h in HEADS if h not in produced]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)} in the graph (not a road_net export)")
    return onnx.shape_inference.infer_shapes(model)


def networks(model: onnx.ModelProto) -> int:
    """How many networks a member's heads average: the ``networks`` metadata an ensemble
    is written with, else the inputs of the ``Mean`` that makes its heat logits (an
    ensemble joined before the metadata existed), else one."""
    for prop in model.metadata_props:
        if prop.key == NETWORKS:
            if not prop.value.isdigit() or int(prop.value) < 1:
                raise SystemExit(f"metadata {NETWORKS}={prop.value!r} is not a count of networks")
            return int(prop.value)
    for node in model.graph.node:
        if HEADS[0] in node.output:
            return len(node.input) if node.op_type == "Mean" else 1
    return 1


def mirrored(model: onnx.ModelProto) -> bool:
    return any(p.key == MIRRORED and p.value == "1" for p in model.metadata_props)


def weights(counts: list[int]) -> list[onnx.TensorProto]:
    """Each member's share of the average (its networks over all of them), one scalar per
    member; none when the members weigh the same (a plain ``Mean``)."""
    if len(set(counts)) == 1:
        return []
    total = sum(counts)
    return [
        onnx.helper.make_tensor(f"weight/m{i}", onnx.TensorProto.FLOAT, [], [n / total])
        for i, n in enumerate(counts)
    ]


def average(head: str, shares: list[onnx.TensorProto], members: int) -> list[onnx.NodeProto]:
    """The members' logits of `head` averaged, weighted by `shares` when there are any."""
    inputs = [f"m{i}/{head}" for i in range(members)]
    if not shares:
        return [onnx.helper.make_node("Mean", inputs, [head], name=f"mean{head}")]
    scaled = [f"{name}*share" for name in inputs]
    return [
        onnx.helper.make_node("Mul", [x, w.name], [y], name=f"weigh/{y}")
        for x, w, y in zip(inputs, shares, scaled, strict=True)
    ] + [onnx.helper.make_node("Sum", scaled, [head], name=f"mean{head}")]


def network_of(model: onnx.ModelProto, index: int) -> onnx.ModelProto:
    """Network `index` of an ensemble as a graph of its own: the input to that member's
    head logits (renamed to the plain head names), then the ensemble's decoder."""
    names = [f"m{index}/{h}" for h in HEADS]
    makers = {o: n for n in model.graph.node for o in n.output}
    if not all(name in makers for name in names):
        raise SystemExit(f"no network {index} in this package (it holds {networks(model)})")
    if makers[names[0]].op_type != "Conv":
        raise SystemExit(f"member {index} is itself an ensemble: take the network from it")
    cut = onnx.utils.Extractor(model).extract_model([INPUT_NAME], names)
    plain = dict(zip(names, HEADS, strict=True))
    for node in cut.graph.node:
        node.output[:] = [plain.get(o, o) for o in node.output]
    decoder = decoder_graph(model)
    network = assemble(
        "road-network",
        list(cut.graph.input),
        list(cut.graph.node) + list(decoder.graph.node),
        list(cut.graph.initializer) + list(decoder.graph.initializer),
        list(decoder.graph.output),
        networks=1,
    )
    return onnx.shape_inference.infer_shapes(network)


def assemble(
    name: str,
    inputs: list[onnx.ValueInfoProto],
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    networks: int,
    flip: bool = False,
) -> onnx.ModelProto:
    """A checked model of these nodes (opset 17, IR 10, as the road exports), recording how
    many networks it averages and whether they see the mirrored frame too."""
    graph = onnx.helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    props = {NETWORKS: str(networks)} | ({MIRRORED: "1"} if flip else {})
    onnx.helper.set_model_props(model, props)
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def source(text: str) -> tuple[Path, int | None]:
    """A member argument: a package folder, or ``FOLDER#N`` for network N of an ensemble."""
    folder, sep, index = text.rpartition("#")
    if not sep:
        return Path(text), None
    if not index.isdigit():
        raise SystemExit(f"{text}: #N must name a network by its number (0, 1, ...)")
    return Path(folder), int(index)


def heads(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """The graph from the input to the head logits, every name prefixed except the input's."""
    cut = onnx.utils.Extractor(model).extract_model([INPUT_NAME], list(HEADS))
    cut = onnx.compose.add_prefix(cut, prefix)
    for node in cut.graph.node:
        node.input[:] = [INPUT_NAME if e == prefix + INPUT_NAME else e for e in node.input]
    return cut


MIRROR_AXIS = [  # Slice inputs that reverse the last axis (the width) of a tensor
    onnx.helper.make_tensor(f"mirror/{name}", onnx.TensorProto.INT64, [1], [value])
    for name, value in (("starts", -1), ("ends", INT64_MIN), ("axes", 3), ("steps", -1))
]
BOX_SIGN = onnx.helper.make_tensor(  # x offset (dx) negated, the rest as it is
    "mirror/box_sign", onnx.TensorProto.FLOAT, [1, 4, 1, 1], [-1.0, 1.0, 1.0, 1.0]
)


def mirror(tensor: str, out: str) -> onnx.NodeProto:
    """`tensor` reversed along its width."""
    names = [t.name for t in MIRROR_AXIS]
    return onnx.helper.make_node("Slice", [tensor, *names], [out], name=f"mirror/{out}")


def mirrored_heads(model: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """`heads` of the mirrored frame, its logits mirrored back into the frame's own: the
    heat and segmentation maps reversed along the width, and the box's x offset negated
    (both box decodings put the centre at the cell plus a term in the offset's logit
    that is odd around the cell's middle: sigmoid(-x) = 1 - sigmoid(x), or x itself)."""
    cut = heads(model, prefix)
    seen = f"{INPUT_NAME}/mirrored"
    for node in cut.graph.node:
        node.input[:] = [seen if e == INPUT_NAME else e for e in node.input]
        node.output[:] = [f"{o}/mirrored" if o[len(prefix) :] in HEADS else o for o in node.output]
    heat, box, seg = (prefix + head for head in HEADS)
    cut.graph.node.extend(
        [
            mirror(f"{heat}/mirrored", heat),
            mirror(f"{seg}/mirrored", seg),
            mirror(f"{box}/mirrored", f"{box}/unsigned"),
            onnx.helper.make_node(
                "Mul", [f"{box}/unsigned", BOX_SIGN.name], [box], name=f"sign/{box}"
            ),
        ]
    )
    return cut


def decoder_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph from the head logits to the outputs (``road_net.Decoder`` as exported):
    the decoding every member shares, run once on the averaged logits."""
    outputs = [o.name for o in model.graph.output]
    return onnx.utils.Extractor(model).extract_model(list(HEADS), outputs)


def decoding(decoder: onnx.ModelProto) -> int:
    """The sigmoids of a decoding subgraph: those of the heat and segmentation logits, and
    with ``train_road --boxes centre`` the two box offsets squashed into their cell (the
    node order is no guide: the int8 export rearranges it). Members whose counts differ
    have box logits that mean different things."""
    return sum(n.op_type == "Sigmoid" for n in decoder.graph.node)


def join(
    paths: list[Path],
    specs: list[dict[str, Any]],
    picks: list[int | None] | None = None,
    flip: bool = False,
) -> onnx.ModelProto:
    """One graph: every member's cut graph on the shared input, then the mean decoder;
    `picks` takes one network of a member that is an ensemble (``network_of``); `flip`
    runs every member on the mirrored frame as well (``mirrored_heads``)."""
    size = tuple(specs[0]["input"]["size"])
    if any(tuple(s["input"]["size"]) != size for s in specs):
        raise SystemExit("the members' input sizes differ: " + ", ".join(map(str, paths)))
    graphs = [graph_of(p, s) for p, s in zip(paths, specs, strict=True)]
    for path, graph in zip(paths, graphs, strict=True):
        if mirrored(graph):
            raise SystemExit(
                f"{path}: already averages the mirrored frame; join the packages it was "
                "made of, with --flip if wanted"
            )
    for i, pick in enumerate(picks or []):
        if pick is not None:
            graphs[i] = network_of(graphs[i], pick)
    if len(graphs) == 1 and not flip:  # one network of an ensemble: nothing to average
        return graphs[0]
    cuts = [heads(g, f"m{i}/") for i, g in enumerate(graphs)]
    if flip:
        cuts += [mirrored_heads(g, f"m{len(graphs) + i}/") for i, g in enumerate(graphs)]
    shapes = [  # channels, height, width of each head (the batch may be symbolic)
        [[d.dim_value for d in o.type.tensor_type.shape.dim[1:]] for o in c.graph.output]
        for c in cuts
    ]
    if any(s != shapes[0] for s in shapes):
        raise SystemExit(
            "the members' heads differ in shape (output stride or classes): "
            + ", ".join(map(str, paths))
        )
    decoders = [decoder_graph(g) for g in graphs]
    if any(decoding(d) != decoding(decoders[0]) for d in decoders):
        raise SystemExit(
            "the members decode their heads differently (e.g. train_road --boxes centre "
            "and dense): " + ", ".join(map(str, paths))
        )
    decoder = decoders[0]
    counts = [networks(g) for g in graphs]
    shares = weights(counts * 2 if flip else counts)
    images = onnx.ValueInfoProto()
    images.CopyFrom(cuts[0].graph.input[0])
    images.name = INPUT_NAME
    flipping = [mirror(INPUT_NAME, f"{INPUT_NAME}/mirrored")] if flip else []
    constants = [*MIRROR_AXIS, BOX_SIGN] if flip else []
    return assemble(
        "road-ensemble",
        [images],
        flipping
        + [n for c in cuts for n in c.graph.node]
        + [n for head in HEADS for n in average(head, shares, len(cuts))]
        + list(decoder.graph.node),
        constants
        + [t for c in cuts for t in c.graph.initializer]
        + shares
        + list(decoder.graph.initializer),
        list(decoder.graph.output),
        networks=sum(counts),
        flip=flip,
    )


def write(out: Path, model: onnx.ModelProto, spec: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    onnx.save(model, str(path))
    spec["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def choose(out: Path, data: Path, hold_out: list[str]) -> dict[str, Any]:
    """The crack-mask threshold and score thresholds with the best pothole AP50 + crack F1
    on val.txt (and the held-out training frames), through the runtime; written into
    out/model.yaml."""
    frames = load_split(data, "val", hold_out)
    model = LoadedModel.load(out, threads=2)
    base = model.spec
    masks = base.output.masks
    assert isinstance(masks, MaskOutput)  # member_spec checked it
    regions = region_classes(base)
    best: dict[str, Any] | None = None
    for t in MASK_GRID:
        output = base.output.model_copy(update={"masks": masks.model_copy(update={"threshold": t})})
        model.spec = base.model_copy(update={"output": output})
        preds, _ = run_frames(model, frames)
        thresholds = pick_thresholds(frames, preds, regions)
        figures = evaluate(frames, preds, thresholds, regions)
        score = figures["pothole"]["ap50"] + figures["crack"]["f1"]
        print(json.dumps({"mask_threshold": t, "criterion": round(score, 4)} | figures), flush=True)
        if best is None or score > best["criterion"]:
            best = {"criterion": score, "mask_threshold": t}
            best |= {"thresholds": thresholds, "val": figures}
    assert best is not None
    return best


def chosen_from(log: Path, classes: list[str]) -> dict[str, Any]:
    """The crack-mask threshold and score thresholds that an earlier ensemble chose on val,
    from its ensemble-log.json, checked to be probabilities for exactly these classes."""
    try:
        chosen = json.loads(log.read_text())
        mask = float(chosen["mask_threshold"])
        thresholds = {str(k): float(v) for k, v in chosen["thresholds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SystemExit(f"--thresholds-from {log}: not an ensemble-log.json ({exc})") from None
    if sorted(thresholds) != sorted(classes):
        raise SystemExit(
            f"--thresholds-from {log}: thresholds for {sorted(thresholds)}, "
            f"the members' classes are {sorted(classes)}"
        )
    if not all(0 < t < 1 for t in [mask, *thresholds.values()]):
        raise SystemExit(f"--thresholds-from {log}: thresholds must lie between 0 and 1")
    return {"thresholds_from": str(log), "mask_threshold": mask, "thresholds": thresholds}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", type=Path, help="the road-dnit folder (val.txt chooses the thresholds)")
    ap.add_argument(
        "members",
        type=source,
        nargs="+",
        help="road packages (folders with model.yaml); FOLDER#N: network N of an ensemble",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--thresholds-from",
        type=Path,
        metavar="ENSEMBLE_LOG",
        help="take the crack-mask and score thresholds from the ensemble-log.json of an "
        "ensemble of the same recipes chosen on val (for members refit on train + val); "
        "nothing is measured on val",
    )
    ap.add_argument(
        "--flip",
        action="store_true",
        help="run every network on the mirrored frame too and average that in "
        "(test-time augmentation; twice the compute)",
    )
    add_hold_out(ap)
    args = ap.parse_args()
    paths, picks = [p for p, _ in args.members], [k for _, k in args.members]
    if len(paths) < 2 and picks[0] is None and not args.flip:
        raise SystemExit(
            "an ensemble needs two or more packages (or FOLDER#N: one network, or --flip)"
        )
    specs = [member_spec(p) for p in paths]
    model = join(paths, specs, picks, flip=args.flip)
    count = networks(model)
    what = (
        f"An ensemble of {count} road networks (heads averaged)" if count > 1 else "A road network"
    )
    if args.flip:
        what += ", each also run on the mirrored frame"
    spec = dict(specs[0])
    spec |= {
        "name": "road-defect",
        "version": time.strftime("%Y.%m.%d"),
        "description": (
            f"{what} for cracks (crack regions) and potholes from a forward-looking vehicle "
            "camera; trained on the road-dnit frames (Passos et al., doi:10.17632/t576ydh9v8.4) "
            "by models/training/train_road.py, joined by models/training/ensemble.py."
        ),
    }
    write(args.out, model, spec)
    if args.thresholds_from is not None:
        best = chosen_from(args.thresholds_from, list(spec["classes"]))
    else:
        best = choose(args.out, args.data, args.hold_out)
    thresholds = best["thresholds"]
    spec["output"]["masks"]["threshold"] = best["mask_threshold"]
    spec["thresholds"] = spec["thresholds"] | {
        "score": min(thresholds.values()),
        "per_class": thresholds,
    }
    write(args.out, model, spec)
    log = {"members": [f"{p}#{k}" if k is not None else str(p) for p, k in args.members]}
    log |= {"hold_out": args.hold_out} if args.hold_out else {}
    log |= best
    (args.out / "ensemble-log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps(log), flush=True)


if __name__ == "__main__":
    main()
