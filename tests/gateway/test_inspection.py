"""Road inspection: a simulated street driven twice (firmware_sim.road gives the camera's
view and the GPS position per frame); every defect is reported once, then updated."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers.serial.driver import SerialConfig
from firmware_sim.broker import MosquittoBroker
from firmware_sim.road import RoadDefect, Street, View, drive, render, street
from gateway.app import Gateway
from gateway.bus import Bus
from gateway.config import (
    ConfigError,
    InspectionSection,
    LocationSection,
    MqttSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
    TlsSection,
    load_config,
)
from gateway.inspection import (
    Defect,
    DefectStore,
    InspectionService,
    InspectionSettings,
)
from gateway.kernel.geo import distance_m, move
from gateway.kernel.records import Detection, Reading, Severity
from gateway.location import LocationService
from gateway.snapshots import SnapshotStore
from tests.gateway.test_mqtt_contract import schema
from tests.mqtt import collect, command


@dataclass
class ManualClock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


def fixes(view: View, rng: random.Random, noise_m: float, ts: datetime) -> list[Reading]:
    lat, lon = move((view.lat, view.lon), rng.uniform(0, 360), rng.uniform(0, noise_m))
    speed = view.speed * 3.6  # km/h, as the GPS reports it
    return [
        Reading(device="gps", point=p, value=v, ts=ts)
        for p, v in (("lat", lat), ("lon", lon), ("heading", view.heading), ("speed", speed))
    ]


def detections(
    s: Street, view: View, rng: random.Random, flip: float = 0.0, ts: datetime | None = None
) -> list[Detection]:
    """What a good detector reports for `view`: the true boxes, a little jitter, a missed
    frame now and then, and with `flip` the other class in that share of the frames."""
    out = []
    frame_id = f"F{view.index:025d}"
    for k, box in view.visible:
        if rng.random() < 0.1:
            continue
        j = [v + rng.uniform(-2, 2) for v in box]
        label = s.defects[k].label
        if rng.random() < flip:
            label = "crack" if label == "pothole" else "pothole"
        out.append(
            Detection(
                camera="cam",
                model="road",
                label=label,
                score=rng.uniform(0.4, 0.9),
                box=(j[0], j[1], j[2], j[3]),
                frame_id=frame_id,
                frame_size=(640, 480),
                ts=ts or datetime.now(UTC),
            )
        )
    return out


class Harness:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.clock = ManualClock()
        self.location = LocationService(Bus(), source="gps", stale_after=60)
        self.snapshots = SnapshotStore()
        self.store = DefectStore(tmp_path / "inspection.db")
        defaults: dict[str, Any] = {"gap": 1.0, "ahead": 4.0}
        self.service = InspectionService(
            Bus(),
            self.store,
            locate=self.location.at,
            settings=InspectionSettings(**(defaults | settings)),
            snapshots=self.snapshots,
            clock=self.clock,
        )
        self.service.defects = self.store.load()

    def drive(
        self,
        s: Street,
        seed: int,
        *,
        gps_noise: float = 2.0,
        flip: float = 0.0,
        gps_every: int = 1,
    ) -> list[tuple[Defect, str]]:
        """Drive `s` at 8 m/s, 5 frames/s; the GPS reports with every `gps_every`-th frame."""
        rng = random.Random(seed)
        reports = []
        start, wall = self.clock.t, datetime.now(UTC)
        for view in drive(s, speed=8.0, fps=5.0):
            self.clock.t = start + view.t
            captured = wall + timedelta(seconds=view.t)
            if view.index % gps_every == 0:
                for r in fixes(view, rng, gps_noise, captured):
                    self.location.observe(r)
            dets = detections(s, view, rng, flip, captured)
            if dets and view.index % 3 == 0:  # the camera sends a picture now and then
                self.snapshots.put(dets[0].frame_id or "", b"\xff\xd8jpeg" + bytes([view.index]))
            for d in dets:
                self.service.observe(d)
            reports += self._reports()
        self.clock.t += 30  # the drive ends, everything seen has been passed
        return reports + self._reports()

    def _reports(self) -> list[tuple[Defect, str]]:
        out = []
        for track, defect, action in self.service.close_due():
            self.store.save(defect)
            event = self.service.event(track, defect, action)
            assert event.kind == "defect"
            out.append((defect, action))
        return out


def truth(s: Street, d: RoadDefect) -> tuple[float, float]:
    return s.position(d.along)


def nearest(s: Street, defect: Defect) -> tuple[RoadDefect, float]:
    return min(
        ((d, distance_m(truth(s, d), (defect.lat, defect.lon))) for d in s.defects),
        key=lambda dm: dm[1],
    )


def test_a_street_driven_twice_reports_each_defect_once_then_updates_it(
    tmp_path: Path,
) -> None:
    s = street(seed=3, length=400, defects=6)
    h = Harness(tmp_path)

    first = h.drive(s, seed=1)
    assert [a for _, a in first] == ["new"] * len(s.defects)
    placed = {}
    for defect, _ in first:
        true, metres = nearest(s, defect)
        assert defect.label == true.label
        assert metres < 5.0, f"{defect.label} placed {metres:.1f} m from where it is"
        placed[true.along] = defect.id
        assert defect.passes == 1
        assert defect.sightings >= 5  # many frames merged into one report
    assert len(placed) == len(s.defects)  # every defect reported, none twice

    second = h.drive(s, seed=2)
    assert [a for _, a in second] == ["update"] * len(s.defects)
    for defect, _ in second:
        true, _ = nearest(s, defect)
        assert placed[true.along] == defect.id  # the same defect, updated
        assert defect.passes == 2

    # after a restart the node still knows the street: a third drive updates again,
    # and a pothole that opened since is the only new report
    grown = Street(
        s.origin,
        s.heading,
        s.length,
        (*s.defects, RoadDefect("pothole", 380.0, 0.5, 0.9, 0.7, 99)),
        s.seed,
    )
    again = Harness(tmp_path)
    assert len(again.service.defects) == len(s.defects)
    third = again.drive(grown, seed=3)
    assert sorted(a for _, a in third) == ["new"] + ["update"] * len(s.defects)
    assert {d.passes for d, a in third if a == "update"} == {3}


def test_a_gps_reporting_once_a_second_still_places_each_defect_where_it_is(
    tmp_path: Path,
) -> None:
    # at 8 m/s the vehicle moves 8 m between two fixes: each sighting is placed where the
    # vehicle was when its frame was captured, dead-reckoned from the last fix
    s = street(seed=3, length=400, defects=6)
    h = Harness(tmp_path)
    reports = h.drive(s, seed=1, gps_noise=0.0, gps_every=5)
    assert [a for _, a in reports] == ["new"] * len(s.defects)
    for defect, _ in reports:
        true, metres = nearest(s, defect)
        assert defect.label == true.label
        assert metres < 2.0, f"{defect.label} placed {metres:.1f} m from where it is"


def test_a_detector_trading_classes_on_a_defect_still_reports_it_once(tmp_path: Path) -> None:
    s = street(seed=3, length=400, defects=6)
    h = Harness(tmp_path)
    reports = h.drive(s, seed=1, flip=0.3)  # the wrong class in 30 % of the frames
    assert [a for _, a in reports] == ["new"] * len(s.defects)
    for defect, _ in reports:
        true, metres = nearest(s, defect)
        assert defect.label == true.label  # the class with the most score wins
        assert metres < 5.0


def test_a_pothole_inside_a_crack_region_seen_in_the_same_frames_is_two_defects(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.location.observe(Reading(device="gps", point="lat", value=-30.0))
    h.location.observe(Reading(device="gps", point="lon", value=-51.2))
    for i in range(6):
        y = 200 + 10 * i
        for label, box in (
            ("crack", (200, y, 400, y + 100)),
            ("pothole", (220, y + 10, 380, y + 90)),
        ):
            h.service.observe(
                Detection(
                    camera="cam",
                    model="road",
                    label=label,
                    score=0.8,
                    box=box,
                    frame_id=f"F{i:025d}",
                    frame_size=(640, 480),
                )
            )
        h.clock.t += 0.2
    h.clock.t += 5
    reports = h.service.close_due()
    assert sorted((d.label, t.sightings) for t, d, _ in reports) == [("crack", 6), ("pothole", 6)]


def test_single_frame_false_positives_and_unplaced_detections_are_not_reported(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    svc = h.service
    for r in (
        Reading(device="gps", point="lat", value=-30.0),
        Reading(device="gps", point="lon", value=-51.2),
    ):
        h.location.observe(r)
    flash = Detection(
        camera="cam",
        model="road",
        label="pothole",
        score=0.9,
        box=(10, 300, 60, 330),
        frame_size=(640, 480),
    )
    svc.observe(flash)
    h.clock.t += 5
    assert svc.close_due() == []
    assert svc.counts["noise"] == 1

    # no fix: detections are counted, not placed anywhere
    h.location.fix.receiver_valid = False
    for _ in range(5):
        svc.observe(flash)
    assert svc.counts["unlocated"] == 5
    assert svc.tracks == []
    # labels outside the configured ones are ignored
    picky = Harness(tmp_path, labels=frozenset({"crack"}))
    picky.location.observe(Reading(device="gps", point="lat", value=-30.0))
    picky.location.observe(Reading(device="gps", point="lon", value=-51.2))
    picky.service.observe(flash)
    assert picky.service.tracks == []


def test_severity_follows_the_size_and_the_best_picture_is_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path, major=0.01, critical=0.05)
    h.location.observe(Reading(device="gps", point="lat", value=-30.0))
    h.location.observe(Reading(device="gps", point="lon", value=-51.2))
    for i, (score, size) in enumerate([(0.5, 40), (0.95, 80), (0.6, 200)]):
        frame = f"F{i:025d}"
        h.snapshots.put(frame, f"picture {i}".encode())
        y = 200 + i * 30
        h.service.observe(
            Detection(
                camera="cam",
                model="road",
                label="pothole",
                score=score,
                box=(300, y, 300 + size, y + size / 2),
                frame_id=frame,
                frame_size=(640, 480),
            )
        )
        h.clock.t += 0.2
    h.clock.t += 5
    ((track, defect, action),) = h.service.close_due()
    event = h.service.event(track, defect, action)
    assert event.severity == Severity.CRITICAL  # 200x100 px is 6.5 % of the frame
    assert event.data["size"]["box_px"] == [200, 100]
    assert event.data["sightings"] == 3 and event.data["score"] == 0.95
    assert event.snapshot == event.id
    assert h.snapshots.take(event.id) == b"picture 1"  # the best-scored frame's picture


def test_inspection_config_errors_are_clear(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("node: {id: n1}\ninspection: {enabled: true}\n")
    with pytest.raises(ConfigError, match="inspection needs a location"):
        load_config(cfg)
    cfg.write_text(
        "node: {id: n1}\nlocation: {source: gps}\ninspection: {enabled: true, cameras: [front]}\n"
    )
    with pytest.raises(ConfigError, match="inspection camera 'front' is not a configured"):
        load_config(cfg)
    cfg.write_text(
        "node: {id: n1}\nlocation: {source: gps}\n"
        "inspection: {enabled: true, severity: {major: 0.2, critical: 0.1}}\n"
    )
    with pytest.raises(ConfigError, match=r"severity\.critical must be at least"):
        load_config(cfg)


def jpeg(s: Street, view: View) -> bytes:
    ok, data = cv2.imencode(".jpg", render(s, view))
    assert ok
    return data.tobytes()


async def test_defect_events_with_pictures_arrive_upstream_once_per_defect(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The node's own bus, location service, outbox and uplink over a real broker; the
    GPS's and the camera's records are published on the bus as their drivers publish them
    (the GPS device is configured but not started: its readings follow the simulated
    street)."""
    s = street(seed=5, length=220, defects=3)
    cfg = NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path / "data"),
        mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
        outbox=OutboxSection(commit_interval=0.01),
        location=LocationSection(source="gps"),
        inspection=InspectionSection(enabled=True, gap=1.0, ahead=4.0),
        devices=[
            SerialConfig.model_validate(
                {
                    "id": "gps",
                    "type": "serial",
                    "port": "/dev/null",
                    "profile": "nmea_gps",
                    "enabled": False,
                }
            )
        ],
        http={"enabled": False},  # type: ignore[arg-type]
        discovery={"enabled": False},  # type: ignore[arg-type]
    )
    gw = Gateway(cfg)
    rng = random.Random(7)

    async def drive_once() -> None:
        for view in drive(s, speed=8.0, fps=5.0):  # faster than real time: fix per frame
            captured = datetime.now(UTC)
            for r in fixes(view, rng, 1.0, captured):
                await gw.bus.publish(r)
            dets = detections(s, view, rng, ts=captured)
            if dets:
                gw.snapshots.put(dets[0].frame_id or "", jpeg(s, view))
            for d in dets:
                await gw.bus.publish(d)
            await asyncio.sleep(0.02)

    def defects(sub: Any) -> list[dict[str, Any]]:
        return [m.json() for m in sub.on("/events/defect")]

    async with (
        collect(broker, "cityneuron/v1/n1/#", "test/replies") as sub,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 30)
        try:
            await drive_once()
            await sub.wait(lambda: len(defects(sub)) >= len(s.defects), timeout=15)
            first = defects(sub)
            validator = schema("event")
            for e in first:
                validator.validate(e)
            assert [e["data"]["action"] for e in first] == ["new"] * len(s.defects)
            assert [e["data"]["label"] for e in first] == [d.label for d in s.defects]
            for e in first:
                assert e["location"]["valid"] is True
                await sub.wait(lambda e=e: bool(sub.on(f"/snapshots/{e['snapshot']}")))
                picture = sub.on(f"/snapshots/{e['snapshot']}")
                assert len(picture) == 1
                image = cv2.imdecode(np.frombuffer(picture[0].payload, np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (480, 640, 3)

            await drive_once()
            await sub.wait(lambda: len(defects(sub)) >= 2 * len(s.defects), timeout=15)
            second = defects(sub)[len(s.defects) :]
            assert [e["data"]["action"] for e in second] == ["update"] * len(s.defects)
            assert [e["data"]["defect_id"] for e in second] == [
                e["data"]["defect_id"] for e in first
            ]
            assert {e["data"]["passes"] for e in second} == {2}
            status = await command(sub, "inspection.status", {})
            result: Any = status["result"]
            assert result["defects"] == len(s.defects)
            assert result["new"] == len(s.defects) and result["updated"] == len(s.defects)
            await asyncio.sleep(1.5)
            assert len(defects(sub)) == 2 * len(s.defects)  # nothing reported twice
        finally:
            gw.request_stop()
