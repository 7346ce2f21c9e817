"""Run simulated hardware on its own: ``python -m firmware_sim modbus --help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from drivers.modbus.profile import load_profile
from firmware_sim import camera
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.process import until_stopped


async def serve_modbus(args: argparse.Namespace) -> None:
    profile = load_profile(args.profile)
    readable = [p.name for p in profile.points.values() if p.access == "r"]
    varying = readable[: round(len(readable) * args.vary)]

    def sensor(t: float) -> dict[str, int]:
        # each varying point steps `args.rate` times a second, all others stay put
        return {name: (i * 7 + int(t * args.rate)) % 1000 for i, name in enumerate(varying)}

    slaves = [
        SimSlave(
            unit=u, profile=profile, fill_gaps=args.fill_gaps, sensor=sensor if varying else None
        )
        for u in range(args.first_unit, args.first_unit + args.units)
    ]
    server = ModbusSimServer(
        slaves, host=args.host, port=args.port, serial_port=args.serial, baudrate=args.baudrate
    )
    await server.start()
    where = args.serial or f"{args.host}:{server.port}"
    sys.stdout.write(f"serving {len(slaves)} x {profile.name} on {where}\n")
    sys.stdout.flush()
    await until_stopped()
    await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_sim")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("modbus", help="serve simulated Modbus slaves")
    p.add_argument("--profile", required=True, help="profile name or path")
    p.add_argument("--units", type=int, default=1, help="number of slaves")
    p.add_argument("--first-unit", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    p.add_argument("--serial", help="serve RTU on this serial port instead of TCP")
    p.add_argument("--baudrate", type=int, default=19200)
    p.add_argument("--fill-gaps", action="store_true", help="unused registers read as 0")
    p.add_argument(
        "--vary", type=float, default=0.0, help="fraction of read-only points that change"
    )
    p.add_argument("--rate", type=float, default=10.0, help="changes per second of those")
    c = sub.add_parser("camera", help="serve a simulated IP camera (HTTP MJPEG)")
    camera.add_arguments(c)
    r = sub.add_parser("road-video", help="write a simulated inspection drive (MJPG video)")
    r.add_argument("out", type=Path, help="the .avi file to write")
    r.add_argument("--seed", type=int, default=1, help="which street")
    r.add_argument("--length", type=float, default=400.0, help="metres of street")
    r.add_argument("--speed", type=float, default=8.0, help="metres per second")
    r.add_argument("--fps", type=float, default=5.0, help="frames per second")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.what == "camera":
            camera.main(args)
        elif args.what == "road-video":
            from firmware_sim import road  # noqa: PLC0415

            s = road.street(args.seed, length=args.length)
            n = road.write_video(args.out, s, speed=args.speed, fps=args.fps)
            sys.stderr.write(f"{args.out}: {n} frames, {len(s.defects)} defects\n")
        else:
            asyncio.run(serve_modbus(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
