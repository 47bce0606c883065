"""Write-ahead moves and the records around them.

Every move of a message is written to the ``intents`` database before the queue
makes it and cleared after, so a qsup killed at any instant finishes the move on
its next start (:func:`finish_pending`). ``Queue.apply`` is idempotent, which is
what makes replaying an intent safe.
"""

from __future__ import annotations

import logging

from quarantine.hookspecs import Move, Queue
from quarantine.ids import message_key
from quarantine.store import Store, Txn

log = logging.getLogger("qsup")


def intent_key(move: Move) -> str:
    return f"{move.origin}/{move.source or move.qid}"


def record_intents(w: Txn, moves: list[Move], extra: dict | None = None) -> None:
    for move in moves:
        # vars(), not dataclasses.asdict(): the fields are plain strings, and asdict's
        # deep copies were a tenth of the supervisor's time per message
        w.put("intents", intent_key(move), {"move": dict(vars(move)), **(extra or {})})


def complete(w: Txn, move: Move, result: str, now: float, extra: dict | None) -> None:
    """Records that follow a finished move (in the same transaction that clears it)."""
    w.delete("intents", intent_key(move))
    key = message_key(move.qid, move.fp)
    if result == "gone":
        log.warning("%s vanished from the queue before qsup could move it to %s", move.qid, move.dest)
        return
    if move.dest == "outgoing":
        w.put("done", key, {"t": now, "name": move.name})
        if move.origin == "quarantine":  # release --no-scan: no longer in the quarantine
            w.delete("quarantine", key)
    elif move.dest == "quarantine":
        record = dict((extra or {}).get("record") or w.get("quarantine", key) or {})
        record.update(name=move.name, state="quarantined")
        w.put("quarantine", key, record)
    elif move.dest == "incoming":
        w.delete("quarantine", key)
        hist = w.get("history", key)
        if hist:
            hist.update(strikes=0, released=now)
            w.put("history", key, hist)


def apply_all(store: Store, queue: Queue, moves: list[Move], now: float, extra: dict | None = None) -> dict[str, str]:
    """Make the moves (intents already recorded) and clear their intents."""
    results = {}
    for move in moves:
        results[intent_key(move)] = queue.apply(move)
    with store.write() as w:
        for move in moves:
            complete(w, move, results[intent_key(move)], now, extra)
    return results


def move(store: Store, queue: Queue, moves: list[Move], now: float, extra: dict | None = None) -> dict[str, str]:
    """Record, make and complete moves: the whole write-ahead protocol."""
    if not moves:
        return {}
    with store.write() as w:
        record_intents(w, moves, extra)
    return apply_all(store, queue, moves, now, extra)


def finish_pending(store: Store, queue: Queue, now: float) -> int:
    """On start: finish every move a dead qsup left half-done. Returns how many."""
    with store.read() as r:
        pending = list(r.items("intents"))
    for _, entry in pending:
        mv = Move(**entry["move"])
        result = queue.apply(mv)
        with store.write() as w:
            complete(w, mv, result, now, entry)
        log.info("finished an interrupted move of %s to %s (%s)", mv.qid, mv.dest, result)
    return len(pending)
