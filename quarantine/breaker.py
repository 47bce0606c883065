"""The systemic-failure breaker: tells a broken environment from a poison message.

Pure state over injected time. The supervisor feeds it events and asks it whether
to dispatch, whether to probe with the canary, and why it is open.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from quarantine.backoff import probe_delay

# Deliveries per distinct solo crash above which a storm is a run of poison in a
# flowing queue (seed 003) rather than a broken environment.
STORM_SHARE = 20


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass
class Breaker:
    storm_limit: int = 10  # distinct messages crashing alone …
    storm_window: float = 600.0  # … within this many seconds open the breaker
    state: BreakerState = BreakerState.CLOSED
    reason: str = ""
    since: float = 0.0
    probes: int = 0  # failed probes since it opened
    next_probe: float = 0.0
    trips: int = 0  # openings in a row, each within storm_window of the last closing
    closed_at: float = -1e18
    _recent: deque = field(default_factory=deque)  # (time, key) of distinct solo crashes
    _seen: set = field(default_factory=set)
    _delivered: deque = field(default_factory=deque)  # (time, count) within storm_window

    @property
    def is_open(self) -> bool:
        return self.state is BreakerState.OPEN

    def trip(self, reason: str, now: float, escalate: bool = True) -> bool:
        """Open the breaker; True if it was closed (say why once, not per message)."""
        if self.is_open:
            return False
        self.state, self.reason, self.since = BreakerState.OPEN, reason, now
        self.probes = 0
        # A breaker that reopens soon after closing waits longer each time, so a
        # storm the canary cannot see is slowed down, not let through in chunks.
        recent = now - self.closed_at < self.storm_window
        self.trips = self.trips + 1 if escalate and recent else 1
        self.next_probe = now + probe_delay(self.trips)
        return True

    def delivered(self, count: int, now: float) -> None:
        """Note messages handed on: the traffic a storm is measured against."""
        self._delivered.append((now, count))
        while self._delivered and self._delivered[0][0] <= now - self.storm_window:
            self._delivered.popleft()

    def storm(self, reason: str, now: float) -> bool:
        """Open for a storm. Escalate the wait only when the crashes are a large share
        of the traffic (fewer than STORM_SHARE deliveries per distinct crash): a broken
        environment the canary cannot see, not a run of poison in a flowing queue."""
        flowing = sum(n for _, n in self._delivered) >= STORM_SHARE * len(self._seen)
        opened = self.trip(reason, now, escalate=not flowing)
        if opened and flowing:
            self.next_probe = now  # ask the canary at once: every idle second stalls the queue
        return opened

    def solo_crash(self, key: str, now: float) -> bool:
        """Count a distinct message crashing alone; True if that makes a storm."""
        while self._recent and self._recent[0][0] <= now - self.storm_window:
            self._seen.discard(self._recent.popleft()[1])
        if key not in self._seen:
            self._seen.add(key)
            self._recent.append((now, key))
        return len(self._seen) > self.storm_limit

    def probe_due(self, now: float) -> bool:
        return self.is_open and now >= self.next_probe

    def probe_failed(self, now: float) -> None:
        self.probes += 1
        self.next_probe = now + probe_delay(self.trips + self.probes)

    def probe_passed(self, now: float) -> None:
        """The canary passed: the environment is good again. The storm window starts
        afresh, or the same storm would reopen it at once."""
        self.state, self.reason, self.probes = BreakerState.CLOSED, "", 0
        self.closed_at = now
        self._recent.clear()
        self._seen.clear()

    def snapshot(self) -> dict:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since if self.is_open else None,
            "failed_probes": self.probes,
            "next_probe": self.next_probe if self.is_open else None,
        }
