"""Runs a real gateway process with the test drivers: python -m tests.gateway.node_runner CFG"""

from __future__ import annotations

import logging
import sys

from gateway import runner
from gateway.app import Gateway
from gateway.config import load_config
from gateway.logs import setup_logging
from gateway.plugins import DriverRegistry
from tests.helpers import CounterConfig, CounterDriver


def main() -> int:
    registry = DriverRegistry()
    registry.add(CounterDriver, "tests", "counter")
    config = load_config(sys.argv[1], [CounterConfig])
    setup_logging("info")
    logging.getLogger("gateway").info("node runner starting")
    # the loop the node would run on (uvloop where installed): durability is kept on it
    runner.run(Gateway(config, registry=registry).run(), loop_kind=config.node.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
