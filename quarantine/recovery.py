"""What a restart finds, turned into seeds for isolation.

A dead qsup may have left half-made moves (finished from their intents), workers
still running (killed: they would go on scanning what is re-dispatched), batches
in flight (treated as crashed batches, split, with no strikes: nobody saw them
crash) and suspects waiting (picked up as they were).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from quarantine import moves
from quarantine.config import Config
from quarantine.hookspecs import Queue
from quarantine.ledger import BatchRecord, Candidate, History, Waiting
from quarantine.policy import Batch, Ending, Lane, Outcome, decide
from quarantine.process import kill_stale_workers
from quarantine.store import Store, Txn

log = logging.getLogger("qsup")


@dataclass
class Recovered:
    suspects: list[Waiting] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    report: dict = field(default_factory=dict)  # what `qsup status` shows of the restart


def recover(store: Store, queue: Queue, config: Config, owner: str, now: float, wall: float,
            new_id: Callable[[], str]) -> Recovered:
    """Finish what a dead qsup left: half-made moves, batches in flight, suspects.
    Everything after the moves is one transaction: a qsup killed while it recovers
    leaves the state as it found it, never a suspect held twice."""
    found = Recovered(report={"at": wall, "intents": moves.finish_pending(store, queue, wall)})
    found.report["killed_workers"] = kill_stale_workers(owner)
    with store.write() as w:
        batches = list(w.items("batches"))
        pending = list(w.items("pending"))
        previous = w.get("meta", "status") or {}
        for batch_id, data in batches:
            found.suspects += _split_lost(w, batch_id, BatchRecord.from_json(data), config, new_id)
        for pid, data in pending:
            rec = BatchRecord.from_json(data)
            if rec.awaiting:  # reached K strikes: only the canary's word is missing
                qid = rec.batch.ids[0]
                size = (queue.identify(qid) or (0, ""))[0]
                found.candidates.append(Candidate(qid, rec.fps[qid], now, pid, rec.batch.path, size))
            else:
                found.suspects.append(Waiting(rec.batch, rec.fps, pid))
        report = found.report
        lost = sum(len(data["ids"]) for _, data in batches)
        report.update(batches=len(batches), messages=lost, suspects=len(found.suspects))
        if batches or report["intents"]:
            report["why"] = _why(previous.get("pid"), len(batches), report["intents"])
            w.put("meta", "recovery", report)
    if batches or report["intents"]:
        log.warning("recovered: %s", report["why"])
    return found


def _why(pid: int | None, batches: int, intents: int) -> str:
    who = f"the previous qsup (pid {pid})" if pid else "the previous qsup"
    if not batches:
        return f"{who} stopped with {intents} move(s) half made; they are finished"
    return (f"{who} died with {batches} batch(es) in flight; they are treated as crashed "
            f"batches (bisected, no strikes); {intents} interrupted move(s) finished")


def _split_lost(w: Txn, batch_id: str, rec: BatchRecord, config: Config,
                new_id: Callable[[], str]) -> list[Waiting]:
    """A batch found in flight: IDs seen in flight across repeated deaths run alone,
    the rest is split as a crashed batch would be (no strikes)."""
    batch, fps = rec.batch, rec.fps
    deaths = {}
    for qid in batch.ids:
        hist = History.load(w, qid, fps[qid])
        hist.deaths += 1
        hist.save(w)
        deaths[qid] = hist.deaths
    solo = tuple(q for q in batch.ids if deaths[q] >= config.recovery_solo_after)
    rest = tuple(q for q in batch.ids if q not in solo)
    parts = [Batch(ids=(qid,), lane=Lane.SUSPECT, path=batch.path + ("1",)) for qid in solo]
    if rest:
        sub = Batch(ids=rest, lane=batch.lane, path=batch.path, hunt=batch.hunt)
        parts += decide(sub, Outcome(ending=Ending.LOST), {}, config.strikes, batch_id).retry
    held = []
    for part in parts:
        mine, pid = {q: fps[q] for q in part.ids}, f"recovered.{new_id()}"
        w.put("pending", pid, BatchRecord(part, mine).to_json())
        held.append(Waiting(part, mine, pid))
    w.delete("batches", batch_id)
    return held
