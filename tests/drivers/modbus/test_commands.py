"""Device writes as MQTT commands, end to end: broker -> node -> Modbus device -> reply."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.modbus.driver import ModbusConfig
from drivers.modbus.profile import load_profile
from firmware_sim.broker import MosquittoBroker
from firmware_sim.modbus import ModbusSimServer, SimSlave
from gateway.app import Gateway
from gateway.config import MqttSection, NodeConfig, NodeSection, TlsSection
from tests.mqtt import collect, command
from tests.operator import operator_security


async def test_write_command_reaches_the_device_or_says_why_not(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    slave = SimSlave(unit=1, profile=load_profile("dust_noise"))
    async with ModbusSimServer([slave]) as server:
        config = NodeConfig(
            node=NodeSection(id="n1", data_dir=tmp_path),
            mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
            security=operator_security(["write:site-*"]),
            devices=[
                ModbusConfig.model_validate(
                    {
                        "type": "modbus",
                        "id": "site-dust",
                        "profile": "dust_noise",
                        "unit": 1,
                        "connection": {"kind": "tcp", "host": "127.0.0.1", "port": server.port},
                    }
                )
            ],
        )
        gw = Gateway(config)
        async with collect(broker, "test/replies") as sub, asyncio.TaskGroup() as tg:
            tg.create_task(gw.run(handle_signals=False), name="gateway")
            assert gw.uplink is not None
            await asyncio.wait_for(gw.uplink.connected.wait(), 10)
            ok = await command(
                sub, "write", {"device": "site-dust", "point": "pm_alarm_limit", "value": 150}
            )
            fan = await command(
                sub, "write", {"device": "site-dust", "point": "fan_on", "value": True}
            )
            too_high = await command(
                sub, "write", {"device": "site-dust", "point": "pm_alarm_limit", "value": 5000}
            )
            read_only = await command(
                sub, "write", {"device": "site-dust", "point": "pm10", "value": 1}
            )
            missing = await command(sub, "write", {"device": "site-dust"})
            gw.request_stop()
    assert ok["ok"] is True
    assert ok["result"] == {"device": "site-dust", "point": "pm_alarm_limit", "value": 150}
    assert fan["ok"] is True
    assert slave.get("pm_alarm_limit") == 150
    assert slave.get("fan_on") is True
    assert too_high["error"] == {
        "code": "write_refused",
        "message": "site-dust.pm_alarm_limit: 5000 is above the maximum 1000",
    }
    assert read_only["error"] == {
        "code": "write_refused",
        "message": "site-dust.pm10: point is read-only",
    }
    assert missing["error"]["code"] == "invalid_args"  # type: ignore[index]
    # refused writes never reached the device
    assert [name for name, _ in slave.writes] == ["pm_alarm_limit", "fan_on"]
