"""Modbus TCP/RTU driver with device profiles, coalesced polling and shared lines."""

from drivers.modbus.driver import ModbusConfig, ModbusDriver
from drivers.modbus.profile import Point, Profile, Table, load_profile

__all__ = ["ModbusConfig", "ModbusDriver", "Point", "Profile", "Table", "load_profile"]
