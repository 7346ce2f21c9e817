"""Read planning: the fewest requests that read a poll group's points.

Points of one table are sorted by address and merged into one request while the gap
between them is at most ``max_gap`` registers (reading a few unused registers is cheaper
than another round trip) and the request stays within the protocol's limit (125
registers, 2000 coils or discrete inputs). A request the device refuses with an exception
(typically *illegal data address*: one point in the block does not exist on this firmware)
is split in halves by point and retried, until the bad point is isolated; the other points
are still read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.modbus.profile import Point, Table


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request and the points it serves."""

    table: Table
    start: int
    count: int
    points: tuple[Point, ...]

    def slice(self, point: Point, data: list[int] | list[bool]) -> list[int] | list[bool]:
        """The part of a response to this block that holds `point`."""
        offset = point.start - self.start
        return data[offset : offset + point.count]

    def split(self) -> tuple[ReadBlock, ReadBlock] | None:
        """Two blocks with half the points each, or None for a single point."""
        if len(self.points) < 2:
            return None
        half = len(self.points) // 2
        return _block(self.table, self.points[:half]), _block(self.table, self.points[half:])


def _block(table: Table, points: tuple[Point, ...]) -> ReadBlock:
    start = min(p.start for p in points)
    end = max(p.end for p in points)
    return ReadBlock(table, start, end - start, points)


def plan(
    points: Iterable[Point], max_gap: int = 8, max_count: int | None = None
) -> list[ReadBlock]:
    """Coalesce `points` into read blocks (ordered by table, then address)."""
    by_table: dict[Table, list[Point]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    blocks: list[ReadBlock] = []
    for table in Table:
        pts = sorted(by_table.get(table, []), key=lambda p: (p.start, p.bit or 0))
        if not pts:
            continue
        limit = min(table.max_read, max_count) if max_count else table.max_read
        gap = max_gap * 16 if table.is_bit else max_gap
        current: list[Point] = [pts[0]]
        start, end = pts[0].start, pts[0].end
        for point in pts[1:]:
            new_end = max(end, point.end)
            if point.start - end <= gap and new_end - start <= limit:
                current.append(point)
                end = new_end
                continue
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [point], point.start, point.end
        blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks
