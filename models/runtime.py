"""Running a model package with onnxruntime, off the event loop, under a watchdog."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gateway.kernel.inference import FoundObject
from models.api import Decoded, DecodeError, DecodeFn
from models.decoders import (
    classification,
    merge_regions,
    nms,
    region_classes,
)
from models.package import ModelError, ModelSpec, load_spec, verify_file
from models.plugins import DecoderRegistry, installed_decoders
from models.preprocess import prepare

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


class ModelHung(RuntimeError):  # noqa: N818 - a state, like TimeoutError
    """An inference did not finish within the watchdog's limit."""


def _dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


class LoadedModel:
    """A model package ready to run: spec checked, file verified, session warmed up."""

    def __init__(
        self,
        directory: Path,
        spec: ModelSpec,
        session: ort.InferenceSession,
        decoder: DecodeFn | None = None,
    ) -> None:
        self.directory = directory
        self.spec = spec
        self.session = session
        self._decoder = decoder or _no_decoder
        self.input_name = session.get_inputs()[0].name
        self.inferences = 0
        self.total_seconds = 0.0
        self.last_seconds = 0.0
        self.hung = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{spec.name}")

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def load(
        cls, directory: Path, *, threads: int = 2, decoders: DecoderRegistry | None = None
    ) -> LoadedModel:
        """Load and verify a package (blocking: call it in a thread); its decoder comes
        from `decoders` (the built-in ones and the installed plugins by default)."""
        spec = load_spec(directory)
        decoder = None
        if spec.task == "detect":
            try:
                decoder = (decoders or installed_decoders()).get(spec.output.decoder)
            except LookupError as exc:
                raise ModelError(f"{directory / 'model.yaml'}: output.decoder: {exc}") from None
        path = verify_file(directory, spec)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting threads between frames: an edge box has other work to do
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no arena: the activations are freed after each frame and go back to the system
        # (with the node's fixed mmap threshold), not kept for the next one; same speed
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own broad types
            raise ModelError(f"{path}: onnxruntime cannot load it: {exc}") from None
        model = cls(directory, spec, session, decoder)
        model._check_input()
        model.warm_up()
        return model

    def _check_input(self) -> None:
        inp = self.session.get_inputs()[0]
        dims = _dims(inp.shape)
        w, h = self.spec.input.size
        want = [1, 3, h, w] if self.spec.input.layout == "NCHW" else [1, h, w, 3]
        if len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims, want, strict=True)):
            raise ModelError(
                f"{self.directory}: the model's input {inp.name} is {inp.shape}, model.yaml "
                f"describes {want} ({self.spec.input.layout}, size {w}x{h})"
            )
        expected = {
            "float32": "tensor(float)",
            "float16": "tensor(float16)",
            "uint8": "tensor(uint8)",
        }[self.spec.input.dtype]
        if inp.type != expected:
            raise ModelError(
                f"{self.directory}: the model's input is {inp.type}, model.yaml "
                f"says {self.spec.input.dtype}"
            )

    def warm_up(self) -> None:
        w, h = self.spec.input.size
        self.run(np.zeros((h, w, 3), np.uint8))

    # --- inference ---------------------------------------------------------------------

    def raw(self, tensor: npt.NDArray[np.generic]) -> list[npt.NDArray[np.generic]]:
        return self.session.run(None, {self.input_name: tensor})  # type: ignore[no-any-return]

    def _detect(self, image: Image, offset: tuple[int, int] = (0, 0)) -> Decoded:
        tensor, transform = prepare(image, self.spec.input)
        outputs = self.raw(tensor)
        try:
            d = self._decoder(outputs, self.spec)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"decoder {self.spec.output.decoder!r} failed: {exc!r}") from exc
        if not isinstance(d, Decoded):
            raise DecodeError(
                f"decoder {self.spec.output.decoder!r} returned {type(d).__name__}, not Decoded"
            )
        boxes = transform.to_frame(d.boxes)
        if offset != (0, 0):
            boxes = boxes + np.asarray([*offset, *offset], np.float32)
        return Decoded(boxes, d.scores, d.classes)

    def run(self, image: Image) -> list[FoundObject]:
        """Detections (or the class, for classifiers) in frame pixels; blocking."""
        started = time.perf_counter()
        try:
            if self.spec.task == "classify":
                tensor, _ = prepare(image, self.spec.input)
                best, prob, _ = classification(self.raw(tensor), self.spec)
                h, w = image.shape[:2]
                label = self.spec.label_names[self.spec.label_index[best]]
                found = [FoundObject(label, prob, (0.0, 0.0, float(w), float(h)))]
                return found if prob >= self.spec.score_threshold(best) else []
            d = self._tiled(image) if self.spec.tiling.enabled else self._detect(image)
        except DecodeError as exc:
            raise ModelError(f"model {self.name}: {exc}") from None
        finally:
            self.last_seconds = time.perf_counter() - started
            self.total_seconds += self.last_seconds
            self.inferences += 1
        h, w = image.shape[:2]
        out = []
        for box, score, cls in zip(d.boxes, d.scores, d.classes, strict=True):
            x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
            x2, y2 = min(float(w), float(box[2])), min(float(h), float(box[3]))
            if x2 > x1 and y2 > y1:
                label = self.spec.label_names[int(cls)]
                out.append(FoundObject(label, float(score), (x1, y1, x2, y2)))
        return out

    def _tiled(self, image: Image) -> Decoded:
        """Sliced inference: overlapping tiles at native resolution, merged by NMS."""
        tiling = self.spec.tiling
        tw, th = tiling.tile or self.spec.input.size
        h, w = image.shape[:2]
        parts: list[Decoded] = []
        for y in _starts(h, th, tiling.overlap):
            for x in _starts(w, tw, tiling.overlap):
                tile = np.ascontiguousarray(image[y : y + th, x : x + tw])
                parts.append(self._detect(tile, (x, y)))
        if tiling.full_frame and (w > tw or h > th):
            parts.append(self._detect(image))
        merged = Decoded(
            np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4), np.float32),
            np.concatenate([p.scores for p in parts]) if parts else np.zeros(0, np.float32),
            np.concatenate([p.classes for p in parts]) if parts else np.zeros(0, np.int32),
        )
        kept = nms(merged, self.spec.thresholds.iou, self.spec.max_detections)
        return merge_regions(kept, region_classes(self.spec))

    async def infer(self, image: Image, watchdog: float = 10.0) -> list[FoundObject]:
        """`run` on the model's own thread; raises `ModelHung` after `watchdog` seconds."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.run, image)
        try:
            async with asyncio.timeout(watchdog):
                return await future
        except TimeoutError:
            self.hung += 1
            # the stuck thread cannot be killed: leave it and carry on with a fresh one
            stuck, self._executor = (
                self._executor,
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.name}"),
            )
            stuck.shutdown(wait=False, cancel_futures=True)
            logger.error(  # noqa: TRY400 - a timeout, no traceback worth printing
                "model %s: inference took longer than %gs; continuing on a new thread",
                self.name,
                watchdog,
            )
            raise ModelHung(f"model {self.name}: inference exceeded {watchdog:g}s") from None

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _no_decoder(outputs: Sequence[Any], spec: ModelSpec) -> Decoded:
    raise DecodeError(f"model {spec.name} is a classifier; it has no box decoder")


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts
