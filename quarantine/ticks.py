"""Periodic work on injected time: one object per "every N seconds", instead of a
``_last_*`` timestamp per job spread over the loop."""

from __future__ import annotations

import math


class Every:
    """Due at most once per *interval* seconds of the time it is given."""

    __slots__ = ("interval", "last")

    def __init__(self, interval: float):
        self.interval = interval
        self.last = -math.inf

    def due(self, now: float, force: bool = False) -> bool:
        """True (and restarts the interval) if the interval has passed or *force*."""
        if force or now - self.last >= self.interval:
            self.last = now
            return True
        return False

    def soon(self) -> None:
        """Make the next :meth:`due` true whatever the time."""
        self.last = -math.inf
