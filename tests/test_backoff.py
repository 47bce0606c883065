"""The backoff policies: pure functions of the attempt number, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quarantine.backoff import (
    PROBE_CAP,
    PROBE_FIRST,
    RESPAWN_CAP,
    RESPAWN_FIRST,
    capped_exponential,
    probe_delay,
    respawn_delay,
)

POLICIES = [(probe_delay, PROBE_FIRST, PROBE_CAP), (respawn_delay, RESPAWN_FIRST, RESPAWN_CAP)]
attempts = st.integers(min_value=-10, max_value=10**6)


@pytest.mark.parametrize("delay, first, cap", POLICIES, ids=["probe", "respawn"])
@given(a=attempts, b=attempts)
def test_monotone_capped_and_first_is_least(delay, first, cap, a, b):
    lo, hi = sorted((a, b))
    assert delay(lo) <= delay(hi) <= cap
    assert delay(1) == first <= delay(a)


@given(a=attempts, first=st.floats(0.001, 100.0), extra=st.floats(0.0, 10_000.0))
def test_capped_exponential_for_any_first_and_cap(a, first, extra):
    cap = first + extra
    value = capped_exponential(a, first, cap)
    assert capped_exponential(1, first, cap) == first <= value <= cap
    assert value <= capped_exponential(a + 1, first, cap)


def test_the_delays_qsup_has_always_used():
    # the schedule tenacity's wait_exponential gave before it was replaced
    assert [probe_delay(n) for n in range(0, 16)] == [
        0.25, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0, 300.0, 300.0]
    assert [respawn_delay(n) for n in range(0, 16)] == [
        0.2, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]
