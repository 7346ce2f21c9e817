from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import BlockDecoder, EncodeError, decode, encode
from drivers.modbus.profile import Profile
from firmware_sim.modbus import from_registers, to_registers


def profile(**point: object) -> Profile:
    return Profile.model_validate({"name": "t", "points": {"p": point}})


@pytest.mark.parametrize(
    ("point", "registers", "value"),
    [
        # IEEE 754 1.5 = 0x3FC00000
        ({"address": "40001", "type": "float32"}, [0x3FC0, 0x0000], 1.5),
        ({"address": "40001", "type": "float32", "word_order": "little"}, [0x0000, 0x3FC0], 1.5),
        ({"address": "40001", "type": "float32", "byte_order": "little"}, [0xC03F, 0x0000], 1.5),
        ({"address": "40001", "type": "int16"}, [0xFFFE], -2),
        ({"address": "40001", "type": "uint16", "scale": 0.1}, [215], 21.5),
        ({"address": "40001", "type": "int16", "scale": 0.5, "offset": -40}, [100], 10.0),
        ({"address": "40001", "type": "uint32"}, [0x0001, 0x0002], 65538),
        ({"address": "40001", "type": "int32", "word_order": "little"}, [0xFFFF, 0xFFFF], -1),
        ({"address": "40001", "type": "uint64"}, [0, 0, 1, 0], 65536),
        ({"address": "40001", "type": "float64"}, [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
        ({"address": "40001", "type": "string", "length": 5}, [0x4142, 0x4344, 0x4500], "ABCDE"),
        ({"address": "40001", "type": "bit", "bit": 3}, [0b1000], True),
        ({"address": "40001", "type": "bit", "bit": 3, "byte_order": "little"}, [0x0800], True),
        ({"address": "00001", "type": "bool"}, [True], True),
    ],
)
def test_known_encodings(point: dict[str, object], registers: list[int], value: object) -> None:
    p = profile(**point)
    pt = p.points["p"]
    assert decode(pt, p, registers) == value
    if pt.type.value not in ("bit", "bool"):
        assert encode(pt, p, value) == registers


def test_float32_nan_is_no_value() -> None:
    p = profile(address="40001", type="float32")
    assert decode(p.points["p"], p, [0x7FC0, 0]) is None


@pytest.mark.parametrize(
    ("point", "value", "message"),
    [
        ({"address": "40001", "type": "uint16", "max": 10}, 11, "above the maximum 10"),
        ({"address": "40001", "type": "uint16", "min": 2}, 1, "below the minimum 2"),
        ({"address": "40001", "type": "uint16"}, 70000, "does not fit in uint16"),
        ({"address": "40001", "type": "int16"}, -40000, "does not fit in int16"),
        (
            {"address": "40001", "type": "uint16", "scale": 0.1, "unit": "m"},
            0.05,
            r"not representable \(resolution 0.1 m\)",
        ),
        ({"address": "40001", "type": "uint16"}, "7", "expects a number"),
        ({"address": "40001", "type": "uint16"}, True, "expects a number"),
        ({"address": "40001", "type": "float32"}, float("nan"), "finite"),
        ({"address": "40001", "type": "string", "length": 2}, "abc", "exceeds"),
        ({"address": "00001", "type": "bool"}, "yes", "true/false"),
        ({"address": "40001", "type": "bit", "bit": 1}, True, "current value"),
    ],
)
def test_refused_values(point: dict[str, object], value: object, message: str) -> None:
    p = profile(**point)
    with pytest.raises(EncodeError, match=message):
        encode(p.points["p"], p, value)


def test_bit_write_keeps_other_bits() -> None:
    p = profile(address="40001", type="bit", bit=2)
    assert encode(p.points["p"], p, True, current=0b1001) == [0b1101]
    assert encode(p.points["p"], p, False, current=0b1101) == [0b1001]


int_types = st.sampled_from(
    [
        ("int16", 16, True),
        ("uint16", 16, False),
        ("int32", 32, True),
        ("uint32", 32, False),
        ("int64", 64, True),
        ("uint64", 64, False),
    ]
)
orders = st.sampled_from(["big", "little"])


@given(int_types, orders, orders, st.data())
def test_integers_agree_with_the_simulator(
    kind: tuple[str, int, bool], byte_order: str, word_order: str, data: st.DataObject
) -> None:
    name, bits, signed = kind
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    value = data.draw(st.integers(lo, hi))
    p = profile(address="40001", type=name, byte_order=byte_order, word_order=word_order)
    pt = p.points["p"]
    regs = encode(pt, p, value)
    assert regs == to_registers(pt, p, value)
    assert decode(pt, p, regs) == value
    assert from_registers(pt, p, regs) == value


@given(orders, orders, st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_float32_agrees_with_the_simulator(byte_order: str, word_order: str, value: float) -> None:
    p = profile(address="40001", type="float32", byte_order=byte_order, word_order=word_order)
    pt = p.points["p"]
    regs = encode(pt, p, value)
    assert regs == to_registers(pt, p, value)
    decoded = decode(pt, p, regs)
    assert isinstance(decoded, float)
    assert decoded == pytest.approx(value, rel=1e-6, abs=1e-30)


@given(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4), orders, orders)
def test_any_registers_decode_to_a_finite_value_or_none(
    regs: list[int], byte_order: str, word_order: str
) -> None:
    for kind in ("float64", "int64", "uint64", "float32", "int32"):
        p = profile(address="40001", type=kind, byte_order=byte_order, word_order=word_order)
        pt = p.points["p"]
        value = decode(pt, p, regs[: pt.count])
        assert value is None or (isinstance(value, int | float) and math.isfinite(value))


def test_struct_reference_for_scaled_values() -> None:
    p = profile(address="30001", type="int16", scale=0.1)
    regs = [struct.unpack(">H", struct.pack(">h", -123))[0]]
    assert decode(p.points["p"], p, regs) == -12.3


layouts = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "int16",
                "uint16",
                "int32",
                "uint32",
                "int64",
                "uint64",
                "float32",
                "float64",
                "bit",
                "string",
            ]
        ),
        orders,
        orders,
        st.integers(0, 3),  # gap before the point
    ),
    min_size=1,
    max_size=12,
)


