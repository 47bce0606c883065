"""Every retry and backoff policy of qsup, named and kept together.

qsup never blocks to retry. Its loop schedules the next canary probe or worker
respawn at ``now + delay`` by its injected clock and goes on serving, so a policy
is a pure function from the attempt number to seconds: no sleep, no clock, no
state. (These delays once came from tenacity's ``wait_exponential``, but its wait
strategies take a ``RetryCallState`` that only tenacity's own blocking retry loop
builds, so qsup built one by hand just to read a number; the dependency is gone.)
"""

from __future__ import annotations

# Probing a broken environment with the canary: 0.25 s, 0.5 s, 1 s … capped at 5 minutes.
PROBE_FIRST, PROBE_CAP = 0.25, 300.0

# Respawning a persistent worker that keeps dying at start-up: 0.2 s, 0.4 s … at most 30 s.
RESPAWN_FIRST, RESPAWN_CAP = 0.2, 30.0

# Asking the fleet's Redis again after it failed: 1 s, 2 s, 4 s … at most a minute.
FLEET_FIRST, FLEET_CAP = 1.0, 60.0

_MAX_DOUBLINGS = 1000  # far past any cap, and 2.0 ** 1000 is still a finite float


def capped_exponential(attempt: int, first: float, cap: float) -> float:
    """Seconds before try number *attempt* (1-based): *first*, doubled for each
    try after the first, never more than *cap*. Attempts below 1 count as 1.

    Non-decreasing in *attempt*, and ``first`` is its least value (for first <= cap).
    """
    doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
    return min(first * 2.0**doublings, cap)


def probe_delay(attempt: int) -> float:
    """Seconds to wait before canary probe number *attempt* (1-based)."""
    return capped_exponential(attempt, PROBE_FIRST, PROBE_CAP)


def respawn_delay(attempt: int) -> float:
    """Seconds to wait before starting a spare worker again after *attempt* deaths."""
    return capped_exponential(attempt, RESPAWN_FIRST, RESPAWN_CAP)


def fleet_delay(attempt: int) -> float:
    """Seconds before the fleet's Redis is asked again after *attempt* failures in a row."""
    return capped_exponential(attempt, FLEET_FIRST, FLEET_CAP)
