from __future__ import annotations

import random

from gateway.kernel.backoff import backoff


def test_backoff_grows_by_its_factor_is_capped_and_jittered() -> None:
    rng = random.Random(3)
    delays = [backoff(n, first=0.5, cap=8.0, rng=rng) for n in range(1, 9)]
    ceilings = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    assert len({round(d, 6) for d in delays[4:]}) == 4  # jittered, not lock-step


def test_huge_attempt_counts_and_zero_stay_in_range() -> None:
    assert backoff(10**9, first=1.0, cap=60.0, factor=1.5) <= 60.0
    assert 0.25 <= backoff(0, first=0.5, cap=60.0) <= 0.5
