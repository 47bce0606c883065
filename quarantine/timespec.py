"""A point in time as a person types it: an ISO time, or a duration back from now.

    parse("2h", now)                  -> now - 7200
    parse("1h30m", now)               -> now - 5400
    parse("2026-05-01T12:00", now)    -> that minute, local time
    parse("2026-05-01 12:00Z", now)   -> that minute, UTC
"""

from __future__ import annotations

import re
from datetime import datetime

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION = re.compile(rf"(?:{_PART.pattern})+")
HELP = "an ISO time (2026-05-01T12:00, local time unless it names its zone) or a duration back from now (2h, 30m, 7d, 1h30m)"


def duration(text: str) -> float | None:
    """Seconds in *text* (``2h``, ``30m``, ``7d``, ``1h30m``, ``90s``, ``2w``), or None
    if it is not a duration."""
    text = text.strip().lower()
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * UNITS[unit] for n, unit in _PART.findall(text))


def parse(text: str, now: float) -> float:
    """The wall-clock time *text* names; ValueError saying what is expected."""
    seconds = duration(text)
    if seconds is not None:
        return now - seconds
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: expected {HELP}") from None
    return when.timestamp()  # a naive time is local time, as the times qsup prints
