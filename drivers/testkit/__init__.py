"""Conformance tests for drivers: subclass `DriverConformance` in your test suite.

```python
from drivers.testkit import DriverConformance

class TestMyDriver(DriverConformance):
    driver = MyDriver

    @asynccontextmanager
    async def device(self):
        async with my_simulator() as sim:          # a real (simulated) device
            yield {"type": "mydevice", "id": "dev-1", "host": sim.host}

    def unreachable_config(self):
        return {"type": "mydevice", "id": "dev-1", "host": "192.0.2.1"}
```

Run it with pytest (and pytest-asyncio in auto mode). It checks the contract of
drivers/api.py: the config model (keyed on `type`, unknown keys refused, every field
described), start, readings well formed, prompt cancellation without leaked tasks or
threads, an unreachable device reported as state rather than raised, and validated writes.
"""

from drivers.testkit.conformance import DriverConformance, RecordingContext

__all__ = ["DriverConformance", "RecordingContext"]
