"""The Modbus driver: TCP and RTU devices described by profiles.

Each device instance polls its poll groups on their intervals through the shared line
of its connection. A device that stops answering costs its line one timeout and is then
retried with backoff (1 s doubling to 60 s, jittered), so healthy devices on the same line
keep their poll rate; its offline and online transitions are reported once each.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.api import (
    ConfigFileError,
    Driver,
    DriverConfig,
    DriverContext,
    Duration,
    PointValue,
    ProfileRef,
    Quality,
    Value,
    WriteError,
    backoff,
)
from drivers.modbus.codec import BlockDecoder, EncodeError, encode
from drivers.modbus.line import (
    ExceptionCodeError,
    LineError,
    Link,
    LinkDown,
    ModbusLine,
    RtuLink,
    TcpLink,
)
from drivers.modbus.planner import ReadBlock, plan
from drivers.modbus.profile import DataType, Point, Profile, ProfileError, Table, load_profile
from drivers.report import ReportConfig, Reporter

logger = logging.getLogger(__name__)

OFFLINE_BACKOFF_MAX = 60.0
BAD_POINT_RETRY = 300.0
_GOOD = Quality.GOOD


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpConnection(_Model):
    kind: Literal["tcp"] = Field(description="Modbus TCP (or a TCP-to-RTU gateway).")
    host: str = Field(description="Device or gateway address.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")


class RtuConnection(_Model):
    kind: Literal["rtu"] = Field(description="Modbus RTU on a serial line (RS-485).")
    port: str = Field(description="Serial port; prefer stable paths such as /dev/serial/by-id/...")
    baudrate: int = Field(default=9600, description="Line speed in bit/s.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="N, E or O.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits.")


class PollGroup(_Model):
    name: str = Field(description="Name used in logs.")
    interval: Duration = Field(gt=0, description="Time between polls, e.g. 500ms, 10s.")
    points: list[str] = Field(min_length=1, description="Profile points polled at this rate.")


class ModbusConfig(DriverConfig):
    """A Modbus device: which profile, where, and how often to read it."""

    type: Literal["modbus"] = Field(description="Driver type.")
    profile: ProfileRef = Field(
        description="Shipped profile name (e.g. manhole_cover) or path to a profile YAML."
    )
    unit: int = Field(ge=0, le=255, description="Modbus unit (slave) id.")
    connection: Annotated[TcpConnection | RtuConnection, Field(discriminator="kind")] = Field(
        description="How the device is reached."
    )
    timeout: Duration = Field(
        default=1.0, gt=0, le=30, description="Time to wait for an answer (per line)."
    )
    poll_interval: Duration = Field(
        default=5.0, gt=0, description="Poll interval of points not in a poll group."
    )
    poll_groups: list[PollGroup] = Field(
        default_factory=list, description="Points polled at their own rates."
    )
    points: list[str] | None = Field(
        default=None, description="Read only these profile points (all when unset)."
    )
    max_gap: int = Field(
        default=8, ge=0, le=100, description="Unused registers a read may span to save requests."
    )
    max_block: int | None = Field(
        default=None, ge=1, le=125, description="Largest read some devices accept."
    )
    report: ReportConfig = Field(default_factory=ReportConfig, description="When to report.")

    def load_files(self) -> None:
        try:
            profile = load_profile(self.profile)
        except ProfileError as exc:
            raise ConfigFileError("profile", str(exc)) from None
        names = set(profile.points)
        wanted = [*(self.points or []), *(p for g in self.poll_groups for p in g.points)]
        unknown = sorted({p for p in wanted if p not in names})
        if unknown:
            raise ConfigFileError(
                "points" if self.points else "poll_groups",
                f"unknown point(s) {', '.join(unknown)} in profile {profile.name} "
                f"(points: {', '.join(sorted(names))})",
            )

    @model_validator(mode="after")
    def _check_groups(self) -> Self:
        if self.points is not None:
            outside = sorted({p for g in self.poll_groups for p in g.points} - set(self.points))
            if outside:
                raise ValueError(f"poll group point(s) {', '.join(outside)} not in points")
        seen: set[str] = set()
        for group in self.poll_groups:
            twice = seen & set(group.points)
            if twice:
                raise ValueError(f"point(s) {', '.join(sorted(twice))} in two poll groups")
            seen |= set(group.points)
        return self

    def link(self) -> Link:
        c = self.connection
        if isinstance(c, TcpConnection):
            return TcpLink(c.host, c.port)
        return RtuLink(c.port, c.baudrate, c.parity, c.stopbits, c.bytesize)


@dataclass
class _Group:
    name: str
    interval: float
    points: list[Point]
    blocks: list[ReadBlock] = field(default_factory=list)
    due: float = 0.0


@dataclass
class _BlockState:
    """What the driver remembers about one read block between polls."""

    decoder: BlockDecoder
    names: tuple[str, ...] = ()  # the decoder's points' names, in its order
    last_raw: tuple[Any, ...] | None = None
    next_periodic: float = 0.0  # when the block's earliest periodic report falls due
    dirty: bool = False  # values taken from this block since the last report


class ModbusDriver(Driver):
    """Polls one Modbus device (unit) through its shared line."""

    type = "modbus"
    config_model = ModbusConfig

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        if not isinstance(config, ModbusConfig):
            raise TypeError("ModbusDriver needs a ModbusConfig")
        self.cfg = config
        self.profile: Profile = load_profile(config.profile)
        self._bad: dict[str, float] = {}  # point -> when to try it again
        self._blocks: dict[tuple[Table, int, int], _BlockState] = {}
        self.groups = self._groups()
        self.line: ModbusLine | None = None
        self.online: bool | None = None
        self.polls = 0
        self.errors = 0
        self.skipped_polls = 0  # slots missed because polls ran late (the node is behind)
        self.poll_lag = 0.0  # how late polls start, smoothed (s)
        self.malformed = 0  # answers that were well-framed but not what was asked
        self._malformed_since: str | None = None  # the first reason of a streak
        self._retry_at = 0.0
        self._failures = 0
        self._reporter = Reporter(config.report)
        self._woken = False  # a write asked for an early read-back
        self._sleeper: asyncio.Future[None] | None = None
        self._ctx: DriverContext | None = None

    def _groups(self) -> list[_Group]:
        pts = self.profile.points
        selected = self.cfg.points if self.cfg.points is not None else list(pts)
        grouped = {p for g in self.cfg.poll_groups for p in g.points}
        groups = [
            _Group(g.name, g.interval, [pts[p] for p in g.points]) for g in self.cfg.poll_groups
        ]
        rest = [pts[p] for p in selected if p not in grouped]
        if rest:
            groups.append(_Group("default", self.cfg.poll_interval, rest))
        for group in groups:
            self._plan(group)
        return groups

    def _plan(self, group: _Group) -> None:
        points = [p for p in group.points if p.name not in self._bad]
        group.blocks = plan(points, self.cfg.max_gap, self.cfg.max_block)

    # --- running ----------------------------------------------------------------------

    async def run(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        link = self.cfg.link()

        async def make_line() -> ModbusLine:
            return ModbusLine(link, self.cfg.timeout)

        async with ctx.shared(link.key, make_line) as line:
            if line.link != link:
                ctx.set_online(
                    False, f"connection settings differ from other devices on {link.key}"
                )
                raise LinkDown(f"{link.key}: conflicting settings {link} vs {line.link}")
            self.line = line
            try:
                await self._loop(ctx)
            finally:
                self.line = None

    async def _loop(self, ctx: DriverContext) -> None:
        clock = ctx.clock
        start = clock.monotonic()
        # spread the first polls of devices over the first interval a little
        for group in self.groups:
            group.due = start
        while True:
            now = clock.monotonic()
            for group in self.groups:
                if group.due <= now:
                    self.poll_lag += 0.2 * (now - group.due - self.poll_lag)
                    await self._poll(ctx, group)
                    # keep the cadence; skip missed slots instead of bursting to catch up:
                    # a device that cannot be served at its rate is polled less often,
                    # rather than piling up requests that would time out
                    interval = group.interval * ctx.pace  # longer while the node is behind
                    group.due += interval
                    after = clock.monotonic()
                    if group.due <= after:
                        self.skipped_polls += int((after - group.due) // interval) + 1
                        group.due = after + interval
            next_due = min(g.due for g in self.groups)
            if self.online is False:
                next_due = max(next_due, self._retry_at)
            delay = max(0.0, next_due - clock.monotonic())
            if delay < 0.005:
                # not worth a wakeable wait (a write's read-back is at most 5 ms away); a
                # poll already due goes straight on: the line's lock is where devices
                # take turns
                if delay > 0:
                    await clock.sleep(delay)
                continue
            if await self._sleep(delay):
                for group in self.groups:
                    group.due = min(group.due, clock.monotonic())

    async def _sleep(self, delay: float) -> bool:
        """Sleep `delay` s or until a write wakes the driver (True). A timer on a future:
        this runs before every poll, and a timeout would raise and catch each time."""
        if self._woken:
            self._woken = False
            return True
        loop = asyncio.get_running_loop()
        fut = self._sleeper = loop.create_future()
        timer = loop.call_later(delay, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._sleeper = None
        woken, self._woken = self._woken, False
        return woken

    def _wake(self) -> None:
        self._woken = True
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    async def _poll(self, ctx: DriverContext, group: _Group) -> None:
        now = ctx.clock.monotonic()
        if self.online is False and now < self._retry_at:
            return  # backing off: this device costs its line nothing meanwhile
        self._retry_bad_points(group, now)
        self.polls += 1
        values: dict[str, tuple[Value, Quality]] = {}
        try:
            for block in list(group.blocks):
                await self._read(group, block, values)
        except LineError as exc:
            self.errors += 1
            self._went_offline(ctx, exc)
            return
        self._came_online(ctx)
        await self._report(ctx, values)
        if self.cfg.report.mode == "on_change":
            return  # no periodic reports to schedule
        period = self.cfg.report.period
        for state in self._blocks.values():
            if state.dirty:
                state.dirty = False
                last = self._reporter.last
                ats = [last[p.name].at for p in state.decoder.points if p.name in last]
                state.next_periodic = (min(ats) if ats else 0.0) + period

    async def _read(
        self, group: _Group, block: ReadBlock, values: dict[str, tuple[Value, Quality]]
    ) -> None:
        if self.line is None:
            raise LinkDown("the driver is not running")
        try:
            pdu = await self.line.call(lambda c: _read_request(c, block, self.cfg.unit))
        except ExceptionCodeError as exc:
            if exc.code not in (2, 3):
                raise
            halves = block.split()
            if halves is None:
                self._mark_bad(block.points[0], exc, values)
                group.blocks.remove(block)
                return
            # the block spans something the device refuses: remember the split
            idx = group.blocks.index(block)
            group.blocks[idx : idx + 1] = list(halves)
            for half in halves:
                await self._read(group, half, values)
            return
        data = pdu.bits[: block.count] if block.table.is_bit else pdu.registers
        key = (block.table, block.start, block.count)  # cheap to hash, unlike the points
        state = self._blocks.get(key)
        if state is None:
            decoder = BlockDecoder(block.points, block.start, self.profile)
            state = self._blocks[key] = _BlockState(decoder, tuple(p.name for p in decoder.points))
        # the device's answer is outside data: it may be short, long or nonsense
        if len(data) != block.count:
            kind = "bits" if block.table.is_bit else "registers"
            why = f"answered {len(data)} {kind} to a read of {block.count}"
            self._malformed_answer(block, state, why, values)
            return
        try:
            raw = state.decoder.raw(data)
            decoded = [state.decoder.value(i, item) for i, item in enumerate(raw)]
        except (struct.error, IndexError, TypeError, ValueError, OverflowError) as exc:
            self._malformed_answer(block, state, f"undecodable answer ({exc})", values)
            return
        if self._malformed_since is not None and self._ctx is not None:
            self._ctx.logger.info("device %s answers well again", self.device_id)
            self._malformed_since = None
        now = self._now()
        periodic_due = self.cfg.report.mode != "on_change" and now >= state.next_periodic
        if raw == state.last_raw and not periodic_due:
            return  # nothing changed on the device and no periodic report is due
        last = state.last_raw
        names = state.names
        good = _GOOD  # (an enum member is a descriptor lookup each time it is named)
        for i, item in enumerate(raw):
            if last is None or periodic_due or item != last[i]:
                values[names[i]] = (decoded[i], good)
        state.last_raw = raw
        state.dirty = True

    def _malformed_answer(
        self,
        block: ReadBlock,
        state: _BlockState,
        why: str,
        values: dict[str, tuple[Value, Quality]],
    ) -> None:
        """A well-framed answer that is not what was asked: this poll's values of the
        block are bad (the device is online: it answers), counted, logged once a streak."""
        self.errors += 1
        self.malformed += 1
        if self._malformed_since is None and self._ctx is not None:
            self._ctx.logger.warning(
                "device %s: %s %d: %s; its points are reported bad until it answers well",
                self.device_id,
                block.table.value,
                block.start,
                why,
            )
        self._malformed_since = why
        state.last_raw = None  # the next good answer reports every point again
        for point in block.points:
            values[point.name] = (None, Quality.BAD)

    def _now(self) -> float:
        return self._ctx.clock.monotonic() if self._ctx is not None else time.monotonic()

    def _mark_bad(
        self, point: Point, exc: ExceptionCodeError, values: dict[str, tuple[Value, Quality]]
    ) -> None:
        if point.name not in self._bad and self._ctx is not None:
            self._ctx.logger.warning(
                "point %s (%s %d) refused by device %s: %s; retrying it every %gs",
                point.name,
                point.table.value,
                point.start,
                self.device_id,
                exc,
                BAD_POINT_RETRY,
            )
        self._bad[point.name] = time.monotonic() + BAD_POINT_RETRY
        values[point.name] = (None, Quality.BAD)

    def _retry_bad_points(self, group: _Group, now: float) -> None:
        if not self._bad:
            return
        due = [p.name for p in group.points if self._bad.get(p.name, float("inf")) <= now]
        if due:
            for name in due:
                del self._bad[name]
            self._plan(group)

    def _went_offline(self, ctx: DriverContext, exc: Exception) -> None:
        self._failures += 1
        delay = backoff(self._failures, first=1.0, cap=OFFLINE_BACKOFF_MAX)
        self._retry_at = ctx.clock.monotonic() + delay
        if self.online is not False:
            self.online = False
            ctx.set_online(False, str(exc))
        else:
            ctx.logger.debug(
                "device %s still offline (%s); next try in %.1fs", self.device_id, exc, delay
            )

    def _came_online(self, ctx: DriverContext) -> None:
        self._failures = 0
        if self.online is not True:
            self.online = True
            ctx.set_online(True)

    async def _report(self, ctx: DriverContext, values: dict[str, tuple[Value, Quality]]) -> None:
        now = ctx.clock.monotonic()
        points = self.profile.points
        due = self._reporter.due
        report: list[PointValue] = []
        for name, (value, quality) in values.items():
            point = points[name]
            if due(name, value, quality, now, point.deadband):
                report.append((name, value, point.unit, quality))
        if report:
            await ctx.publish_values(report)  # the poll's values: one record, one time

    # --- writes -----------------------------------------------------------------------

    async def write(self, point: str, value: Any) -> None:
        p = self.profile.points.get(point)
        if p is None:
            writable = sorted(n for n, q in self.profile.points.items() if q.writable)
            raise WriteError(
                self.device_id, point, f"no such point (writable: {', '.join(writable) or 'none'})"
            )
        if not p.writable:
            raise WriteError(self.device_id, point, "point is read-only")
        line = self.line
        if line is None:
            raise WriteError(self.device_id, point, "device is not running")
        try:
            async with line.lock:
                current = None
                if p.type is DataType.BIT:
                    block = ReadBlock(p.table, p.start, 1, (p,))
                    resp = await line._call_locked(  # read-modify-write under one lock
                        lambda c: _read_request(c, block, self.cfg.unit)
                    )
                    current = int(resp.registers[0])
                regs = encode(p, self.profile, value, current)
                await line._call_locked(lambda c: _write_request(c, p, regs, self.cfg.unit))
        except EncodeError as exc:
            raise WriteError(self.device_id, point, str(exc)) from None
        except LineError as exc:
            raise WriteError(
                self.device_id, point, f"device did not accept the write: {exc}"
            ) from exc
        if self._ctx is not None:
            self._ctx.logger.info("wrote %s.%s = %r", self.device_id, point, value)
        # read back soon so the new value is reported
        self._reporter.forget(point)
        self._wake()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_READ_METHOD = {
    Table.COIL: "read_coils",
    Table.DISCRETE_INPUT: "read_discrete_inputs",
    Table.HOLDING_REGISTER: "read_holding_registers",
    Table.INPUT_REGISTER: "read_input_registers",
}


async def _read_request(client: Any, block: ReadBlock, unit: int) -> Any:
    fn = getattr(client, _READ_METHOD[block.table])
    return await fn(block.start, count=block.count, device_id=unit)


async def _write_request(client: Any, point: Point, regs: list[int], unit: int) -> Any:
    if point.table is Table.COIL:
        if point.write_multiple:
            return await client.write_coils(point.start, [bool(regs[0])], device_id=unit)
        return await client.write_coil(point.start, bool(regs[0]), device_id=unit)
    if len(regs) == 1 and not point.write_multiple:
        return await client.write_register(point.start, regs[0], device_id=unit)
    return await client.write_registers(point.start, regs, device_id=unit)
