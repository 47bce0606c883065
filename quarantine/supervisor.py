"""The supervisor loop: collect what ended, settle it, refill, dispatch, prove the
environment, wait. Signal handlers only set flags; the loop reads them once a pass.

The parts it drives each own one concern: the worker pool (processes), the intake
(the queue's listing), isolation (suspects, strikes, candidates), the environment
(breaker and canary), the ledger (the durable writes), telemetry (counters, status).
Only the supervisor writes the LMDB state, and it never forks while holding a
transaction: workers are fresh processes (exec), never forks of qsup.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from enum import IntEnum

from quarantine import canary, ops
from quarantine.config import Config
from quarantine.environment import Environment, Proof
from quarantine.errors import EXIT_BREAKER, EXIT_OK, QueueError, StateError
from quarantine.events import Events
from quarantine.fleet import Fleet, FleetLane
from quarantine.hookspecs import Queue, Scanner
from quarantine.intake import Intake
from quarantine.isolation import Isolation
from quarantine.judge import Judge
from quarantine.ledger import BatchRecord, InFlight, Ledger
from quarantine.notify import Notifier
from quarantine.policy import Batch, Ending, Lane, Outcome
from quarantine.pool import WorkerPool
from quarantine.process import SpawnError
from quarantine.recovery import recover
from quarantine.reloading import reload_now
from quarantine.retest import Retester, read_identity
from quarantine.runs import Ended
from quarantine.store import Store, Txn
from quarantine.telemetry import Telemetry
from quarantine.ticks import Every

log = logging.getLogger("qsup")
TICK = 0.05  # longest wait while batches run


class Stop(IntEnum):
    NONE = 0
    WARM = 1
    COLD = 2


class Supervisor:
    def __init__(self, config: Config, store: Store, queue: Queue, scanner: Scanner, hooks, *,
                 state_dir: str, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, adopt_orphans: bool = False,
                 mode: str = "drain"):
        self.config, self.store, self.queue = config, store, queue
        self.state_dir = os.path.realpath(state_dir)
        self.clock, self.wall = clock, wall
        self.telemetry = Telemetry(clock, wall, mode)
        self.stats = self.telemetry.stats
        self.notifier = Notifier(config, store, wall)  # operator digests
        self.events = Events(hooks, self.stats, clock, self.notifier)
        self.env = Environment(config, self.events, self.stats)
        self.isolation = Isolation(config, self.stats)
        self.intake = Intake(queue, config, self.isolation.held, self.stats)
        self.pool = WorkerPool(config, scanner, self.stats, owner=self.state_dir, clock=clock,
                               adopt_orphans=adopt_orphans)
        self.retester = Retester(config, store, queue, self.stats,
                                 read_identity(config, scanner) or scanner.name, clock(),
                                 self.notifier.outbox)
        self.isolation.scanner = lambda: self.retester.identity
        self.ledger = Ledger(store, queue, wall, lambda: self.retester.identity, self.notifier.outbox)
        self.judge = Judge(self.env, self.isolation, self.ledger, queue, self.events, self.stats, clock)
        self.canary_path = canary.prepare(self.state_dir, config.canary)
        self.fleet = Fleet(config, store, self.ledger.journal.scanner, clock, wall)  # §10
        self.judge.fleet = self.fleet
        self.fleet_lane = FleetLane(self.fleet, queue, self.isolation, self.judge, clock)
        self.stop = Stop.NONE
        self.stop_deadline = math.inf
        self.reload: Callable[[], Config] | None = None
        self.make_scanner: Callable[[Config], Scanner] | None = None  # rebuilt on reload
        self.on_tick: Callable[[Supervisor], None] | None = None
        self._reload_wanted = False
        self._state_broken = False
        self._ids = itertools.count(1)
        self._status, self._requests, self._prune = Every(1.0), Every(0.25), Every(3600.0)
        self._identity = Every(config.retest_check)
        self._identity.last = clock()  # read just now
        self.mode = mode

    # ----------------------------------------------------------------- signals
    def request_stop(self) -> None:
        """First call: warm stop; second: cold stop. Safe in a signal handler."""
        self.stop = Stop.COLD if self.stop else Stop.WARM

    def request_reload(self) -> None:
        self._reload_wanted = True

    # -------------------------------------------------------------------- loop
    def serve(self, follow: bool) -> int:
        """Drain the queue (follow=False) or keep watching it (follow=True)."""
        self.start()
        try:
            while (code := self.step(self.clock(), follow)) is None:
                self.wait()
        except (StateError, QueueError) as exc:
            # Full map or disk, a broken state directory, a move the file system
            # refuses: stop safely. Nothing is moved without its record, so what is in
            # flight stays in incoming/ and is recovered by the next start.
            log.error("stopping: %s", exc)
            self._state_broken = True
            raise
        finally:
            self._shutdown()
        return code

    def start(self) -> dict:
        """Recover what a previous qsup left; returns the recovery report."""
        found = recover(self.store, self.queue, self.config, self.state_dir, self.clock(),
                        self.wall(), self._new_id)
        self.isolation.seed(found.suspects, found.candidates)
        self.fleet.start()
        return found.report

    def step(self, now: float, follow: bool) -> int | None:
        """One pass of the loop; the exit code once the work is over."""
        stop = self.stop  # read once: a signal landing mid-pass is acted on next pass
        self._enforce_stop(now, stop)
        ended, canary_end = self.pool.collect(now, stopping=bool(stop))
        ended = self.retester.collect(ended, self.wall())
        if canary_end is not None:
            run, ending, detail = canary_end
            if ending is not Ending.OK and self.env.last_pass < self.retester.since <= run.started:
                was = f"from {self.retester.previous} " if self.retester.previous else ""
                detail = dict(detail, error=f"the scanner changed {was}to {self.retester.identity} and the "
                              f"canary dies{'; ' + detail['error'] if detail.get('error') else ''}")
            self.judge.act(self.env.canary_ended(run.started, ending, detail, now, run.batch_id), now)
        if self._reload_wanted:
            reload_now(self)
        if stop:
            self._settle(ended, now)
            if not self.pool.all_runs():
                return EXIT_OK
        else:
            self.intake.refill(now, force=not follow and not self.intake)
            self._settle(ended, now, dispatch=True)
            self._prove(now)
            self.retester.launch(self.pool, self.env, self.judge, self._new_id(), now)
            if not self.env.is_open and (self.stats["crashes"] or self.isolation.candidates
                                         or self.stats["canary_runs"]):
                self.pool.keep_spares(now)  # none needed until something has crashed
            if not follow and self._drained(now):
                return EXIT_OK
            if not follow and self.env.gave_up(now):
                return EXIT_BREAKER
        self._housekeeping(now)
        return None

    def wait(self) -> None:
        """Until a worker needs the loop, or a tick passed."""
        timeout = TICK if self.pool.all_runs() or self.retester.busy else min(self.config.poll_interval, 0.25)
        if self.intake.listing and not self.stop:
            timeout = min(timeout, 0.005)  # the next slice of the listing is due
        self.pool.wait(timeout, lambda: bool(self.stop or self._reload_wanted))

    def _enforce_stop(self, now: float, stop: Stop) -> None:
        if stop is Stop.WARM and self.stop_deadline == math.inf:
            self.stop_deadline = now + self.config.grace
            log.info("warm stop: letting %d batch(es) finish (grace %.0fs)", len(self.pool.runs),
                     self.config.grace)
        if stop is Stop.COLD or (stop and now >= self.stop_deadline):
            for run in self.pool.all_runs():
                run.proc.kill("stopped")

    def _drained(self, now: float) -> bool:
        def idle() -> bool:
            return not (self.pool.all_runs() or self.isolation or self.intake or self.env.is_open
                        or self.retester.busy)

        if not idle():
            return False
        self.intake.refill(now, force=True)  # anything the last moves left behind
        return idle()

    # ------------------------------------------------------------------ settle
    def _settle(self, ended: list[Ended], now: float, dispatch: bool = False) -> None:
        """One durable commit per pass. It holds what completes the previous pass's
        moves; the decisions for every batch that ended, with the intents of the
        deliveries they plan; and, with *dispatch*, the in-flight records of the
        batches about to start. Then the workers get their batches (idle workers
        are what slows a drain), and the moves are made."""
        dispatch = dispatch and len(self.pool.runs) < self.config.workers and bool(
            self.isolation.suspects or self.intake)
        if not (ended or self.ledger.has_completions or dispatch):
            return
        delivers, ready, key, verdict_held = [], [], "", []
        with self.ledger.pass_txn() as w:
            clean_waiting = bool(self.intake)
            decisions = [self.isolation.decide(w, e, lambda e: self.pool.split(e.batch, clean_waiting)) for e in ended]
            for e, decision in zip(ended, decisions):
                if e.outcome.ending is Ending.OK:
                    self.pool.mode.batch_ok()
                    self.pool.mode.timing.ran(len(e.batch.ids), e.duration)
                self.judge.ended(w, e, decision, now, self.wall())
                self.fleet_lane.passed(w, e, decision)
                moving, held = self.judge.deliveries(e, decision, self.config)
                delivers += moving
                verdict_held += held
            if delivers:
                key = f"deliver/{self._new_id()}"
                self.ledger.deliver(w, key, delivers, ended)  # the intent, and the journal
            if dispatch and not self.env.is_open:  # a storm in this pass stops its dispatch
                ready = self._dispatch(w)
        self.fleet_lane.quarantine_unrun()
        for inflight in ready:
            self._launch(inflight, now)
        if self.events.wants_verdicts:
            for e, decision in zip(ended, decisions):
                for qid in decision.deliver:
                    if qid in e.verdicts:
                        self.events.verdict(qid=qid, verdict=e.verdicts[qid], queue=self.queue)
        gone = self.ledger.make_moves(key, delivers) if delivers else set()
        for e, qid, act in verdict_held:
            if self.judge.quarantine_verdict(e, qid, act) is None:
                gone.add(qid)
        held_ids = {qid for _, qid, _ in verdict_held}
        for e, decision in zip(ended, decisions):
            for qid in decision.deliver:
                self.isolation.release(qid)
                self.queue.scan_done(qid)
            handed = [q for q in decision.deliver if q not in held_ids and q not in gone]
            self.telemetry.ended(e, len(handed), now)
            if e.outcome.ending is Ending.OK:
                self.env.healthy(e.fresh_start, e.batch_id, e.detail.get("pid"))

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self, w: Txn) -> list[InFlight]:
        """Take batches for the free workers and record them in flight (in *w*); they
        are launched once *w* is committed. Worker pids are not recorded: a restart
        finds stale workers by QSUP_OWNER."""
        runs, workers = self.pool.runs, self.config.workers
        suspect_runs = sum(1 for r in runs.values() if r.batch.lane is Lane.SUSPECT)
        batches = self.isolation.take(workers, len(runs), suspect_runs, bool(self.intake))
        size = self.pool.mode.batch_limit(self.config.batch_size)
        batches += [self.intake.take(size) for _ in range(workers - len(runs) - len(batches)) if self.intake]
        ready, wall = [], self.wall()
        for waiting in batches:
            inflight, gone = self.intake.identify(waiting, self._new_id())
            inflight = self.fleet_lane.known(w, inflight, self._new_id)
            for qid in gone:
                self.isolation.release(qid)
            if waiting.pending:
                w.delete("pending", waiting.pending)
            if inflight.batch.ids:
                self.isolation.held.update(inflight.fps)
                w.put("batches", inflight.batch_id,
                      BatchRecord(inflight.batch, inflight.fps, wall, os.getpid()).to_json())
                ready.append(inflight)
        return ready

    def _launch(self, inflight: InFlight, now: float, canary: bool = False) -> None:
        b = inflight
        paths = [self.canary_path] if canary else [self.queue.scan_path(q) for q in b.batch.ids]
        if not self.pool.fits(paths):  # too long for a command line: not the environment's fault
            with self.store.write() as w:
                w.delete("batches", b.batch_id)
                self.isolation.resize(w, b.batch, b.fps, self.pool.mode.batch_limit(len(paths)), b.batch_id)
            self.intake.relist()
            return
        try:
            self.pool.launch(b.batch_id, b.batch, b.fps, b.sizes, paths, now, canary=canary)
        except SpawnError as exc:
            self.stats["spawn_failures"] += 1
            if canary:
                self.judge.act(self.env.canary_failed(str(exc), now), now)
            else:
                ended = Ended(b.batch_id, b.batch, b.fps, {}, Outcome(ending=Ending.SPAWN), {"error": str(exc)})
                self._settle([ended], now)

    def _new_id(self) -> str:
        return f"{int(self.wall() * 1000):x}-{os.getpid():x}-{next(self._ids):x}"

    # ------------------------------------------------------------------- prove
    def _prove(self, now: float) -> None:
        """Quarantine the candidates a sound environment convicts; run the canary
        when proof is needed and no fresh batch gave it."""
        if not self.env.is_open and self.isolation.candidates:
            self.judge.act(Proof(confirm_before=self.env.last_pass), now)
        if self.pool.canary is not None:
            return
        flowing = bool(self.intake or self.isolation.suspects)
        retest = not self.env.is_open and self.retester.wants_canary(self.env.last_pass)
        if retest or self.env.canary_due(now, self.isolation.oldest_crash(self.env.last_pass), flowing):
            batch = Batch(ids=(canary.CANARY_ID,), lane=Lane.SUSPECT)
            run = InFlight(f"canary-{self._new_id()}", batch, {canary.CANARY_ID: "canary"}, {})
            self._launch(run, now, canary=True)
            self.stats["canary_runs"] += 1

    # ----------------------------------------------------------------- re-test
    def _read_identity(self, now: float) -> None:
        self.retester.observe(read_identity(self.config, self.pool.scanner), now)

    def retest_now(self) -> str:
        """``qsup retest`` asked the running qsup: read the identity again now."""
        before = self.retester.identity
        self._read_identity(self.clock())
        return self.retester.answer(before)

    # ------------------------------------------------------------ housekeeping
    def _housekeeping(self, now: float) -> None:
        if self.mode == "run" and self._identity.due(now):
            self._read_identity(now)
        if self._status.due(now):
            self.ledger.put_status(self.snapshot(now))
        if self._requests.due(now) and ops.serve_requests(self.state_dir, self.store, self.queue, self.stats,
                                                          on_retest=self.retest_now):
            self.intake.relist()  # released messages are in the queue now
        if self._prune.due(now):
            self.ledger.prune(self.config.done_retention_hours)
        self.notifier.tick(now)
        self.fleet.tick(now)
        if self.on_tick:
            self.on_tick(self)

    def snapshot(self, now: float, force: bool = False) -> dict:
        return self.telemetry.snapshot(now, pool=self.pool, isolation=self.isolation,
                                       depth=self.intake.depth(now, force), breaker=self.env.breaker)

    def summary(self) -> dict:
        return self.telemetry.summary(self.env.breaker)

    # ------------------------------------------------------------------ stop
    def _shutdown(self) -> None:
        now = self.clock()
        self.intake.close()
        self.pool.kill_all()
        if self._state_broken:  # no more writes: the next start recovers the rest
            self.pool.abandon()
            return
        ended, canary_end = self.pool.collect(now, stopping=True)
        self._settle(ended, now)
        self._settle([], now)  # completes the last moves
        self.pool.retire_idle(polite=2.0)
        self.pool.sweep_orphans()
        self.ledger.put_status(self.snapshot(now, force=True))
        self.notifier.flush()  # what is due goes out before qsup exits
        self.fleet.close()  # so do the fleet's publications, if Redis answers
        self.pool.close()


__all__ = ["Stop", "Supervisor"]
