"""The one backoff formula: exponential, capped, jittered."""

from __future__ import annotations

import random

JITTER = (0.5, 1.0)  # so that a fleet does not retry in lock-step


def backoff(
    attempt: int,
    *,
    first: float,
    cap: float,
    factor: float = 2.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry `attempt` (1-based).

    ``min(cap, first * factor**(attempt - 1))`` scaled by a random factor in [0.5, 1]; the
    exponent is bounded so that huge attempt counts cannot overflow a float.
    """
    ceiling = min(cap, first * factor ** min(max(attempt, 1) - 1, 64))
    return ceiling * (rng or random).uniform(*JITTER)
