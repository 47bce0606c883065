"""Isolation: what qsup holds against messages while it hunts poison.

Around the pure :mod:`quarantine.policy`, this keeps the life of a suspect in memory
and in the ``pending``/``history`` dbs: the suspects waiting for a worker, the hunts
(split batches, to tell a crash no part reproduces), the strikes and attempts, and
the candidates waiting for proof of a sound environment before their quarantine.

``held`` maps every queue ID qsup holds (in flight or suspect) to its fingerprint;
the intake skips them when it lists the queue.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator

from quarantine.config import Config
from quarantine.ledger import BatchRecord, Candidate, History, Waiting, strikes_of
from quarantine.policy import CRASHES, Batch, Decision, Ending, Hunts, Lane, chunks, decide, suspect_slots
from quarantine.runs import Ended, detail_text
from quarantine.store import Txn

log = logging.getLogger("qsup")


class Isolation:
    def __init__(self, config: Config, stats: Counter, serial: Iterator[int] | None = None):
        self.config, self.stats = config, stats
        self.held: dict[str, str] = {}  # queue ID -> fingerprint, in flight or suspect
        self.scanner: Callable[[], str] = lambda: ""  # the scanner's identity, for attempts
        self.suspects: deque[Waiting] = deque()
        self.candidates: dict[str, Candidate] = {}  # message key -> candidate
        self.hunts = Hunts()
        self.lent: dict[str, int] = {}  # strikes the fleet lent a suspect (fleet.py): not crashes
        self._serial = serial or itertools.count(1)

    def configure(self, config: Config) -> None:
        self.config = config

    def __bool__(self) -> bool:
        """Anything held back: suspects waiting or candidates awaiting proof."""
        return bool(self.suspects or self.candidates)

    @property
    def suspect_ids(self) -> int:
        return sum(len(w.batch.ids) for w in self.suspects)

    def oldest_crash(self, proven: float = -math.inf) -> float | None:
        """When the oldest candidate without proof (none started after *proven*) crashed."""
        return min((c.crashed_at for c in self.candidates.values() if c.crashed_at > proven), default=None)

    # ---------------------------------------------------------------- dispatch
    def take(self, workers: int, busy: int, suspect_runs: int, clean_waiting: bool) -> list[Waiting]:
        """Suspect batches for free workers: at most a quarter of the pool while
        clean traffic waits, so the queue keeps flowing while poison is hunted."""
        free = workers - busy
        allowance = suspect_slots(workers, clean_waiting) - suspect_runs
        taken = []
        while free > 0 and allowance > 0 and self.suspects:
            taken.append(self.suspects.popleft())
            free, allowance = free - 1, allowance - 1
        return taken

    # ------------------------------------------------------------------ judge
    def decide(self, r: Txn, e: Ended, split: Callable[[Ended], int]) -> Decision:
        """The policy's decision for batch *e*; *split* says into how many parts a
        crashed batch splits (asked only of a crash)."""
        strikes, parts = {}, 2
        if e.outcome.ending in CRASHES:  # strikes matter only to a crash
            strikes = {q: strikes_of(r, q, e.fps[q]) for q in e.batch.ids if q in e.fps}
            parts = split(e)
        return decide(e.batch, e.outcome, strikes, self.config.strikes, hunt=e.batch_id, split=parts)

    def record(self, w: Txn, e: Ended, decision: Decision, now: float, wall: float) -> int:
        """Write what *decision* means for the messages of batch *e*. Returns the crashes
        it shows were the environment's: a hunt no part of which crashed, strikes of
        messages that then passed alone."""
        batch, fps, outcome = e.batch, e.fps, e.outcome
        crashed = outcome.ending in CRASHES
        if crashed:
            self.stats["crashes"] += 1
            self.stats[f"crash_{outcome.ending.value}"] += 1  # by kind, for the metrics
            log.info("batch %s (%d message(s), %s lane) crashed: %s%s", e.batch_id, len(batch.ids),
                     batch.lane.value, outcome.ending.value, detail_text(e.detail))
        unexplained = None
        if crashed or outcome.ending is Ending.OK:  # a stop says nothing about a hunt
            unexplained = self.hunts.finish(batch, crashed)
            self.hunts.start(e.batch_id, decision, batch.ids)
        if crashed:
            attempt = {"batch": e.batch_id, "size": len(batch.ids), "ending": outcome.ending.value,
                       "duration": round(e.duration, 3), "when": wall, "path": list(batch.path),
                       "scanner": self.scanner(), "stderr": e.stderr[-600:].decode("utf-8", "replace"),
                       **e.detail}
            for qid in batch.ids:
                if qid not in outcome.done:
                    hist = History.load(w, qid, fps[qid])
                    hist.attempt(attempt, qid in decision.strike, self.config.history)
                    hist.save(w)
        noise = 0
        if batch.lane is Lane.SUSPECT and decision.deliver:
            noise += sum(max(0, strikes_of(w, q, fps[q]) - self.lent.get(q, 0))
                         for q in decision.deliver if q in fps)
        if unexplained:
            noise += 1
            self.stats["unexplained"] += 1
            for qid in unexplained:
                if qid in fps:
                    hist = History.load(w, qid, fps[qid])
                    hist.unexplained += 1
                    hist.save(w)
        for retry in decision.retry:
            self.hold(w, retry, fps, f"{e.batch_id}.{next(self._serial):x}")
        for qid in decision.quarantine:
            pid = f"{e.batch_id}.q{next(self._serial):x}"
            solo = Batch(ids=(qid,), lane=Lane.SUSPECT, path=batch.path)
            w.put("pending", pid, BatchRecord(solo, fps, awaiting=True).to_json())
            cand = Candidate(qid, fps[qid], now, pid, batch.path, e.sizes.get(qid, 0),
                             awaits=self._unsettled(qid))
            self.candidates[cand.key] = cand
        for qid in decision.requeue:
            self.held.pop(qid, None)
        return noise

    def hold(self, w: Txn, batch: Batch, fps: dict[str, str], pid: str) -> None:
        """Record a suspect batch in `pending` (it survives a restart) and queue it."""
        mine = {q: fps[q] for q in batch.ids}
        w.put("pending", pid, BatchRecord(batch, mine).to_json())
        self.held.update(mine)
        self.suspects.append(Waiting(batch, mine, pid))

    def seed(self, suspects: list[Waiting], candidates: list[Candidate]) -> None:
        """What a restart found (see :mod:`quarantine.recovery`)."""
        for waiting in suspects:
            self.held.update(waiting.fps)
            self.suspects.append(waiting)
        for cand in candidates:
            self.held[cand.qid] = cand.fp
            self.candidates[cand.key] = cand
        for cand in candidates:  # what crashed before the restart is not known: wait for it all
            cand.awaits = self._unsettled(cand.qid)

    # ------------------------------------------------------------- evidence
    def forgive(self, w: Txn) -> int:
        """The environment was broken: candidates' last strike does not count. They
        stay suspects, to run alone again once the breaker closes."""
        k = self.config.strikes
        for cand in self.candidates.values():
            hist = History.load(w, cand.qid, cand.fp)
            hist.strikes = min(hist.strikes, k - 1)
            hist.forgiven += 1
            hist.save(w)
            w.delete("pending", cand.pending)
            batch = Batch(ids=(cand.qid,), lane=Lane.SUSPECT, path=tuple(cand.path))
            self.hold(w, batch, {cand.qid: cand.fp}, f"forgiven.{next(self._serial):x}")
        count = len(self.candidates)
        self.stats["forgiven"] += count
        self.candidates.clear()
        return count

    def resize(self, w: Txn, batch: Batch, fps: dict[str, str], size: int, key: str) -> None:
        """A batch too big to start (its paths do not fit a command line): suspects are
        held again in parts of *size*; clean traffic goes back to the queue."""
        if batch.lane is Lane.CLEAN:
            for qid in batch.ids:
                self.held.pop(qid, None)
            return
        for n, part in enumerate(chunks(batch.ids, -(-len(batch.ids) // size))):
            self.hold(w, Batch(ids=part, lane=Lane.SUSPECT, path=batch.path), fps, f"{key}.{n}")

    def again(self, w: Txn, cand: Candidate) -> None:
        """A candidate whose crashes do not convict it yet runs alone again."""
        w.delete("pending", cand.pending)
        batch = Batch(ids=(cand.qid,), lane=Lane.SUSPECT, path=tuple(cand.path))
        self.hold(w, batch, {cand.qid: cand.fp}, f"again.{next(self._serial):x}")

    def _unsettled(self, qid: str) -> frozenset[str]:
        """The IDs held (in flight or suspect) that are not candidates, but *qid*:
        whether their crashes were the environment's is not known yet."""
        judged = {c.qid for c in self.candidates.values()} | {qid}
        return frozenset(q for q in self.held if q not in judged)

    def settled(self, cand: Candidate) -> bool:
        """Whether every message *cand* awaits has gone (delivered, quarantined,
        back in the queue) or become a candidate too."""
        if cand.awaits:
            judged = {c.qid for c in self.candidates.values()}
            cand.awaits = frozenset(q for q in cand.awaits if q in self.held and q not in judged)
        return not cand.awaits

    def proven(self, before: float) -> list[Candidate]:
        """Candidates whose crash came before proof that started at *before* (the same
        pass counts: a proof started after the crash was seen), once what they await
        has settled."""
        ready = [c for c in self.candidates.values() if c.crashed_at <= before and self.settled(c)]
        for cand in ready:
            del self.candidates[cand.key]
        return ready

    def release(self, qid: str) -> None:
        """qsup no longer holds *qid* (delivered, quarantined, vanished)."""
        self.held.pop(qid, None)
        self.lent.pop(qid, None)

