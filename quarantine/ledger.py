"""What qsup writes down: typed records and the one durable write per loop pass.

The records here are what travels between the loop's parts (a batch in flight, a
suspect waiting, a quarantine candidate, a group of moves to complete, a message's
history). Each knows its JSON form in the state store, so nothing else spells out
the keys. The :class:`Ledger` owns the store's write side for the supervisor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from quarantine import journal, moves
from quarantine.headers import HEAD_BYTES, summary
from quarantine.hookspecs import Move, Queue
from quarantine.ids import message_key
from quarantine.journal import Journal
from quarantine.outbox import Outbox
from quarantine.policy import Batch, Lane
from quarantine.store import Store, Txn

log = logging.getLogger("qsup")


@dataclass(slots=True)
class BatchRecord:
    """A batch as the store keeps it: in flight (``batches``) or waiting (``pending``)."""

    batch: Batch
    fps: dict[str, str]  # queue ID -> fingerprint
    started: float | None = None  # wall time its worker started (in flight only)
    qsup: int | None = None  # pid of the qsup that started it
    awaiting: bool = False  # reached K strikes: only the canary's word is missing

    def to_json(self) -> dict:
        b = self.batch
        data = {"ids": list(b.ids), "lane": b.lane.value, "path": list(b.path), "hunt": b.hunt,
                "fps": {q: self.fps[q] for q in b.ids if q in self.fps}}
        if self.started is not None:
            data.update(started=self.started, qsup=self.qsup)
        if self.awaiting:
            data["awaiting"] = True
        return data

    @classmethod
    def from_json(cls, data: dict) -> BatchRecord:
        batch = Batch(ids=tuple(data["ids"]), lane=Lane(data["lane"]), path=tuple(data["path"]),
                      hunt=data.get("hunt"))
        return cls(batch, dict(data.get("fps", {})), data.get("started"), data.get("qsup"),
                   bool(data.get("awaiting")))


@dataclass(slots=True)
class Waiting:
    """A batch waiting for a worker: a suspect batch with its key in ``pending``, or
    clean traffic just taken from the queue (never recorded as pending)."""

    batch: Batch
    fps: dict[str, str]
    pending: str = ""  # "" for clean traffic


@dataclass(slots=True)
class InFlight:
    """A batch recorded in flight (durably) and about to be given to a worker."""

    batch_id: str
    batch: Batch
    fps: dict[str, str]
    sizes: dict[str, int]


@dataclass(slots=True)
class Candidate:
    """A message that reached K strikes: quarantined once the environment is proven
    good after its crash (a canary, or a fresh worker's clean batch)."""

    qid: str
    fp: str
    crashed_at: float  # monotonic
    pending: str  # its key in `pending`
    path: tuple[str, ...] = ()
    size: int = 0
    awaits: frozenset[str] = frozenset()  # IDs held when it crashed, not yet settled

    @property
    def key(self) -> str:
        return message_key(self.qid, self.fp)


@dataclass(slots=True)
class Completing:
    """Moves made whose completion records wait for the next durable commit."""

    key: str
    moves: list[Move]
    results: list[str]
    t: float


@dataclass
class History:
    """One message's record of crashes (``history`` db): strikes and the last attempts."""

    qid: str
    fp: str
    strikes: int = 0
    attempts_total: int = 0
    attempts: list[dict] = field(default_factory=list)
    deaths: int = 0  # in flight when a qsup died
    unexplained: int = 0  # in a crashed batch that no part of reproduced
    forgiven: int = 0  # strikes taken back because the environment was failing
    extra: dict = field(default_factory=dict)  # keys written by others (release time …)

    _KEYS = ("qid", "fp", "strikes", "attempts_total", "attempts", "deaths", "unexplained", "forgiven")

    @property
    def key(self) -> str:
        return message_key(self.qid, self.fp)

    @classmethod
    def load(cls, r: Txn, qid: str, fp: str) -> History:
        data = r.get("history", message_key(qid, fp))
        if not data:
            return cls(qid, fp)
        known = {k: data[k] for k in cls._KEYS if k in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in cls._KEYS})

    def save(self, w: Txn) -> None:
        data = {"qid": self.qid, "fp": self.fp, "strikes": self.strikes,
                "attempts_total": self.attempts_total, "attempts": self.attempts}
        for name in ("deaths", "unexplained", "forgiven"):  # written once they happen
            if getattr(self, name):
                data[name] = getattr(self, name)
        w.put("history", self.key, {**self.extra, **data})

    def attempt(self, attempt: dict, strike: bool, keep: int) -> None:
        self.attempts_total += 1
        self.attempts = (self.attempts + [dict(attempt, strike=strike)])[-keep:]
        self.strikes += strike


def strikes_of(r: Txn, qid: str, fp: str) -> int:
    return (r.get("history", message_key(qid, fp)) or {}).get("strikes", 0)


