from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.modbus.profile import (
    DataType,
    Profile,
    ProfileError,
    Table,
    load_profile,
    parse_address,
    shipped_profiles,
)


@pytest.mark.parametrize(
    ("text", "table", "address"),
    [
        ("40001", Table.HOLDING_REGISTER, 0),
        ("40100", Table.HOLDING_REGISTER, 99),
        ("30001", Table.INPUT_REGISTER, 0),
        ("10005", Table.DISCRETE_INPUT, 4),
        ("00001", Table.COIL, 0),
        ("400001", Table.HOLDING_REGISTER, 0),
        ("465536", Table.HOLDING_REGISTER, 65535),
        ("17", None, 17),
    ],
)
def test_modicon_and_plain_addresses(text: str, table: Table | None, address: int) -> None:
    assert parse_address(text) == (table, address)


@pytest.mark.parametrize("text", ["40000", "4x0001", "-3", "465537", "abc"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - message checked elsewhere
        parse_address(text)


def test_modicon_address_implies_and_checks_table() -> None:
    p = Profile.model_validate(
        {"name": "x", "points": {"a": {"address": "40010", "type": "float32"}}}
    )
    assert p.points["a"].table is Table.HOLDING_REGISTER
    assert p.points["a"].address == 9
    assert p.points["a"].count == 2
    with pytest.raises(ValidationError, match="is a holding_register but table is coil"):
        Profile.model_validate(
            {"name": "x", "points": {"a": {"address": "40010", "table": "coil", "type": "bool"}}}
        )


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"table": "coil", "address": 0, "type": "uint16"}, "holds bool values"),
        ({"table": "holding_register", "address": 0, "type": "bool"}, "use bit for registers"),
        ({"table": "input_register", "address": 0, "type": "bit"}, "bit is required"),
        ({"table": "input_register", "address": 0, "type": "string"}, "length is required"),
        ({"table": "input_register", "address": 0, "access": "rw"}, "cannot be written"),
        ({"table": "holding_register", "address": 0, "min": 5, "max": 1}, "min is greater"),
        ({"table": "holding_register", "address": 65535, "type": "uint32"}, "beyond address"),
        ({"address": 3}, "Field required"),
        ({"table": "holding_register", "address": 0, "colour": 1}, "Extra inputs"),
    ],
)
def test_invalid_points(point: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Profile.model_validate({"name": "x", "points": {"a": point}})


def test_overlapping_points_are_refused_but_bits_may_share_a_register() -> None:
    with pytest.raises(ValidationError, match="points a and b overlap"):
        Profile.model_validate(
            {
                "name": "x",
                "points": {
                    "a": {"address": "40001", "type": "uint32"},
                    "b": {"address": "40002"},
                },
            }
        )
    p = Profile.model_validate(
        {
            "name": "x",
            "points": {
                "a": {"address": "40001", "type": "bit", "bit": 0},
                "b": {"address": "40001", "type": "bit", "bit": 5},
                "status": {"address": "40001", "type": "uint16"},
            },
        }
    )
    assert len(p.points) == 3
    with pytest.raises(ValidationError, match="points a and b are the same bit"):
        Profile.model_validate(
            {
                "name": "x",
                "points": {
                    "a": {"address": "40001", "type": "bit", "bit": 0},
                    "b": {"address": "40001", "type": "bit", "bit": 0},
                },
            }
        )


def test_shipped_profiles_all_load() -> None:
    names = shipped_profiles()
    assert {"manhole_cover", "river_level", "dust_noise", "hydrant_pressure"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.points, name
        assert all(p.description is None or p.description for p in profile.points.values())


def test_unknown_profile_lists_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="no shipped profile 'nope' \\(shipped: dust_noise"):
        load_profile("nope")


def test_user_profile_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\npoints:\n  level:\n    table: input_register\n    address: 0\n"
        "    type: float33\n",
        encoding="utf-8",
    )
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert f"profile {path}:6:5: points.level.type: Input should be" in str(info.value)
    path.write_text("name: mine\npoints:\n  level: {address: '30001', type: int16}\n")
    assert load_profile(str(path)).points["level"].type is DataType.INT16
