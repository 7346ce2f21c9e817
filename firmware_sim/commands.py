"""What the simulators add to the ``cityneuron`` command (entry points in pyproject.toml).

Every ``cityneuron`` invocation loads these entry points to build its parser, so this
module stays light: the demo and its simulators (OpenCV, pymodbus servers) load only when
the demo runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``cityneuron demo`` command (entry point of cityneuron.commands)."""
    p = sub.add_parser(
        "demo", help="run a simulated node with a local broker and show what it sends"
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--workdir", help="directory for the demo's state (a temporary one if unset)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: Any) -> int:
    from firmware_sim.demo import run_demo  # noqa: PLC0415 - the simulators, when run

    return run_demo(duration=args.duration, workdir=Path(args.workdir) if args.workdir else None)


def simulated_readings(seconds: float) -> list[tuple[float, Any]]:
    """The demo's devices read once a second (``rules test --simulate``)."""
    from firmware_sim.demo import simulated_readings as readings  # noqa: PLC0415

    return list(readings(seconds))
