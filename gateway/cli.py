"""The ``cityneuron`` command."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import gateway
from gateway.config import ConfigError, NodeConfig, load_config

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_HUNG = 70  # shutdown did not finish in time (EX_SOFTWARE)

HARD_EXIT_GRACE = 20.0


def _load(path: str) -> NodeConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EXIT_CONFIG
    kinds: dict[str, int] = {}
    for device in config.devices:
        kinds[device.type] = kinds.get(device.type, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(kinds.items())) or "no devices"
    uplink = f"mqtt {config.mqtt.host}:{config.mqtt.effective_port}" if config.mqtt else "no uplink"
    print(f"{args.file}: OK - node {config.node.id}, {summary}, {uplink}")
    return EXIT_OK


def cmd_version(_args: argparse.Namespace) -> int:
    from drivers.api import API_VERSION  # noqa: PLC0415

    print(
        f"cityneuron {gateway.__version__} (driver API {API_VERSION}, Python "
        f"{sys.version_info.major}.{sys.version_info.minor})"
    )
    return EXIT_OK


def cmd_plugins(_args: argparse.Namespace) -> int:
    from gateway.kernel.plugins import PluginFailure  # noqa: PLC0415
    from gateway.plugins import load_drivers  # noqa: PLC0415
    from models.plugins import DECODER_GROUP  # noqa: PLC0415

    registry = load_drivers()
    print("drivers:")
    for type_name, driver in sorted(registry.drivers.items()):
        unmet = registry.unmet(type_name)
        note = f"  (unavailable: {unmet})" if unmet else ""
        print(f"  {type_name:<14} {registry.origins[type_name]:<40} API {driver.api_version}{note}")
    failures: list[PluginFailure] = list(registry.failures)
    print(f"model decoders ({DECODER_GROUP}):")
    try:
        from models.plugins import load_decoders  # noqa: PLC0415

        decoders = load_decoders()
    except ImportError as exc:
        print(f"  (unavailable: {exc.name or exc} is not installed; install cityneuron[vision])")
    else:
        plugins = {n: o for n, o in decoders.origins.items() if o != "built-in"}
        if not plugins:
            print("  (none installed)")
        for name, origin in sorted(plugins.items()):
            print(f"  {name:<14} {origin}")
        failures += decoders.failures
    if failures:
        print("failed (skipped):")
        for f in failures:
            print(f"  {f.name:<14} {f.source}: {f.reason}")
    return EXIT_OK


def cmd_discover(args: argparse.Namespace) -> int:
    from gateway.discovery import browse  # noqa: PLC0415

    interfaces = None
    if args.interface:
        try:
            interfaces = [str(ipaddress.IPv4Address(args.interface))]
        except ValueError:
            print(
                f"error: --interface {args.interface!r} is not an IPv4 address "
                "(give the address of one of this machine's interfaces)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    if not 0 < args.timeout <= 600:
        print("error: --timeout must be between 0 and 600 seconds", file=sys.stderr)
        return EXIT_CONFIG
    print(f"looking for cityneuron nodes for {args.timeout:g}s...", file=sys.stderr)
    try:
        nodes = asyncio.run(browse(args.timeout, interfaces))
    except OSError as exc:
        where = f"interface {args.interface}" if args.interface else "the network"
        print(
            f"error: cannot listen for announcements on {where}: {exc.strerror or exc} "
            "(is it an address of this machine, up, with multicast?)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    for n in nodes:
        where = ", ".join(f"{a}:{n.port}" for a in n.addresses) or "?"
        print(
            f"{n.node:<24} {where:<24} v{n.version:<8} {n.drivers or '-':<20} "
            f"{n.caps}  {n.name}".rstrip()
        )
    print(f"{len(nodes)} node(s) found", file=sys.stderr)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor import run_doctor  # noqa: PLC0415

    return asyncio.run(run_doctor(args.config, sys.stdout))


def cmd_modbus_scan(args: argparse.Namespace) -> int:
    from gateway.doctor import modbus_scan  # noqa: PLC0415

    try:
        first, _, last = args.units.partition("-")
        low, high = int(first), int(last or first)
    except ValueError:
        print(f"error: --units {args.units!r}: use N or N-M", file=sys.stderr)
        return EXIT_CONFIG
    if not 0 <= low <= high <= 247:
        print(
            f"error: --units {args.units!r}: unit ids are 0 to 247, the first not above the last",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    units = range(low, high + 1)
    if not 0 < args.timeout <= 60:
        print("error: --timeout must be between 0 and 60 seconds per unit", file=sys.stderr)
        return EXIT_CONFIG
    host, port = None, 502
    if args.tcp:
        host, _, p = args.tcp.partition(":")
        try:
            port = int(p) if p else 502
        except ValueError:
            port = 0
        if not host or not 0 < port < 65536:
            print(f"error: --tcp {args.tcp!r}: use HOST or HOST:PORT", file=sys.stderr)
            return EXIT_CONFIG
    # pymodbus logs every frame at debug level to the root logger: never over the result
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    found = asyncio.run(
        modbus_scan(
            sys.stdout,
            host=host,
            port=port,
            serial=args.rtu,
            baudrate=args.baud,
            units=units,
            wait=args.timeout,
            register=args.register,
        )
    )
    return EXIT_OK if found else EXIT_FAILURE


def _arm_hard_exit(grace: float) -> None:
    """Exit the process if an orderly shutdown hangs (a stuck thread, a swallowed cancel)."""

    def _expire() -> None:
        logger.critical("shutdown did not finish within %gs; exiting hard", grace)
        logging.shutdown()
        os._exit(EXIT_HUNG)

    timer = threading.Timer(grace, _expire)
    timer.daemon = True
    timer.start()


async def _run_gateway(config: NodeConfig) -> None:
    from gateway.app import Gateway  # noqa: PLC0415 - keeps `check-config` light

    gw = Gateway(config)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(), name="gateway")
        await gw.stopping.wait()
        _arm_hard_exit(HARD_EXIT_GRACE)


M_ARENA_MAX = -8  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3


def tune_malloc(arenas: int = 2, mmap_threshold: int = 256 * 1024) -> bool:
    """Make glibc's malloc give memory back, before any thread starts.

    - Arenas capped at `arenas`: glibc gives threads that allocate concurrently arenas of
      their own, up to eight per core, and keeps their freed memory (with a camera, a model
      and the outbox's thread ~8 MB more resident than with two arenas, for no measurable
      speed).
    - A fixed mmap threshold: blocks from `mmap_threshold` up (decoded frames, input
      tensors, the model's activations) are mapped on their own and unmapped when freed.
      glibc's default threshold rises to the size of each such block freed (up to 32 MB),
      and later ones then come from the heap, which stays as large as its highest point: a
      camera node held ~20 MB more between frames.

    A no-op (False) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(
            libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        )
    except (OSError, AttributeError):
        return False


def restrict_umask(mask: int = 0o027) -> int:
    """Make the node's own files (outbox, rule bundles, audit log, models) at most 0640 and
    its directories 0750, whatever umask it was started with (systemd sets UMask=0027;
    a shell usually 0022). Returns the umask in force."""
    old = os.umask(0)
    new = old | mask
    os.umask(new)
    return new


def cmd_run(args: argparse.Namespace) -> int:
    tune_malloc()
    restrict_umask()
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from gateway import runner  # noqa: PLC0415
    from gateway.logs import setup_logging  # noqa: PLC0415
    from gateway.supervisor import abandoned  # noqa: PLC0415

    setup_logging(args.log_level or config.log.level, config.log.format)
    try:
        runner.run(_run_gateway(config), abandoned=abandoned, loop_kind=config.node.event_loop)
    except Exception as exc:
        for error in _leaves(exc):
            logger.critical("node stopped on error: %s", error, exc_info=error)
        return EXIT_FAILURE
    return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    """The individual errors inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityneuron", description="Runtime of a city neuron node."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the node")
    p.add_argument("--config", "-c", required=True, help="node config (YAML)")
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override log.level"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a node config and report every problem")
    p.add_argument("file", help="node config (YAML)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("doctor", help="check a box: config, ports, broker, TLS, clock, disk")
    p.add_argument("--config", "-c", default="/etc/cityneuron/node.yaml", help="node config")
    p.set_defaults(func=cmd_doctor)

    modbus = sub.add_parser("modbus", help="Modbus field tools")
    msub = modbus.add_subparsers(dest="modbus_command", required=True, metavar="ACTION")
    p = msub.add_parser("scan", help="find the unit ids that answer on a line")
    line = p.add_mutually_exclusive_group(required=True)
    line.add_argument("--tcp", help="HOST[:PORT] of a Modbus TCP device or gateway")
    line.add_argument("--rtu", help="serial port of an RS-485 line")
    p.add_argument("--baud", type=int, default=9600, help="RTU line speed")
    p.add_argument("--units", default="1-247", help="unit ids to probe, N or N-M")
    p.add_argument("--register", type=int, default=0, help="holding register to read")
    p.add_argument("--timeout", type=float, default=0.3, help="seconds per unit")
    p.set_defaults(func=cmd_modbus_scan)

    p = sub.add_parser("discover", help="list the cityneuron nodes on the LAN (mDNS)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen")
    p.add_argument("--interface", help="IPv4 address of the interface to use")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("plugins", help="list driver and decoder plugins, and those that failed")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    from gateway import cli_cmd, cli_rules  # noqa: PLC0415

    cli_rules.add_parsers(sub)
    cli_cmd.add_parsers(sub)
    _add_plugin_commands(sub)
    return parser


COMMAND_GROUP = "cityneuron.commands"


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands other packages add (``cityneuron demo`` comes with the simulators):
    each entry point of `COMMAND_GROUP` is a function given the subparsers."""
    from gateway.kernel.plugins import PluginFailure, load_group  # noqa: PLC0415

    for item in load_group(COMMAND_GROUP):
        if isinstance(item, PluginFailure):
            logger.warning("command plugin %s skipped: %s", item.name, item.reason)
        elif not callable(item.obj):
            logger.warning("command plugin %s skipped: %r is not callable", item.name, item.obj)
        else:
            item.obj(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
