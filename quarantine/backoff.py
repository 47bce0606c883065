"""Every retry and backoff policy of qsup, named and kept together (tenacity)."""

from __future__ import annotations

import tenacity

# Probing a broken environment with the canary: 0.25 s, 0.5 s, 1 s … capped at 5 minutes.
PROBE_WAIT = tenacity.wait_exponential(multiplier=0.25, min=0.25, max=300)

# Respawning a persistent worker that keeps dying at start-up.
RESPAWN_WAIT = tenacity.wait_exponential(multiplier=0.2, min=0.2, max=30)


def _delay(wait: tenacity.wait.wait_base, attempt: int) -> float:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return float(wait(state))


def probe_delay(attempt: int) -> float:
    """Seconds to wait before canary probe number *attempt* (1-based)."""
    return _delay(PROBE_WAIT, attempt)


def respawn_delay(attempt: int) -> float:
    return _delay(RESPAWN_WAIT, attempt)
