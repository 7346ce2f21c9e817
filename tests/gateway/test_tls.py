"""TLS to a real Mosquitto with a test CA: verification on by default, client certificates."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.pki import Pki, make_pki
from gateway.config import MqttSection, TlsSection
from tests.gateway.test_uplink import config, running
from tests.helpers import CounterConfig
from tests.mqtt import collect, readings_of


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(workdir=tmp_path, tls=pki) as b:
        yield b


@pytest.fixture
def mtls_broker(tmp_path: Path, pki: Pki) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(workdir=tmp_path, tls=pki, require_certificate=True) as b:
        yield b


def tls_mqtt(broker: MosquittoBroker, **tls: object) -> MqttSection:
    return MqttSection(
        host="127.0.0.1",
        port=broker.tls_port,
        tls=TlsSection(**tls),
        keepalive=5,  # type: ignore[arg-type]
        reconnect_max=0.5,
    )


async def test_verified_tls_delivers(tmp_path: Path, tls_broker: MosquittoBroker, pki: Pki) -> None:
    cfg = config(tmp_path, tls_broker, CounterConfig(type="counter", id="c1", interval=0.01))
    cfg = cfg.model_copy(update={"mqtt": tls_mqtt(tls_broker, ca_file=pki.ca_cert)})
    async with collect(tls_broker, "cityneuron/v1/n1/#") as sub, running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        await sub.wait(lambda: len(readings_of(sub, "c1")) >= 5)


async def test_an_unknown_server_certificate_is_refused_and_reported_once(
    tmp_path: Path, tls_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.uplink")
    cfg = config(tmp_path, tls_broker)
    # default: verification on, against the system's trust store, which lacks our test CA
    cfg = cfg.model_copy(update={"mqtt": tls_mqtt(tls_broker)})
    async with running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.sleep(2.5)  # several reconnect attempts (backoff capped at 0.5 s)
        assert not gw.uplink.connected.is_set()
        assert gw.uplink.connects == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.uplink"]
    assert len(warnings) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in warnings[0]


async def test_verification_can_be_disabled_with_a_warning(
    tmp_path: Path, tls_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.uplink")
    cfg = config(tmp_path, tls_broker)
    cfg = cfg.model_copy(update={"mqtt": tls_mqtt(tls_broker, verify=False)})
    async with running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
    assert any("verification of the broker is disabled" in r.getMessage() for r in caplog.records)


async def test_client_certificate(tmp_path: Path, mtls_broker: MosquittoBroker, pki: Pki) -> None:
    cfg = config(tmp_path, mtls_broker)
    with_cert = cfg.model_copy(
        update={
            "mqtt": tls_mqtt(
                mtls_broker,
                ca_file=pki.ca_cert,
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            )
        }
    )
    async with running(with_cert) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
    without = cfg.model_copy(update={"mqtt": tls_mqtt(mtls_broker, ca_file=pki.ca_cert)})
    async with running(without) as gw:
        assert gw.uplink is not None
        await asyncio.sleep(1.5)
        assert gw.uplink.connects == 0
