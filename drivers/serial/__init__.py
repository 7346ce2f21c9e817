"""Serial line driver: text lines (regex, CSV), NMEA 0183 and binary frames."""

from drivers.serial.driver import SerialConfig, SerialDriver
from drivers.serial.profile import SerialProfile, load_serial_profile

__all__ = ["SerialConfig", "SerialDriver", "SerialProfile", "load_serial_profile"]
