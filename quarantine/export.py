"""``qsup export``: the journal of a window of time, one record per message and fate,
as CSV or a JSON array (docs/reference.md §2.6) — what an operator needs to tell affected users
after an incident (seed 004).

Rows are written as they are read (the journal in chunks, see
:func:`quarantine.journal.entries`), so memory stays flat however long the window.
A delivered message's Message-ID and sender are read here, from its file in the
spool's outgoing/ while it is there (the journal does not read headers in the loop:
that would cost about as much as the rest of qsup's work per message). A queue that
hands delivered mail on (Postfix) has no such file: the two stay empty.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

from quarantine import journal
from quarantine.binding import Binding
from quarantine.errors import ConfigError
from quarantine.headers import HEAD_BYTES, parse
from quarantine.ids import is_queue_id
from quarantine.spool import read_head
from quarantine.store import Store

COLUMNS = ("qid", "fate", "time", "message_id", "sender", "verdict", "scanner")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhdw]))+")


def parse_time(text: str, now: float, flag: str = "--since") -> float:
    """An ISO time (local time if it names no zone) or a duration back from *now*:
    ``90s``, ``15m``, ``2h``, ``1d12h``, ``1w``."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        return now - sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"{flag}: expected an ISO time (2026-03-01T14:00) or a duration "
                          f"(2h, 30m, 1d), not {text!r}") from None


def iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


class Headers:
    """Message-ID and sender of delivered messages, from the spool's outgoing/."""

    def __init__(self, found: Binding | None, spool: str | None):
        root = None
        if found is not None and found.kind == "spool":
            root = found.reopen.get("spool") or found.where
        elif found is None:
            root = spool  # a state not bound yet: the spool the configuration names
        self.outgoing = os.path.join(root, "outgoing") if root else None

    def fill(self, row: journal.Row) -> journal.Row:
        if row.fate not in ("delivered", "tagged") or self.outgoing is None or row.sender:
            return row
        name = row.name or row.qid
        head = read_head(os.path.join(self.outgoing, name), HEAD_BYTES) if is_queue_id(name) else None
        if head is not None:
            hdrs = parse(head[1], limit=998)
            row.message_id = hdrs.get("Message-Id", "")
            row.sender = hdrs.get("From") or hdrs.get("Return-Path") or ""
        return row

    def fill_dict(self, row: dict) -> dict:
        """:meth:`fill` for a row as ``ops.details`` gives it (a dict)."""
        filled = self.fill(journal.Row(**{k: row[k] for k in journal.Row.__slots__}))
        return dict(row, message_id=filled.message_id, sender=filled.sender)


def rows(store: Store, since: float | None, until: float | None, headers: Headers) -> Iterator[journal.Row]:
    for k, entry in journal.entries(store, since, until):
        for row in journal.rows(k, entry):
            yield headers.fill(row)


def _record(row: journal.Row) -> dict:
    return {"qid": row.qid, "fate": row.fate, "time": iso(row.time), "message_id": row.message_id,
            "sender": row.sender, "verdict": row.verdict, "scanner": row.scanner}


def write(out: TextIO, found: Iterator[journal.Row], as_json: bool) -> int:
    """Stream *found* to *out*; returns how many rows."""
    count = 0
    if as_json:
        out.write("[")
        for count, row in enumerate(found, 1):
            out.write(("\n  " if count == 1 else ",\n  ") + json.dumps(_record(row), ensure_ascii=False))
        out.write("\n]\n" if count else "]\n")
        return count
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for count, row in enumerate(found, 1):
        writer.writerow(_record(row))
    return count


__all__ = ["COLUMNS", "Headers", "iso", "parse_time", "rows", "write"]
