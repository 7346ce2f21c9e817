from __future__ import annotations

from drivers.modbus.planner import plan
from drivers.modbus.profile import Point, Profile, Table


def points(*specs: tuple[str, int, str]) -> list[Point]:
    """(table, address, type) -> points named p0, p1, ..."""
    prof = Profile.model_validate(
        {
            "name": "t",
            "points": {
                f"p{i}": {"table": t, "address": a, "type": ty}
                for i, (t, a, ty) in enumerate(specs)
            },
        }
    )
    return list(prof.points.values())


def test_neighbours_are_read_in_one_request() -> None:
    pts = points(
        ("holding_register", 0, "uint16"),
        ("holding_register", 1, "float32"),
        ("holding_register", 3, "uint16"),
    )
    (block,) = plan(pts)
    assert (block.table, block.start, block.count) == (Table.HOLDING_REGISTER, 0, 4)
    assert [p.name for p in block.points] == ["p0", "p1", "p2"]


def test_gaps_up_to_max_gap_are_bridged_and_larger_ones_split() -> None:
    pts = points(
        ("input_register", 0, "uint16"),
        ("input_register", 9, "uint16"),  # gap of 8 after register 0
        ("input_register", 30, "uint16"),  # gap of 20
    )
    blocks = plan(pts, max_gap=8)
    assert [(b.start, b.count) for b in blocks] == [(0, 10), (30, 1)]
    assert [(b.start, b.count) for b in plan(pts, max_gap=0)] == [(0, 1), (9, 1), (30, 1)]


def test_tables_are_never_mixed_and_come_out_in_a_fixed_order() -> None:
    pts = points(
        ("holding_register", 0, "uint16"),
        ("coil", 0, "bool"),
        ("input_register", 0, "uint16"),
        ("discrete_input", 3, "bool"),
        ("coil", 5, "bool"),
    )
    blocks = plan(pts)
    assert [b.table for b in blocks] == [
        Table.COIL,
        Table.DISCRETE_INPUT,
        Table.INPUT_REGISTER,
        Table.HOLDING_REGISTER,
    ]
    assert (blocks[0].start, blocks[0].count) == (0, 6)


def test_protocol_limits_are_respected() -> None:
    regs = points(*[("holding_register", a, "uint16") for a in range(300)])
    blocks = plan(regs)
    assert [b.count for b in blocks] == [125, 125, 50]
    assert sum(len(b.points) for b in blocks) == 300
    coils = points(*[("coil", a, "bool") for a in range(4500)])
    assert [b.count for b in plan(coils)] == [2000, 2000, 500]
    assert [b.count for b in plan(regs, max_count=32)][:3] == [32, 32, 32]


def test_a_point_is_never_cut_across_requests() -> None:
    pts = points(*[("holding_register", a, "float64") for a in range(0, 200, 4)])
    for block in plan(pts):
        assert block.count <= 125
        for p in block.points:
            assert block.start <= p.start and p.end <= block.start + block.count


def test_split_halves_by_points_until_one_remains() -> None:
    pts = points(*[("input_register", a, "uint16") for a in range(5)])
    (block,) = plan(pts)
    left, right = block.split()  # type: ignore[misc]
    assert [p.name for p in left.points] == ["p0", "p1"]
    assert [p.name for p in right.points] == ["p2", "p3", "p4"]
    assert (right.start, right.count) == (2, 3)
    single = plan(pts[:1])[0]
    assert single.split() is None
    data = [10, 11, 12]
    assert right.slice(right.points[1], data) == [11]
