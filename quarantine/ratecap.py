"""Rate-capped log lines for things that happen once per message (docs/reference.md §5.6):
a flood of infected mail gives a few lines a minute and a count, not a line each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateCap:
    """At most *per_window* lines per *window* seconds; the rest are counted and the
    count is said once, with the next line after the window."""

    def __init__(self, log: logging.Logger, per_window: int = 30, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.per_window, self.window, self.clock = log, per_window, window, clock
        self.started = -float("inf")
        self.said = 0
        self.held_back = 0

    def __call__(self, level: int, msg: str, *args, qid: str | None = None) -> bool:
        """Log one line if the cap allows; True if it was logged. *qid*: the message
        the line is about (a field of its own in the journal)."""
        now = self.clock()
        if now - self.started >= self.window:
            if self.held_back:
                self.log.log(level, "… and %d more like it in the last %.0fs (rate-capped)",
                             self.held_back, self.window)
            self.started, self.said, self.held_back = now, 0, 0
        if self.said >= self.per_window:
            self.held_back += 1
            return False
        self.said += 1
        self.log.log(level, msg, *args, extra={"qid": qid} if qid else None)
        return True
