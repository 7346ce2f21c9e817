"""A node with a camera and models, end to end: the simulated IP camera, the exported
YOLOv8 fixture in onnxruntime, the outbox and a real broker."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import yaml

from drivers.camera.driver import CameraConfig, CameraDriver
from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.camera import CameraServer
from gateway.app import Gateway
from gateway.config import (
    HttpSection,
    ModelsSection,
    MqttSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
    TlsSection,
)
from gateway.plugins import DriverRegistry
from tests.gateway.test_mqtt_contract import schema
from tests.mqtt import Collector, Received, collect, command
from tests.operator import operator_security

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def node_config(tmp_path: Path, broker: MosquittoBroker, url: str) -> NodeConfig:
    store = tmp_path / "store"  # where packages are pushed; models.swap loads from here
    broken = store / "broken"  # a corrupt .onnx whose model.yaml has the matching sha256
    shutil.copytree(FIXTURES / "yolov8-tiny", broken)
    shutil.copytree(FIXTURES / "yolov5-tiny", store / "yolov5-tiny")
    garbage = b"not an onnx file"
    (broken / "model.onnx").write_bytes(garbage)
    spec = yaml.safe_load((broken / "model.yaml").read_text())
    spec["sha256"] = hashlib.sha256(garbage).hexdigest()
    (broken / "model.yaml").write_text(yaml.safe_dump(spec))
    return NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path / "data"),
        mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
        outbox=OutboxSection(commit_interval=0.01),
        http=HttpSection(enabled=True, port=free_port()),
        models=ModelsSection(
            packages={"road": FIXTURES / "yolov8-tiny", "broken": broken}, store=store
        ),
        security=operator_security(["models"]),
        devices=[
            CameraConfig.model_validate(
                {
                    "id": "cam1",
                    "type": "camera",
                    "source": url,
                    "fps": 4,
                    "model": "road",
                    "motion": {"enabled": False},
                }
            ),
            CameraConfig.model_validate(
                {"id": "cam2", "type": "camera", "source": url, "fps": 4, "model": "broken"}
            ),
        ],
    )


@asynccontextmanager
async def camera_node(cfg: NodeConfig) -> AsyncIterator[Gateway]:
    registry = DriverRegistry()
    registry.add(CameraDriver, "cityneuron", "camera")
    gw = Gateway(cfg, registry=registry)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 30)
        try:
            yield gw
        finally:
            gw.request_stop()


def pictures(sub: Collector) -> list[Received]:
    return sub.matching(lambda m: "/snapshots/" in m.topic)


def detections(sub: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on("/events/detection")]


async def test_detections_and_their_pictures_arrive_upstream(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with CameraServer(fps=10) as camera:
        cfg = node_config(tmp_path, broker, camera.url)
        async with (
            collect(broker, "cityneuron/v1/n1/#", "test/replies") as sub,
            camera_node(cfg) as gw,
        ):
            await sub.wait(lambda: len(pictures(sub)) >= 2, timeout=30)
            validator = schema("detection")
            for det in detections(sub):
                validator.validate(det)
            pictured = [d for d in detections(sub) if "snapshot" in d]
            assert pictured, "detections name their picture"
            assert {d["camera"] for d in detections(sub)} == {"cam1"}
            first = pictured[0]
            (picture,) = sub.on(f"/{first['snapshot']}")
            assert picture.properties.ContentType == "image/jpeg"
            image = cv2.imdecode(np.frombuffer(picture.payload, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (240, 320, 3)
            # the picture comes after every detection of its frame
            frame = [d["id"] for d in detections(sub) if d["frame_id"] == first["frame_id"]]
            assert frame
            assert all(
                sub.messages.index(m) < sub.messages.index(picture)
                for m in sub.on("/events/detection")
                if m.json()["id"] in frame
            )

            # the broken model is reported, the camera using it stays up, the node runs
            status = await command(sub, "models.status", {})
            result: Any = status["result"]
            assert result["road"]["loaded"] is True
            assert result["broken"]["loaded"] is False
            assert "onnxruntime cannot load" in result["broken"]["reason"]
            assert gw.drivers["cam2"].ctx.online is True

            # metrics: camera counters and inference time
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{cfg.http.port}/metrics") as resp,
            ):
                text = await resp.text()
            assert 'cityneuron_camera_detections_total{camera="cam1"}' in text
            assert 'cityneuron_model_inference_seconds_count{model="road"}' in text
            assert 'cityneuron_model_loaded{model="broken"} 0.0' in text


async def test_a_model_is_swapped_while_the_camera_runs_and_a_bad_one_refused(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with CameraServer(fps=10) as camera:
        cfg = node_config(tmp_path, broker, camera.url)
        async with (
            collect(broker, "cityneuron/v1/n1/events/#", "test/replies") as sub,
            camera_node(cfg) as gw,
        ):
            await sub.wait(lambda: len(detections(sub)) >= 1, timeout=30)
            bad = await command(sub, "models.swap", {"name": "road", "path": "broken"})
            assert bad["ok"] is False
            assert bad["error"]["code"] == "model_refused"  # type: ignore[index]
            # a folder outside the model store is never looked at (absolute, or climbing out)
            for outside in (str(FIXTURES / "yolov5-tiny"), "../../", "yolov5-tiny/../.."):
                far = await command(sub, "models.swap", {"name": "road", "path": outside})
                assert far["error"]["code"] == "outside_store", outside  # type: ignore[index]
                assert "sha256" not in str(far)
            unsigned = await command(
                sub, "models.swap", {"name": "road", "path": "yolov5-tiny"}, sign=False
            )
            assert unsigned["error"]["code"] == "unauthorized"  # type: ignore[index]
            assert gw.models is not None
            assert gw.models.get("road").spec.name == "yolov8-tiny"
            reply = await command(sub, "models.swap", {"name": "road", "path": "yolov5-tiny"})
            assert reply["result"] == {"name": "road", "model": "yolov5-tiny", "version": "1"}
            assert gw.models is not None
            assert gw.models.get("road").spec.name == "yolov5-tiny"
            inferred = gw.models.get("road").inferences
            await sub.wait(
                lambda: gw.models is not None and gw.models.get("road").inferences > inferred + 3
            )
            unknown = await command(sub, "models.swap", {"name": "nope", "path": "yolov5-tiny"})
            assert unknown["error"]["code"] == "unknown_model"  # type: ignore[index]