class Ledger:
    """The supervisor's write side of the store. One durable transaction per loop
    pass: :meth:`pass_txn` first completes the moves the previous pass made."""

    def __init__(self, store: Store, queue: Queue, wall, scanner=lambda: "", outbox: Outbox | None = None):
        self.store, self.queue, self.wall = store, queue, wall
        self._completing: list[Completing] = []
        self.journal = Journal(scanner)  # the audit trail, written with what it tells of
        self.outbox = outbox or Outbox()  # the operator's next digest

    @property
    def has_completions(self) -> bool:
        return bool(self._completing)

    @contextmanager
    def pass_txn(self) -> Iterator[Txn]:
        finished, self._completing = self._completing, []
        with self.store.write() as w:
            for c in finished:
                moves.complete(w, c.key, c.moves, c.results, c.t)
            yield w

    @contextmanager
    def within(self, w: Txn | None) -> Iterator[Txn]:
        """*w* if a transaction is open already, else a durable one of its own."""
        if w is not None:
            yield w
            return
        with self.store.write() as own:
            yield own

    def put_status(self, snapshot: dict) -> None:
        with self.store.write() as w:
            w.put("meta", "status", snapshot)

    def deliver(self, w: Txn, key: str, group: list[Move], ended: list) -> None:
        """The intent of a pass's deliveries, and their journal entries (a batch each)."""
        moves.record(w, key, group)
        self.journal.delivered(w, self.wall(), key, group, ended)

    def make_moves(self, key: str, group: list[Move]) -> set[str]:
        """Make a group recorded in this pass; its completion goes in the next one
        (replaying a finished move is harmless). Returns the IDs that were gone."""
        results = moves.make(self.queue, group)
        self._completing.append(Completing(key, group, results, self.wall()))
        return {m.qid for m, r in zip(group, results) if r == "gone"}

    def quarantine(self, cand: Candidate, evidence: dict) -> dict | None:
        """Write the record, move the file (write-ahead), complete. Returns the record
        (what ``qsup show --json`` prints), or None if the message vanished."""
        sender, subject, headers = summary(self.queue.head("incoming", cand.qid, HEAD_BYTES))
        with self.store.read() as r:
            hist = r.get("history", cand.key) or {}
        attempts = hist.get("attempts") or [{}]
        record = {"qid": cand.qid, "fp": cand.fp, "key": cand.key, "when": self.wall(),
                  "why": attempts[-1].get("ending", "?"), "signal": attempts[-1].get("signal"),
                  "exit_code": attempts[-1].get("exit_code"),
                  "peak_rss": max((a.get("peak_rss") or 0 for a in attempts), default=0),
                  "strikes": hist.get("strikes", 0), "size": cand.size, "sender": sender,
                  "subject": subject, "headers": headers, "path": list(cand.path),
                  "queue": self.queue.name, "evidence": evidence, "state": "moving",
                  "batch": attempts[-1].get("batch", ""), "scanner": self.journal.scanner()}
        return self._quarantine(record, pending=cand.pending)

    def quarantine_verdict(self, qid: str, fp: str, size: int, batch: str, kind: str,
                           verdict: str) -> dict | None:
        """A message the scanner's verdict quarantines (kind infected or spam): never a
        crash, no strikes. The same write-ahead path as a poison message's."""
        sender, subject, headers = summary(self.queue.head("incoming", qid, HEAD_BYTES))
        record = {"qid": qid, "fp": fp, "key": message_key(qid, fp), "when": self.wall(),
                  "kind": kind, "why": kind, "verdict": verdict, "signal": None,
                  "exit_code": None, "peak_rss": 0, "strikes": 0, "size": size, "sender": sender,
                  "subject": subject, "headers": headers, "path": [], "queue": self.queue.name,
                  "evidence": None, "state": "moving", "batch": batch, "scanner": self.journal.scanner()}
        return self._quarantine(record)

    def _quarantine(self, record: dict, pending: str = "") -> dict | None:
        """Write *record* (and drop the *pending* suspect it was), move the file
        (write-ahead), complete. Returns the record (what ``qsup show --json``
        prints), or None if the message vanished."""
        key = record["key"]
        mv = self.queue.plan(record["qid"], record["fp"], "quarantine")
        ikey, extra = f"quarantine/{key}", {"record": record}
        with self.store.write() as w:
            w.put("quarantine", key, record)
            if pending:
                w.delete("pending", pending)
            moves.record(w, ikey, [mv], extra)
            jkey = self.journal.quarantined(w, record["when"], record)
            note = self.outbox.quarantined(w, record["when"], record)
        results = moves.make(self.queue, [mv])
        with self.store.write() as w:
            moves.complete(w, ikey, [mv], results, self.wall(), extra)
            if results[0] == "gone":
                w.delete("quarantine", key)
                w.delete(journal.DB, jkey)  # it did not happen
                self.outbox.withdraw(w, note)
        return None if results[0] == "gone" else dict(record, name=mv.name, state="quarantined")

    def prune(self, retention_hours: float) -> int:
        """Drop completion records past their retention, 5,000 per transaction."""
        cutoff = self.wall() - retention_hours * 3600
        with self.store.read() as r:
            old = [key for key, rec in r.items("done") if rec.get("t", 0) < cutoff]
        for start in range(0, len(old), 5000):
            with self.store.write() as w:
                for key in old[start:start + 5000]:
                    w.delete("done", key)
        entries = journal.prune(self.store, cutoff)
        with self.store.write() as w:
            unsent = Outbox.prune(w, cutoff)
        if old or entries:
            log.info("pruned %d completion record(s) and %d journal entr(ies) older than %.0fh",
                     len(old), entries, retention_hours)
        if unsent:
            log.warning("dropped %d digest event(s) older than %.0fh that were never sent", unsent,
                        retention_hours)
        return len(old)


__all__ = ["BatchRecord", "Candidate", "Completing", "History", "InFlight", "Ledger", "Waiting",
           "strikes_of"]