@given(layouts, st.data())
def test_block_decoder_agrees_with_decode_point_by_point(
    layout: list[tuple[str, str, str, int]], data: st.DataObject
) -> None:
    points: dict[str, dict[str, object]] = {}
    address = 0
    for i, (kind, byte_order, word_order, gap) in enumerate(layout):
        address += gap
        spec: dict[str, object] = {
            "table": "holding_register",
            "address": address,
            "type": kind,
            "byte_order": byte_order,
            "word_order": word_order,
        }
        if kind == "bit":
            spec["bit"] = i % 16
        if kind == "string":
            spec["length"] = 3
        points[f"p{i}"] = spec
        address += {
            "int16": 1,
            "uint16": 1,
            "bit": 1,
            "string": 2,
            "int32": 2,
            "uint32": 2,
            "float32": 2,
        }.get(kind, 4)
    prof = Profile.model_validate({"name": "t", "points": points})
    pts = sorted(prof.points.values(), key=lambda p: p.start)
    start = pts[0].start
    end = max(p.end for p in pts)
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=end - start, max_size=end - start))
    decoder = BlockDecoder(pts, start, prof)
    got = {p.name: v for p, v in decoder(regs)}
    want = {p.name: decode(p, prof, regs[p.start - start : p.end - start]) for p in pts}
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[name])  # type: ignore[arg-type]
        else:
            assert got[name] == value, name


def test_block_decoder_for_coils() -> None:
    prof = Profile.model_validate(
        {
            "name": "t",
            "points": {
                "a": {"table": "coil", "address": 2, "type": "bool"},
                "b": {"table": "coil", "address": 5, "type": "bool"},
            },
        }
    )
    decoder = BlockDecoder(list(prof.points.values()), 2, prof)
    assert [(p.name, v) for p, v in decoder([True, False, False, False])] == [
        ("a", True),
        ("b", False),
    ]


@given(st.text(max_size=8).filter(lambda t: len(t.encode()) <= 8), orders, orders)
def test_strings_agree_with_the_simulator(text: str, byte_order: str, word_order: str) -> None:
    p = profile(
        address="40001", type="string", length=8, byte_order=byte_order, word_order=word_order
    )
    pt = p.points["p"]
    regs = encode(pt, p, text)
    assert regs == to_registers(pt, p, text)
    assert decode(pt, p, regs) == text.rstrip("\x00 ")


@pytest.mark.parametrize("name", ["manhole_cover", "river_level", "dust_noise", "hydrant_pressure"])
@given(data=st.data())
def test_any_answer_of_the_right_length_decodes_to_values(name: str, data: st.DataObject) -> None:
    """Whatever a device puts in its registers, decoding gives values (None for what is
    not a number), never an exception: device data is outside input."""
    from drivers.modbus.planner import plan
    from drivers.modbus.profile import load_profile

    profile = load_profile(name)
    for block in plan(list(profile.points.values()), 8, None):
        decoder = BlockDecoder(block.points, block.start, profile)
        if block.table.is_bit:
            answer: list[int] | list[bool] = data.draw(
                st.lists(st.booleans(), min_size=block.count, max_size=block.count)
            )
        else:
            answer = data.draw(
                st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count)
            )
        for i, item in enumerate(decoder.raw(answer)):
            value = decoder.value(i, item)
            assert value is None or isinstance(value, bool | int | float | str)
            if isinstance(value, float):
                assert math.isfinite(value)
