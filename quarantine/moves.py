"""Write-ahead moves and the records around them.

Moves are made in groups (the deliveries of one supervisor pass, one quarantine,
one release). A group is written to the ``intents`` database under one key before
the queue makes any of its moves, and cleared, with the records that follow the
moves, after. A qsup killed at any instant finishes the group on its next start
(:func:`finish_pending`). ``Queue.apply`` is idempotent, which is what makes
replaying an intent safe; it is also why the clearing may wait for the next
durable commit (the supervisor groups it with its next pass). A queue that can
make several moves at once (the optional ``Queue.apply_all``) is given the moves
not made yet together, with the same results and the same idempotence.

A move the queue refuses (``QueueError``) leaves the message where it was and its
intent on disk, so the next start finishes it once the cause is fixed; except a
group made at once by :func:`move` (a release), whose failure the operator is told:
what it did not make is withdrawn, never made later behind their back. A name taken
since it was chosen (a new message under a reused queue ID) is chosen again, and
written to the intent before the move is made.
"""

from __future__ import annotations

import dataclasses
import logging

from quarantine.errors import QueueError
from quarantine.hookspecs import Move, Queue
from quarantine.ids import message_key
from quarantine.journal import Journal
from quarantine.store import Store, Txn

log = logging.getLogger("qsup")
_FIELDS = tuple(f.name for f in dataclasses.fields(Move))  # an intent stores them in this order
_CHOICES = 3  # names tried for a move whose name keeps being taken


def record(w: Txn, key: str, moves: list[Move], extra: dict | None = None) -> None:
    """The intent: every move of the group, before any is made."""
    w.put("intents", key, {"moves": [[getattr(m, f) for f in _FIELDS] for m in moves], **(extra or {})})


def make(queue: Queue, moves: list[Move]) -> list[str]:
    """Make the moves (their intent is on disk); the queue's result for each. A
    refused move, or a name taken since it was chosen, stops here (QueueError): the
    intent stays, and the next start finishes the group."""
    results: list[str | None] = [None] * len(moves)
    try:
        _apply(queue, moves, results)
    except QueueError as exc:
        raise QueueError(f"{exc}; left where it is, the next start retries the move") from None
    for m, result in zip(moves, results):
        if result == "taken":
            raise QueueError(f"cannot move {m.qid} to {m.dest}/{m.name}: the name was taken "
                             f"since it was chosen; the next start chooses another")
    return results


def _apply(queue: Queue, group: list[Move], results: list[str | None]) -> None:
    """Make the moves not made yet (None in *results*), filling in their results: in
    one ``apply_all`` call if the queue has one, else one by one as they are made."""
    todo = [i for i, r in enumerate(results) if r is None]
    apply_all = getattr(queue, "apply_all", None)
    if apply_all is None or len(todo) < 2:
        for i in todo:
            results[i] = queue.apply(group[i])
        return
    made = apply_all([group[i] for i in todo])
    if len(made) != len(todo):
        raise QueueError(f"{queue.name}: apply_all answered {len(made)} results for {len(todo)} moves")
    for i, result in zip(todo, made):
        results[i] = result


def _make_renaming(store: Store, queue: Queue, key: str, group: list[Move], extra: dict,
                   results: list[str | None]) -> list[str]:
    """Make the moves of *group* not made yet (None in *results*, filled in as they
    are made). A move whose name was taken gets another, written to the intent
    first: the group (the list itself) then holds the names the moves went to."""
    for _ in range(_CHOICES):
        _apply(queue, group, results)
        taken = [i for i, r in enumerate(results) if r == "taken"]
        if not taken:
            return results
        for i in taken:
            old, results[i] = group[i], None
            group[i] = queue.plan(old.qid, old.fp, old.dest, old.origin, old.source)
            log.warning("%s: %s/%s was taken meanwhile; moving it as %s instead", old.qid,
                        old.dest, old.name, group[i].name, extra={"qid": old.qid})
        with store.write() as w:
            record(w, key, group, extra)
    m = group[taken[0]]
    raise QueueError(f"cannot move {m.qid} to {m.dest}/: every name chosen for it was taken "
                     f"({_CHOICES} tries)")


def complete(w: Txn, key: str, moves: list[Move], results: list[str], now: float,
             extra: dict | None = None) -> None:
    """Clear the group's intent and write what follows its moves, in one transaction."""
    w.delete("intents", key)
    delivered = {}
    for move, result in zip(moves, results):
        mkey = message_key(move.qid, move.fp)
        if result == "gone":
            log.warning("%s vanished from the queue before qsup could move it to %s", move.qid, move.dest,
                        extra={"qid": move.qid})
            Journal.vanished(w, now, move)
            continue
        if move.dest == "outgoing":
            delivered[move.qid] = move.name
            if move.origin == "quarantine":  # release --no-scan: no longer in the quarantine
                w.delete("quarantine", mkey)
        elif move.dest == "quarantine":
            rec = dict((extra or {}).get("record") or w.get("quarantine", mkey) or {})
            rec.update(name=move.name, state="quarantined")
            w.put("quarantine", mkey, rec)
        elif move.dest == "incoming":
            w.delete("quarantine", mkey)
            hist = w.get("history", mkey)
            if hist:
                hist.update(strikes=0, released=now)
                w.put("history", mkey, hist)
    if delivered:
        # one completion record per group: when, and under which name each went on
        w.put("done", key, {"t": now, "names": delivered})


def move(store: Store, queue: Queue, key: str, moves: list[Move], now: float,
         extra: dict | None = None) -> list[str]:
    """Record, make and complete one group of moves: the whole protocol, at once."""
    if not moves:
        return []
    with store.write() as w:
        record(w, key, moves, extra)
    results: list[str | None] = [None] * len(moves)
    try:
        _make_renaming(store, queue, key, moves, extra or {}, results)
    except QueueError:
        made = [(m, r) for m, r in zip(moves, results) if r not in (None, "taken")]
        with store.write() as w:  # the caller reports the failure: withdraw the rest
            complete(w, key, [m for m, _ in made], [r for _, r in made], now, extra)
        raise
    with store.write() as w:
        complete(w, key, moves, results, now, extra)
    return results


def finish_pending(store: Store, queue: Queue, now: float) -> int:
    """On start: finish every group a dead qsup left half-done. Returns how many moves."""
    with store.read() as r:
        pending = list(r.items("intents"))
    count = 0
    for key, entry in pending:
        group = [Move(*fields) for fields in entry["moves"]]
        extra = {k: v for k, v in entry.items() if k != "moves"}
        try:
            results = _make_renaming(store, queue, key, group, extra, [None] * len(group))
        except QueueError as exc:
            raise QueueError(f"{exc}; left where it is, the next start retries the move") from None
        with store.write() as w:
            complete(w, key, group, results, now, extra)
        count += len(group)
        log.info("finished %d interrupted move(s) (%s)", len(group), ", ".join(
            f"{m.qid} to {m.dest}{f' as {m.name}' if m.name != m.qid else ''}: {r}"
            for m, r in zip(group[:5], results)))
    return count
