from __future__ import annotations

import itertools

import pytest

from selfsup import schedules


def test_cosine_endpoints_and_midpoint() -> None:
    assert schedules.cosine(0, 100, 1.0, 0.0) == pytest.approx(1.0)
    assert schedules.cosine(50, 100, 1.0, 0.0) == pytest.approx(0.5)
    assert schedules.cosine(100, 100, 1.0, 0.0) == pytest.approx(0.0)
    assert schedules.cosine(150, 100, 1.0, 0.2) == pytest.approx(0.2)  # clamped after the end


def test_warmup_then_cosine() -> None:
    f = [schedules.warmup_cosine(s, 100, peak=2.0, warmup=10) for s in range(101)]
    assert f[0] == 0.0 and f[5] == pytest.approx(1.0) and f[10] == pytest.approx(2.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))  # non-increasing after warm-up
    assert f[100] == pytest.approx(0.0)


def test_time_budget_uses_same_functions() -> None:
    # Schedules accept float progress: (elapsed seconds, budget seconds).
    assert schedules.cosine(30.0, 60.0, 1.0, 0.0) == pytest.approx(0.5)
    assert schedules.momentum(0, 10) == pytest.approx(0.996)
    assert schedules.momentum(10, 10) == pytest.approx(1.0)


def test_progressive_size_grows_in_steps_of_four_to_full_size() -> None:
    # 32 px views from half size, full at 75% of the budget: 16 + 16 * p / 0.75, to 4 px.
    sizes = [schedules.progressive_size(p / 8, 32, 0.5, 0.75) for p in range(9)]
    assert sizes == [16, 20, 20, 24, 28, 28, 32, 32, 32]
    assert schedules.progressive_size(0.0, 32, 1.0, 0.75) == 32  # start 1: off
    assert schedules.progressive_size(0.0, 32, 0.5, 0.0) == 32  # no ramp: full at once
    assert schedules.progressive_size(0.0, 6, 0.1, 0.5) == 4  # never below one step
