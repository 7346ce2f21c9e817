"""The shipped model packages load through their model.yaml and do their job."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from firmware_sim.aerial import CLASSES, tile
from models.runtime import LoadedModel
from models.training.train_aerial import match

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def small_recall(model: LoadedModel, seed: int) -> float:
    t = tile(seed)
    found = model.run(t.image)
    boxes = np.asarray([f.box for f in found], np.float32).reshape(-1, 4)
    classes = np.asarray([CLASSES.index(f.label) for f in found], np.int64)
    hit, _ = match(t.boxes, t.classes, boxes, classes)
    small = np.maximum(t.boxes[:, 2] - t.boxes[:, 0], t.boxes[:, 3] - t.boxes[:, 1]) < 32
    return float(hit[small].mean())


def test_the_aerial_model_finds_small_objects_with_tiling_and_not_without() -> None:
    model = LoadedModel.load(ZOO / "aerial", threads=1)
    try:
        assert model.spec.tiling.enabled
        tiled = small_recall(model, 2005)  # a held-out seed
        model.spec = model.spec.model_copy(
            update={"tiling": model.spec.tiling.model_copy(update={"enabled": False})}
        )
        whole = small_recall(model, 2005)
    finally:
        model.close()
    assert tiled >= 0.8
    assert whole < 0.2


async def test_the_registry_is_ready_at_once_and_inference_waits_for_the_load() -> None:
    import asyncio

    from models.registry import ModelRegistry

    registry = ModelRegistry({"road": ZOO / "road_defect"}, threads=1)
    loaded_when_ready: list[bool] = []
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(
            registry.run(lambda: loaded_when_ready.append(registry.loaded.is_set())),
            name="test.registry",
        )
        await asyncio.sleep(0)
        assert loaded_when_ready == [False]  # other devices need not wait for the model
        frame = np.full((480, 640, 3), 100, np.uint8)
        found = await registry.infer("road", frame)  # waits for the load, then runs
        assert registry.loaded.is_set()
        assert isinstance(found, list)
        task.cancel()
