"""When a driver reports a value: on change beyond a deadband, periodically, or both.

Shared by drivers so that every device type follows the same, documented strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.api import Duration, Quality, Value


class ReportConfig(BaseModel):
    """The report strategy of one device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["on_change", "periodic", "both"] = Field(
        default="both",
        description="on_change: when a value moves by its deadband; periodic: every "
        "period; both: either.",
    )
    period: Duration = Field(
        default=300.0, gt=0, description="Longest time between two reports of a point."
    )
    deadband: float = Field(
        default=0.0, ge=0, description="Default change needed for an on-change report."
    )
    min_interval: Duration = Field(
        default=0.0,
        ge=0,
        description="Shortest time between two reports of a point (throttles fast sources "
        "such as a 10 Hz GPS); a change of quality is always reported.",
    )


@dataclass(slots=True)
class Reported:
    value: Value
    quality: Quality
    at: float


class Reporter:
    """Decides, point by point, whether a new value is reported, and remembers the last."""

    def __init__(self, config: ReportConfig) -> None:
        self.config = config
        self.last: dict[str, Reported] = {}

    def due(
        self, name: str, value: Value, quality: Quality, now: float, deadband: float | None
    ) -> bool:
        """Whether to report `value` now; if so it is recorded as reported."""
        cfg = self.config
        last = self.last.get(name)
        if last is None:
            self.last[name] = Reported(value, quality, now)
            return True
        if quality is not last.quality:
            pass  # a quality change is always news
        elif now - last.at < cfg.min_interval:
            return False
        elif last.value == value:
            if cfg.mode == "on_change" or now - last.at < cfg.period:
                return False
        elif not (
            (cfg.mode != "on_change" and now - last.at >= cfg.period)
            or (cfg.mode != "periodic" and _changed(last.value, value, deadband, cfg))
        ):
            return False
        # updated in place: this runs for every value a driver reads
        last.value = value
        last.quality = quality
        last.at = now
        return True

    def forget(self, name: str) -> None:
        """Report the next value of `name` whatever it is (e.g. after a write)."""
        self.last.pop(name, None)


def _changed(old: Value, new: Value, deadband: float | None, cfg: ReportConfig) -> bool:
    band = deadband if deadband is not None else cfg.deadband
    if (
        band > 0
        and isinstance(old, int | float)
        and isinstance(new, int | float)
        and not isinstance(old, bool)
        and not isinstance(new, bool)
    ):
        return abs(new - old) >= band
    return new != old
