"""The node's loaded models, by name: loaded at start, swapped atomically while running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.kernel.component import Ready
from gateway.kernel.inference import FoundObject
from models.package import ModelError
from models.runtime import LoadedModel

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Component owning the model sessions. A package that fails to load is reported and
    left out (cameras using it report why); the node keeps running."""

    name = "models"

    def __init__(
        self, packages: Mapping[str, Path], *, threads: int = 2, watchdog: float = 10.0
    ) -> None:
        self.packages = dict(packages)
        self.threads = threads
        self.watchdog = watchdog
        self.models: dict[str, LoadedModel] = {}
        self.failures: dict[str, str] = {}
        self._lock = asyncio.Lock()
        # the node does not wait for the models (loading and warming up takes seconds):
        # the other devices start at once, and a camera's first inference waits for this
        self.loaded = asyncio.Event()

    async def _load(self, name: str, directory: Path) -> LoadedModel:
        return await asyncio.to_thread(LoadedModel.load, directory, threads=self.threads)

    async def run(self, ready: Ready) -> None:
        ready()
        try:
            for name, directory in self.packages.items():
                try:
                    self.models[name] = await self._load(name, directory)
                    logger.info("model %s loaded from %s", name, directory)
                except ModelError as exc:
                    self.failures[name] = str(exc)
                    logger.error("model %s not loaded: %s", name, exc)  # noqa: TRY400
            self.loaded.set()
            await asyncio.Event().wait()
        finally:
            self.loaded.clear()
            for model in self.models.values():
                await asyncio.to_thread(model.close)
            self.models.clear()

    def get(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            why = self.failures.get(name) or (
                "not loaded yet" if name in self.packages else "no such model in the config"
            )
            raise LookupError(f"model {name!r}: {why}")
        return model

    async def infer(self, name: str, image: Any) -> list[FoundObject]:
        if not self.loaded.is_set() and name in self.packages:
            await self.loaded.wait()
        return await self.get(name).infer(image, self.watchdog)

    async def swap(self, name: str, directory: Path) -> LoadedModel:
        """Load `directory` and make it model `name` in one step; the old one is closed
        after in-flight inferences finish. Raises ModelError and keeps the old model."""
        async with self._lock:
            new = await self._load(name, directory)
            old = self.models.get(name)
            self.models[name] = new
            self.packages[name] = directory
            self.failures.pop(name, None)
        if old is not None:
            await asyncio.to_thread(old.close)
        logger.info("model %s now runs %s %s", name, new.spec.name, new.spec.version)
        return new

    def status(self) -> dict[str, Any]:
        return {
            name: (
                {
                    "loaded": True,
                    "model": m.spec.name,
                    "version": m.spec.version,
                    "inferences": m.inferences,
                    "hung": m.hung,
                    "mean_ms": round(1000 * m.total_seconds / m.inferences, 2)
                    if m.inferences
                    else None,
                }
                if (m := self.models.get(name)) is not None
                else {"loaded": False, "reason": self.failures.get(name, "loading")}
            )
            for name in self.packages
        }
