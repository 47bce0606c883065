"""What a verdict means for a message (docs/reference.md §7), the same for every
queue. Pure: the supervisor acts on the answer.

===================  ===========================================================
verdict              action (config key)
===================  ===========================================================
``infected NAME``    quarantined, kind ``infected`` (``on_infected`` = quarantine |
                     deliver)
``spam S/T``         delivered with ``X-Spam-Flag: YES`` and ``X-Spam-Status: Yes,
                     score=S required=T`` (``on_spam`` = tag | quarantine |
                     deliver); quarantined, kind ``spam``, at or above
                     ``spam_quarantine_score``
anything else        delivered unchanged
===================  ===========================================================

Nothing here, or anywhere in qsup, writes to a message's sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_SCORE = re.compile(r"^(-?\d+(?:\.\d+)?)(?:/(-?\d+(?:\.\d+)?))?$")


class Act(StrEnum):
    DELIVER = "deliver"
    TAG = "tag"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Action:
    act: Act = Act.DELIVER
    kind: str = ""  # of a quarantine: infected, spam
    name: str = ""  # the virus name of an infected verdict
    headers: tuple[tuple[str, str], ...] = ()  # for a tag

    @property
    def delivers(self) -> bool:
        return self.act is not Act.QUARANTINE


DELIVER = Action()


def spam_score(rest: str) -> tuple[float, float | None] | None:
    """``7.1/5.0`` -> (7.1, 5.0); ``7.1`` -> (7.1, None); None if it is no score."""
    found = _SCORE.match(rest.strip())
    if not found:
        return None
    return float(found.group(1)), float(found.group(2)) if found.group(2) else None


def action(verdict: str | None, config) -> Action:
    """What *verdict* (the words after ``done ID``) calls for under *config*."""
    if not verdict:
        return DELIVER
    word, _, rest = verdict.strip().partition(" ")
    word = word.lower()
    if word == "infected":
        if config.on_infected == "deliver":
            return DELIVER
        return Action(Act.QUARANTINE, kind="infected", name=rest.strip() or "unnamed")
    if word != "spam":
        return DELIVER
    score = spam_score(rest)
    limit = config.spam_quarantine_score
    if config.on_spam == "quarantine" or (limit is not None and score is not None and score[0] >= limit):
        return Action(Act.QUARANTINE, kind="spam", name=rest.strip())
    if config.on_spam == "deliver":
        return DELIVER
    return Action(Act.TAG, headers=spam_headers(score))


def spam_headers(score: tuple[float, float | None] | None) -> tuple[tuple[str, str], ...]:
    status = "Yes"
    if score is not None:
        status += f", score={score[0]:g}" + (f" required={score[1]:g}" if score[1] is not None else "")
    return (("X-Spam-Flag", "YES"), ("X-Spam-Status", status))


def header_bytes(headers, head: bytes) -> bytes:
    """The header lines to put on top of a message whose first bytes are *head*,
    with its line ending (CRLF if its first line has one)."""
    first = head.split(b"\n", 1)[0]
    eol = b"\r\n" if first.endswith(b"\r") else b"\n"
    return b"".join(f"{name}: {value}".encode("ascii", "replace") + eol for name, value in headers)
