"""Messages in the quarantine that no record names (docs/reference.md §3).

A state directory lost or reset (a fresh one next to a full quarantine/, a restored
backup) would leave the quarantine's files unknown to ``qsup list``, ``release`` and
``purge``: mail nobody looks at. At the start of ``drain`` and ``run`` the quarantine
is compared with the records, and every file no record or pending move names gets a
record of kind ``orphan``, with the sender and subject from its headers. From then on
it is a quarantined message like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from quarantine.headers import HEAD_BYTES, summary
from quarantine.hookspecs import Move, Quarantined, Queue
from quarantine.ids import message_key
from quarantine.store import Store, Txn

log = logging.getLogger("qsup")

KIND = "orphan"
WHY = "no record: state lost or reset"
_PER_TXN = 5000


def known_names(r: Txn) -> set[str]:
    """Quarantine names the state accounts for: its records, and the moves into or
    out of the quarantine that a restart will finish."""
    names = {rec.get("name") or rec["qid"] for _, rec in r.items("quarantine")}
    for _, entry in r.items("intents"):
        for fields in entry.get("moves", ()):
            move = Move(*fields)
            if move.dest == "quarantine":
                names.add(move.name)
            if move.origin == "quarantine":
                names.add(move.source or move.qid)
    return names


def record(entry: Quarantined, queue: Queue, wall: float) -> dict:
    sender, subject, headers = summary(queue.head("quarantine", entry.name, HEAD_BYTES))
    return {"qid": entry.qid, "fp": entry.fp, "key": message_key(entry.qid, entry.fp),
            "when": entry.since, "kind": KIND, "why": WHY, "signal": None, "exit_code": None,
            "peak_rss": 0, "strikes": 0, "size": entry.size, "sender": sender, "subject": subject,
            "headers": headers, "path": [], "queue": queue.name, "name": entry.name,
            "state": "quarantined", "found": wall}


def _unknown(queue: Queue, names: Iterable[str], known: set[str], keys: set[str]) -> list[Quarantined]:
    found = []
    for name in names:
        if name in known:
            continue
        entry = queue.quarantined(name)
        if entry is None:
            continue  # gone since the listing
        key = message_key(entry.qid, entry.fp)
        if key in keys:  # a second file of a message that has a record: say it, keep both
            log.warning("%s: quarantine file %s has no record of its own; it is the same message "
                        "as the record %s, which names another file", entry.qid, name, key,
                        extra={"qid": entry.qid})
            continue
        keys.add(key)
        found.append(entry)
    return found


def adopt(store: Store, queue: Queue, wall: float) -> int:
    """Record every quarantined message no record names; how many there were."""
    names = getattr(queue, "quarantine_names", None)
    if names is None or getattr(queue, "quarantined", None) is None:
        return 0  # a queue that cannot list its quarantine
    with store.read() as r:
        known = known_names(r)
        keys = {key for key, _ in r.items("quarantine")}
    found = _unknown(queue, names(), known, keys)
    for start in range(0, len(found), _PER_TXN):
        with store.write() as w:
            for entry in found[start:start + _PER_TXN]:
                rec = record(entry, queue, wall)
                w.put("quarantine", rec["key"], rec)
    if found:
        log.warning("found %d message(s) in the quarantine with no record (state lost or reset): "
                    "recorded as orphan; qsup list shows them, release and purge work on them",
                    len(found))
    return len(found)
