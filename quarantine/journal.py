"""The audit trail: what happened to every message qsup handled, and when.

One database, ``journal``, keyed ``TTTTTTTTTTTTTT:TAG`` where the T are the time in
microseconds as 14 hex digits: keys sort by time, so a window of time is one cursor
range (``qsup export --since/--until``). An entry is a group that shares its fate:

- the messages of one batch delivered in one pass (TAG the batch ID): one write per
  batch, in the pass's transaction, beside the deliveries' intent. Their Message-ID
  and sender are not read then (reading headers would cost about as much as all of
  qsup's other work per message): ``export`` reads them from outgoing/ while the
  file is there;
- one quarantined, released or purged message (TAG its queue ID), with its sender
  and Message-ID from the quarantine record;
- a message that vanished from the queue before its planned move (``vanished``):
  the entry written with the intent did not happen.

Entries older than ``done_retention_hours`` are pruned with the completion records,
so the journal is bounded. Reading is in chunks of short read transactions, so an
export of any length holds neither much memory nor old pages of the map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from quarantine.hookspecs import Move
from quarantine.store import Store, Txn
from quarantine.views import format_ending

log = logging.getLogger("qsup")

DB = "journal"
FATES = ("delivered", "tagged", "quarantined", "released", "purged", "vanished")
CHUNK = 1000  # entries per read transaction
_PRUNE_TXN = 5000


def key(t: float, tag: str) -> str:
    return f"{max(0, int(t * 1_000_000)):014x}:{tag}"


def time_of(k: str) -> float:
    return int(k[:14], 16) / 1_000_000


@dataclass(slots=True)
class Row:
    """One message in one entry: what ``qsup export`` prints."""

    qid: str
    fate: str
    time: float
    message_id: str = ""
    sender: str = ""
    verdict: str = ""
    scanner: str = ""
    batch: str = ""
    name: str = ""  # its file name where it went, if not its ID


def crash_verdict(record: dict) -> str:
    """The verdict column of a quarantine: the crash kind and its signal or exit code,
    or the scanner's verdict that quarantined it (infected NAME, spam S/T)."""
    why = record.get("why", "?")
    if record.get("kind") in ("infected", "spam"):
        return record.get("verdict") or why
    if record.get("kind") == "orphan":
        return f"orphan: {why}"
    return f"crash: {format_ending(why, record.get('signal'), record.get('exit_code'))}"


def message_id(record: dict) -> str:
    return (record.get("headers") or {}).get("Message-Id", "")


class Journal:
    """The write side: one entry per group, in the caller's transaction."""

    def __init__(self, scanner: Callable[[], str] = lambda: ""):
        self.scanner = scanner  # the scanner's identity now (its name, for now)

    def delivered(self, w: Txn, t: float, group: str, planned: list[Move], ended: Iterable) -> None:
        """The deliveries of one pass (*planned*, recorded under intent *group*), one
        entry per batch of *ended* that delivered any."""
        names = {m.qid: m.name for m in planned}
        tags = {m.qid for m in planned if m.tag}
        scanner = self.scanner()
        for e in ended:
            ids = [q for q in e.batch.ids if q in names]
            if not ids:
                continue
            entry = {"fate": "delivered", "ids": ids, "batch": e.batch_id, "scanner": scanner,
                     "group": group}
            verdicts = {q: e.verdicts[q] for q in ids if e.verdicts.get(q, "clean") != "clean"}
            renamed = {q: names[q] for q in ids if names[q] != q}
            tagged = [q for q in ids if q in tags]
            if verdicts:
                entry["verdicts"] = verdicts
            if tagged:
                entry["tagged"] = tagged  # delivered with a spam verdict's headers added
            if renamed:
                entry["names"] = renamed
            w.put(DB, key(t, e.batch_id), entry)

    def quarantined(self, w: Txn, t: float, record: dict) -> str:
        """A quarantine (in the transaction of its record); returns the entry's key."""
        k = key(t, record["qid"])
        w.put(DB, k, {"fate": "quarantined", "ids": [record["qid"]], "fp": record.get("fp", ""),
                      "batch": record.get("batch", ""), "verdict": crash_verdict(record), "scanner": record.get("scanner") or self.scanner(),
                      "sender": record.get("sender", ""), "message_id": message_id(record)})
        return k

    @staticmethod
    def operator(w: Txn, t: float, fate: str, record: dict, note: str = "") -> None:
        """A release or a purge of the quarantined message of *record*."""
        entry = {"fate": fate, "ids": [record["qid"]], "fp": record.get("fp", ""),
                 "sender": record.get("sender", ""), "message_id": message_id(record),
                 "verdict": crash_verdict(record), "scanner": record.get("scanner", "")}
        if note:
            entry["note"] = note
        w.put(DB, key(t, record["qid"]), entry)

    @staticmethod
    def vanished(w: Txn, t: float, move: Move) -> None:
        """A planned move found its message gone: its earlier entry did not happen."""
        w.put(DB, key(t, move.qid), {"fate": "vanished", "ids": [move.qid], "fp": move.fp,
                                     "note": f"gone before its move to {move.dest}"})


def prune(store: Store, cutoff: float) -> int:
    """Drop the entries older than *cutoff* (wall time), a bounded number per write."""
    stop, count = key(cutoff, ""), 0
    while True:
        with store.read() as r:
            old = [k for k, _ in _take(r.range(DB, "", stop), _PRUNE_TXN)]
        if not old:
            return count
        with store.write() as w:
            for k in old:
                w.delete(DB, k)
        count += len(old)


def _take(items: Iterator, n: int) -> Iterator:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item


def entries(store: Store, since: float | None = None, until: float | None = None
            ) -> Iterator[tuple[str, dict]]:
    """Entries with since <= time < until, oldest first, read CHUNK at a time."""
    start = key(since, "") if since is not None else ""
    stop = key(until, "") if until is not None else ""
    while True:
        with store.read() as r:
            chunk = list(_take(r.range(DB, start, stop), CHUNK))
        yield from chunk
        if len(chunk) < CHUNK:
            return
        start = chunk[-1][0] + "\x00"  # just after the last key read


def rows(k: str, entry: dict) -> Iterator[Row]:
    """The rows of one entry, a message each."""
    t, fate = time_of(k), entry.get("fate", "?")
    verdicts, names = entry.get("verdicts") or {}, entry.get("names") or {}
    tagged = set(entry.get("tagged", ()))
    for qid in entry.get("ids", ()):
        verdict = verdicts.get(qid, "clean") if fate in ("delivered", "tagged") else entry.get("verdict", "")
        yield Row(qid, "tagged" if qid in tagged else fate, t, entry.get("message_id", ""), entry.get("sender", ""), verdict,
                  entry.get("scanner", ""), entry.get("batch", ""), names.get(qid, ""))


def of_message(store: Store, qid: str) -> list[tuple[Row, dict]]:
    """Every row of *qid* (oldest first) with its entry. A scan of the journal: what
    ``qsup show`` of a delivered message costs (a second or so per million messages)."""
    found = []
    for k, entry in entries(store):
        if qid in entry.get("ids", ()):
            found += [(row, entry) for row in rows(k, entry) if row.qid == qid]
    return found


__all__ = ["DB", "FATES", "Journal", "Row", "crash_verdict", "entries", "key", "of_message", "prune",
           "rows", "time_of"]
