"""Judgement: what an ended batch says of its messages and of the environment, and
what the evidence convicts: candidates are forgiven, quarantined, or run alone again
when their crashes are not yet beyond what the environment explains.

A candidate reached K strikes and the environment was proven sound after its
crash (:class:`~quarantine.environment.Proof`). It is judged once every message
held when it last crashed has been settled (their retries say whether crashes were
the environment's: until then the rate is not known), and quarantined only if its
solo crashes are unlikely at the crash rate the environment shows (canaries, clean
runs, crashes no message explains), per message scanned and per run: with rate p
and s crashes, scans * p**s and runs * p_run**s must both be below ``ALPHA`` (every
message scanned, every run, is a chance for the environment to strike one by luck:
a Bonferroni bound over them). Otherwise it runs alone again: a poison message
crashes again, a sound one passes and is delivered (docs/reference.md §5.8). In a
sound environment p is tiny and K crashes convict; at 5 % per scan over 3,000
messages it takes five. With ``strikes = 1`` the operator trusts a single crash,
and it convicts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

from quarantine.environment import Environment, Proof
from quarantine.events import Events
from quarantine.fleet import Fleet
from quarantine.isolation import Isolation
from quarantine.hookspecs import Move, Queue
from quarantine.ledger import Candidate, Ledger, strikes_of
from quarantine.policy import CRASHES, Decision, Ending
from quarantine.ratecap import RateCap
from quarantine.runs import Ended, detail_text
from quarantine.store import Txn
from quarantine import verdicts
from quarantine.verdicts import Action

log = logging.getLogger("qsup")
ALPHA = 0.01  # most chance, over all messages scanned, that the environment alone convicts one


class Judge:
    def __init__(self, env: Environment, isolation: Isolation, ledger: Ledger, queue: Queue,
                 events: Events, stats: Counter, clock):
        self.env, self.isolation, self.ledger, self.queue = env, isolation, ledger, queue
        self.events, self.stats = events, stats
        self._said = RateCap(log, per_window=10, window=60.0, clock=clock)
        self._untaggable = False

    def ended(self, w: Txn, e: Ended, decision: Decision, now: float, wall: float) -> None:
        """Record one ended batch: for its messages (isolation) and for what it says
        of the environment (a worker that cannot start, solo crashes in a storm)."""
        ending = e.outcome.ending
        self.env.batch_ended(ending, ending in CRASHES, now)
        w.delete("batches", e.batch_id)
        noise = self.isolation.record(w, e, decision, now, wall)
        ran = 1 if ending is Ending.OK else 0
        self.env.scanned(now, len(decision.deliver), noise, runs=ran + noise)
        self.env.breaker.delivered(len(decision.deliver), now)
        if decision.systemic:
            said = e.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            why = e.detail.get("error") or "it died before reading anything"
            rest = detail_text({k: v for k, v in e.detail.items() if k != "error"})
            # the environment is failing: so may have the candidates' last crashes
            self.act(self.env.cannot_start(why + rest, said[0] if said else "", now), now, w)
        for qid in decision.strike:
            self.stats["strikes"] += 1
            self.env.solo_crash(f"{qid}:{e.fps[qid]}", now)

    def act(self, proof: Proof, now: float, w: Txn | None = None) -> None:
        """Forgive or convict the candidates as *proof* says (in *w* if given)."""
        if proof.forgive and self.isolation.candidates:
            with self.ledger.within(w) as tx:
                self.isolation.forgive(tx)
        if proof.confirm_before is None or self.env.is_open:
            return
        proven = self.isolation.proven(proof.confirm_before)
        if not proven:
            return
        with self.ledger.store.read() as r:
            strikes = [strikes_of(r, c.qid, c.fp) for c in proven]
        again, k, rate = [], self.isolation.config.strikes, self.env.rate
        p, per_run = rate.estimate(now), rate.per_run(now)
        for cand, s in zip(proven, strikes):
            chance = rate.chance(now, s)
            evidence = {"crashes": s, "crash_rate": round(p, 6), "scans": rate.scans,
                        "run_crash_rate": round(per_run, 6), "runs": rate.runs, "chance": chance,
                        "alpha": ALPHA, "proof": self.env.proof_of(proof.confirm_before, now)}
            if k == 1 or chance < ALPHA:
                self.quarantine(cand, evidence)
            else:
                again.append(cand)
                self.stats["more_evidence"] += 1
                self._said(logging.INFO, "%s: %d solo crash(es) are not beyond what the environment's "
                           "crash rate (%.2g per scan, %.2g per run) explains: it runs alone again",
                           cand.qid, s, p, per_run, qid=cand.qid)
        if again:
            with self.ledger.within(w) as tx:
                for cand in again:
                    self.isolation.again(tx, cand)

    def deliveries(self, e: Ended, decision: Decision, config) -> tuple[list[Move], list]:
        """The moves out of the queue for what batch *e* scanned (tagged for a spam
        verdict where the queue can tag), and what its verdict holds back from
        delivery (infected, spam past its score): docs/reference.md §7."""
        moving, held = [], []
        for qid in decision.deliver:
            act = verdicts.action(e.verdicts.get(qid), config)
            if not act.delivers:
                held.append((e, qid, act))
                continue
            move = self.queue.plan(qid, e.fps[qid], "outgoing")
            moving.append(self.tagged(move, act) if act.headers else move)
        return moving, held

    def quarantine_verdict(self, e: Ended, qid: str, act: Action) -> dict | None:
        """Quarantine what the scanner's verdict says must not be delivered (kind
        infected or spam): its answer, not a crash. None if the message vanished."""
        verdict = e.verdicts.get(qid, "")
        record = self.ledger.quarantine_verdict(qid, e.fps[qid], e.sizes.get(qid, 0), e.batch_id,
                                                act.kind, verdict)
        if record is None:
            return None
        self.stats["quarantined"] += 1
        self.stats[f"quarantined_{act.kind}"] += 1
        log.warning("quarantined %s (%s: %s): from %s, subject %s", qid, act.kind, act.name or verdict,
                    record["sender"] or "?", record["subject"] or "?", extra={"qid": qid})
        self.events.quarantined(record=record)
        return record

    def tagged(self, move: Move, act: Action) -> Move:
        """*move* adding *act*'s headers, where the queue can; else as it is, said once."""
        if getattr(self.queue, "can_tag", False):
            self.stats["tagged"] += 1
            return dataclasses.replace(move, tag=act.headers)
        if not self._untaggable:
            self._untaggable = True
            log.warning("the %s queue cannot add headers: spam is delivered untagged (set on_spam "
                        "= quarantine or spam_quarantine_score to hold it back)", self.queue.name)
        return move

    def quarantine(self, cand: Candidate, evidence: dict) -> None:
        evidence, fleet_fp = self._fleet_evidence(cand, evidence)
        record = self.ledger.quarantine(cand, evidence)
        self.isolation.release(cand.qid)
        self.queue.scan_done(cand.qid)
        if record is None:
            return
        if fleet_fp:
            self.fleet.confirmed(fleet_fp, record)  # poison only: verdicts are never published
        self.stats["quarantined"] += 1
        log.warning("quarantined %s (%s%s) after %d strike(s): from %s, subject %s", cand.qid,
                    record["why"], f", {record['signal']}" if record["signal"] else "",
                    record["strikes"], record["sender"] or "?", record["subject"] or "?",
                    extra={"qid": cand.qid})
        self.events.quarantined(record=record)

    # ------------------------------------------------------------------ fleet
    fleet: Fleet | None = None  # set by the supervisor (docs/reference.md §10)

    def _fleet_evidence(self, cand: Candidate, evidence: dict) -> tuple[dict, str | None]:
        """What the fleet said of *cand*, and the fleet fingerprint to publish it under
        (read before the move)."""
        if self.fleet is None:
            return evidence, None
        return self.fleet.before_quarantine(self.queue, cand, evidence)
