"""The supervisor loop: reap the finished, act on the policy's decisions, start
work up to the wanted count. Signal handlers only set flags; this loop acts.

Only the supervisor writes the LMDB state, and it never forks while holding a
transaction: workers are fresh processes (exec), never forks of qsup.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import selectors
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from quarantine import canary, moves, ops
from quarantine.backoff import respawn_delay
from quarantine.breaker import Breaker
from quarantine.config import Config
from quarantine.errors import EXIT_BREAKER, EXIT_OK, StateError
from quarantine.headers import HEAD_BYTES, summary
from quarantine.hookspecs import MessageRef, Queue, Scanner
from quarantine.ids import message_key
from quarantine.policy import (
    CRASHES,
    Batch,
    Decision,
    Ending,
    Hunts,
    Lane,
    Outcome,
    decide,
    suspect_slots,
)
from quarantine.process import (
    SpawnError,
    WorkerProcess,
    kill_stale_workers,
    peak_rss_of_self,
    reap_orphans,
    sample_all,
    spawn,
)
from quarantine.ratecap import RateCap
from quarantine.runs import Run
from quarantine.store import Store

log = logging.getLogger("qsup")
STATUS_EVERY = 1.0
REFILL_MAX = 50_000  # most queue entries held in memory at once
TICK = 0.05
POLL_EVERY = 0.1  # seconds between checks that workers with open pipes are alive
CANARY_WAIT = 1.0  # how long candidates wait for other proof before a canary runs


class Stop(IntEnum):
    NONE = 0
    WARM = 1
    COLD = 2


def batch_to_json(batch: Batch, fps: dict[str, str]) -> dict:
    return {"ids": list(batch.ids), "lane": batch.lane.value, "path": list(batch.path),
            "hunt": batch.hunt, "fps": {q: fps[q] for q in batch.ids if q in fps}}


def batch_from_json(data: dict) -> tuple[Batch, dict[str, str]]:
    batch = Batch(ids=tuple(data["ids"]), lane=Lane(data["lane"]), path=tuple(data["path"]),
                  hunt=data.get("hunt"))
    return batch, dict(data.get("fps", {}))


class Waiting(NamedTuple):
    """A suspect batch waiting for a worker, and its record in the `pending` db."""

    batch: Batch
    fps: dict[str, str]  # queue ID -> fingerprint
    pending: str = ""  # its key in `pending` ("" for clean traffic, never recorded)


@dataclass
class Ended:
    """A batch that ended, with what the policy needs to judge it."""

    batch_id: str
    batch: Batch
    fps: dict[str, str]
    sizes: dict[str, int]
    outcome: Outcome
    detail: dict
    duration: float = 0.0
    stderr: bytes = b""
    verdicts: dict = field(default_factory=dict)
    fresh_start: float = -math.inf  # when it started, if it was its worker's first batch


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: Store,
        queue: Queue,
        scanner: Scanner,
        hooks,
        *,
        state_dir: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        adopt_orphans: bool = False,
        mode: str = "drain",
    ):
        self.config = config
        self.store, self.queue, self.scanner, self.hooks = store, queue, scanner, hooks
        self.state_dir = os.path.realpath(state_dir)
        self.clock, self.wall = clock, wall
        self.adopt_orphans = adopt_orphans
        self.mode = mode
        self.breaker = Breaker(config.storm_limit, config.storm_window)
        self.hunts = Hunts()
        self.runs: dict[str, Run] = {}
        self.idle: list[WorkerProcess] = []
        self.suspects: deque[Waiting] = deque()
        self.buffer: deque[MessageRef] = deque()
        self.buffered: set[str] = set()
        self.busy: dict[str, str] = {}  # queue ID -> fingerprint, in flight or suspect
        self.awaiting: dict[str, dict] = {}  # message key -> quarantine candidate
        self.canary_run: Run | None = None
        self.canary_path = canary.prepare(self.state_dir, config.canary)
        self.last_canary_pass = -math.inf
        self._env_failed_while_open = False  # a canary or a start failed since it last closed
        self.stats: Counter = Counter()
        self.sel = selectors.DefaultSelector()
        self.fdmap: dict[int, WorkerProcess] = {}
        self.stop = Stop.NONE
        self.stop_deadline = math.inf
        self.reload: Callable[[], Config] | None = None
        self.make_scanner: Callable[[Config], Scanner] | None = None  # rebuilt on reload
        self._reload_wanted = False
        self._ids = itertools.count(1)
        self._last_list = -math.inf
        self._listing: Iterator | None = None  # a listing of the queue under way, in slices
        self._last_status = -math.inf
        self._last_depth = (-math.inf, 0)
        self._last_sweep = -math.inf
        self._last_requests = -math.inf
        self._crash_streak = 0  # batches crashed in a row with no success between
        self._state_broken = False
        self._last_prune = -math.inf
        self._last_sample = -math.inf
        self._last_idle_check = -math.inf
        self._last_poll_all = -math.inf
        self._spare_deaths = 0  # spares that died idle since the last good batch
        self._spare_after = -math.inf
        self._streak_started = -math.inf
        self._said_breaker = False
        self._rates: deque = deque()  # (time, delivered) for throughput
        self._completing: list[tuple] = []  # moves made, their records not yet committed
        self._fresh_taken: deque = deque()  # when a fresh worker replaced one that ended
        self._sweep_due = False
        self._ended_workers = 0  # workers gone (crash, recycle) and not yet replaced
        self._startup = 0.5  # seconds from spawn to `ready`, a moving average once measured
        self.started = clock()
        self.on_tick: Callable[[Supervisor], None] | None = None
        self._hook_log = RateCap(log, per_window=5, window=60.0, clock=clock)

    # ----------------------------------------------------------------- signals
    def request_stop(self) -> None:
        """First call: warm stop; second: cold stop. Safe in a signal handler."""
        self.stop = Stop.COLD if self.stop else Stop.WARM

    def request_reload(self) -> None:
        self._reload_wanted = True

    # -------------------------------------------------------------------- loop
    def serve(self, follow: bool) -> int:
        """Drain the queue (follow=False) or keep watching it (follow=True)."""
        self.recover()
        code = EXIT_OK
        try:
            while True:
                now = self.clock()
                stop = self.stop  # read once: a signal landing mid-pass is acted on next pass
                self._stop_tick(now, stop)
                ended = self._collect(now)
                if stop:
                    self._settle(ended, now)
                    if not self.runs and self.canary_run is None:
                        break
                if self._reload_wanted:
                    self._do_reload()
                if not stop:
                    self._refill(now, force=not follow and not self.buffer)
                    self._settle(ended, now, dispatch=True)
                    self._canary_tick(now)
                    self._keep_spares(now)
                    if not follow and self._drained():
                        self._refill(now, force=True)  # anything the last moves left behind
                        if self._drained():
                            break
                    if not follow and self._gave_up(now):
                        code = EXIT_BREAKER
                        break
                self._status(now)
                self._requests(now)
                self._prune(now)
                if self.on_tick:
                    self.on_tick(self)
                self._wait(now)
        except StateError as exc:
            # Full map or disk, or a broken state directory: stop safely. Nothing is
            # moved without its record, so what is in flight stays in incoming/ and
            # is recovered by the next start.
            log.error("state problem, stopping: %s", exc)
            self._state_broken = True
            raise
        finally:
            self._shutdown()
        return code

    def _stop_tick(self, now: float, stop: Stop) -> None:
        if stop is Stop.WARM and self.stop_deadline == math.inf:
            self.stop_deadline = now + self.config.grace
            log.info("warm stop: letting %d batch(es) finish (grace %.0fs)", len(self.runs), self.config.grace)
        if stop is Stop.COLD or (stop and now >= self.stop_deadline):
            for run in list(self.runs.values()) + ([self.canary_run] if self.canary_run else []):
                run.proc.kill("stopped")

    def _drained(self) -> bool:
        return not (self.runs or self.canary_run or self.suspects or self.awaiting or self.buffer
                    or self.breaker.is_open)

    def _gave_up(self, now: float) -> bool:
        if not self.breaker.is_open or now - self.breaker.since < self.config.max_wait:
            return False
        log.error("breaker open for %.0fs (%s): giving up; nothing was quarantined because of it",
                  now - self.breaker.since, self.breaker.reason)
        return True

    # ------------------------------------------------------------------- queue
    def _refill(self, now: float, force: bool = False) -> None:
        """Keep the buffer of waiting messages filled. A queue that can list in
        slices (``pending_steps``) is listed a slice per pass, early enough that the
        buffer lasts until the listing ends; a listing that would leave workers idle
        (*force*, or less than one batch per worker left) is finished at once."""
        cap = self.config.workers * self.config.batch_size
        if self._listing is not None:
            self._list_more(finish=force or len(self.buffer) < cap)
            if not (force and not self.buffer):
                return
        steps = getattr(self.queue, "pending_steps", None)
        if len(self.buffer) >= (cap * 8 if steps else cap * 2):
            return
        if self._last_depth[0] == -math.inf:
            self._last_depth = (now, self.queue.depth())
        if not force and now - self._last_list < self.config.poll_interval:
            return
        self._last_list = now
        skip = lambda q: q in self.busy or q in self.buffered
        # A deep queue is listed less often: take a larger slice of it each time
        # (bounded, so memory stays flat however deep the queue is).
        want = max(cap * 4, min(REFILL_MAX, self._last_depth[1] // 2))
        self._listing = steps(want, skip) if steps else iter([self.queue.pending(want, skip)])
        self._list_more(finish=force or len(self.buffer) < cap)

    def _list_more(self, finish: bool) -> None:
        """One slice of the listing under way (all of it with *finish*)."""
        for part in self._listing:
            if part is None:
                if finish:
                    continue
                return
            for ref in part:
                if ref.qid not in self.busy and ref.qid not in self.buffered:
                    self.buffer.append(ref)
                    self.buffered.add(ref.qid)
            if not finish:
                return
        self._listing = None
        for line in self.queue.reports():
            log.warning("%s", line)
            self.stats["odd_entries"] += 1

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self, w, now: float) -> list:
        """Take batches for the free workers and record them in flight (in *w*); the
        caller launches them once *w* is committed."""
        if self.breaker.is_open:
            return []
        workers = self.config.workers
        free = workers - len(self.runs)
        in_suspect = sum(1 for r in self.runs.values() if r.batch.lane is Lane.SUSPECT)
        allowance = suspect_slots(workers, bool(self.buffer)) - in_suspect
        batches: list[Waiting] = []
        while free > 0 and allowance > 0 and self.suspects:
            batches.append(self.suspects.popleft())
            free, allowance = free - 1, allowance - 1
        while free > 0 and self.buffer:
            refs = [self.buffer.popleft() for _ in range(min(self.config.batch_size, len(self.buffer)))]
            for ref in refs:
                self.buffered.discard(ref.qid)
            batches.append(Waiting(Batch(ids=tuple(r.qid for r in refs)), {}))
            free -= 1
        return self._record_start(w, batches) if batches else []

    def _identify(self, batch: Batch, known: dict[str, str]) -> tuple[Batch, dict, dict]:
        """Fingerprint the batch's messages; drop the ones gone or replaced."""
        fps, sizes, keep = {}, {}, []
        for qid in batch.ids:
            ident = self.queue.identify(qid)
            if ident is None or (qid in known and known[qid] != ident[1]):
                why = "vanished" if ident is None else "was replaced by a new message"
                log.warning("%s %s while qsup held it; the old content is no longer in the queue", qid, why)
                self.busy.pop(qid, None)
                self.stats["vanished"] += 1
                continue
            sizes[qid], fps[qid] = ident
            keep.append(qid)
        return Batch(ids=tuple(keep), lane=batch.lane, path=batch.path, hunt=batch.hunt), fps, sizes

    def _new_batch_id(self) -> str:
        return f"{int(self.wall() * 1000):x}-{os.getpid():x}-{next(self._ids):x}"

    def _record_start(self, w, batches: list[Waiting]) -> list[tuple]:
        """The in-flight record of each batch (its IDs, their fingerprints, when):
        written in *w*, which is committed, durably, before any of them starts.
        Worker pids are not recorded: a restart finds stale workers by QSUP_OWNER."""
        ready = []
        wall = self.wall()
        for waiting in batches:
            batch, fps, sizes = self._identify(waiting.batch, waiting.fps)
            if waiting.pending:
                w.delete("pending", waiting.pending)
            if not batch.ids:
                continue
            batch_id = self._new_batch_id()
            self.busy.update(fps)
            record = batch_to_json(batch, fps)
            record.update(started=wall, qsup=os.getpid())
            w.put("batches", batch_id, record)
            ready.append((batch_id, batch, fps, sizes))
        return ready

    def _worker_env(self, batch_id: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.scanner.environment())
        env["QSUP_BATCH_ID"] = batch_id
        env["QSUP_OWNER"] = self.state_dir
        if self.scanner.mode == "persistent":
            env["QSUP_PERSISTENT"] = "1"
        return env

    def _proc_for(self, batch_id: str, paths: list[str], now: float, fresh: bool) -> WorkerProcess:
        persistent = self.scanner.mode == "persistent"
        if persistent and self.idle:
            # warm workers first; a spare (never used) when a fresh one is wanted;
            # among spares, one that has finished starting up
            ranked = sorted(self.idle, key=lambda p: ((p.batches == 0) != fresh, not p.ready))
            if not fresh or ranked[0].batches == 0:
                self.idle.remove(ranked[0])
                if ranked[0].batches == 0:
                    self._took_fresh(now, fresh)
                    self.stats["spares_taken" if ranked[0].ready else "spares_taken_starting"] += 1
                return ranked[0]
        if persistent:
            self._took_fresh(now, fresh)
            self.stats["started_on_demand"] += 1
        return self._spawn(batch_id, paths, now)

    def _took_fresh(self, now: float, canary: bool) -> None:
        """Count what spares are for: a canary, or a worker replacing one that ended.
        The first start of the pool is not demand that recurs: counted, it made the
        first crash start a spare for every worker at once."""
        if canary:
            self._fresh_taken.append(now)
        elif self._ended_workers:
            self._ended_workers -= 1
            self._fresh_taken.append(now)

    def _spares_wanted(self, now: float) -> int:
        """Enough spares to cover what crashes and canaries take during one start-up
        (both measured over the last minute), and at least a quarter of the workers
        plus one; never more than the workers."""
        while self._fresh_taken and self._fresh_taken[0] < now - 60:
            self._fresh_taken.popleft()
        span = min(60.0, max(now - self.started, 1.0))
        rate = len(self._fresh_taken) / span
        base = suspect_slots(self.config.workers, True) + 1
        return max(base, min(self.config.workers, math.ceil(rate * self._startup * 1.5) + 1))

    def _keep_spares(self, now: float) -> None:
        """Persistent mode: keep `spare_workers` fresh workers started ahead, backing
        off when they die on their own (a broken environment must not spin)."""
        if self.scanner.mode != "persistent" or self.breaker.is_open or now < self._spare_after:
            return
        if not (self.stats["crashes"] or self.awaiting or self.stats["canary_runs"]):
            return  # none needed until something has crashed
        wanted = self.config.spare_workers
        if wanted is None:
            wanted = self._spares_wanted(now)
        while sum(1 for p in self.idle if p.batches == 0) < wanted:
            try:
                self.idle.append(self._spawn("spare", [], now))
            except SpawnError:
                self._spare_deaths += 1
                self._spare_after = now + respawn_delay(self._spare_deaths)
                return

    def _spawn(self, batch_id: str, paths: list[str], now: float) -> WorkerProcess:
        persistent = self.scanner.mode == "persistent"
        argv = self.scanner.command() + ([] if persistent else paths)
        proc = spawn(argv, env=self._worker_env(batch_id), now=now, persistent=persistent,
                     rlimit_as_mb=self.config.rlimit_as_mb)
        self.stats["worker_starts"] += 1
        for fd in proc.fds:
            self.sel.register(fd, selectors.EVENT_READ)
            self.fdmap[fd] = proc
        return proc

    def _launch(self, batch_id, batch, fps, sizes, now, is_canary=False) -> Run | None:
        paths = [self.queue.scan_path(q) for q in batch.ids] if not is_canary else [self.canary_path]
        try:
            proc = self._proc_for(batch_id, paths, now, fresh=is_canary)
        except SpawnError as exc:
            self._spawn_failed(batch_id, batch, fps, str(exc), now, is_canary)
            return None
        proc.peak_rss, proc.killed_by_us = 0, None
        deadline = now + self.config.startup_allowance + self.config.timeout * len(batch.ids)
        run = Run(batch_id=batch_id, batch=batch, proc=proc, started=now,
                  deadline=deadline, fps=fps, sizes=sizes, timeout=self.config.timeout,
                  canary=is_canary, first=proc.batches == 0,
                  max_rss=self.config.max_rss_mb * 2**20 if self.config.max_rss_mb else None)
        if proc.persistent:
            lines = [f"batch {batch_id} {len(paths)}\n"]
            lines += [f"{q} {p}\n" for q, p in zip(batch.ids, paths)]
            proc.batches += 1
            proc.send("".join(lines))  # a dead worker shows up as an exit in the loop
        if is_canary:
            self.canary_run = run
        else:
            self.runs[batch_id] = run
            self.stats["batches"] += 1
        return run

    def _spawn_failed(self, batch_id, batch, fps, why, now, is_canary) -> None:
        self.stats["spawn_failures"] += 1
        if is_canary:
            self._canary_failed(why, now)
            return
        self._settle([Ended(batch_id, batch, fps, {}, Outcome(ending=Ending.SPAWN), {"error": why})], now)

    # ------------------------------------------------------------------- watch
    def _wait(self, now: float) -> None:
        """Read workers' lines until one needs the loop (a batch ended, a worker
        exited) or a tick passed: progress lines alone do not run a whole pass."""
        timeout = TICK if (self.runs or self.canary_run) else min(self.config.poll_interval, 0.25)
        if self._listing is not None and not self.stop:
            timeout = min(timeout, 0.005)  # the next slice of the listing is due
        if not self.fdmap:
            time.sleep(timeout)
        else:
            end = now + timeout
            owners = {id(r.proc): r for r in self.all_runs()}
            while not self._read(self.sel.select(max(end - now, 0.0)), owners, now := self.clock()):
                if now >= end or self.stop or self._reload_wanted:
                    break
        now = self.clock()
        interval = self.config.rss_interval if self.config.max_rss_mb else 1.0
        if now - self._last_sample >= interval:
            self._last_sample = now
            rss = sample_all([r.proc for r in self.all_runs() if r.proc.exit is None])
            limit = self.config.max_rss_mb * 2**20 if self.config.max_rss_mb else None
            for run in self.all_runs():
                if limit and rss.get(run.proc.pid, 0) > limit:
                    run.proc.kill("memory")
        poll_all = now - self._last_poll_all >= POLL_EVERY
        if poll_all:
            self._last_poll_all = now
        for run in self.all_runs():
            self._watch(run, now, poll_all)
        check_idle = now - self._last_idle_check >= 1.0
        if check_idle:
            self._last_idle_check = now
        for proc in list(self.idle):
            # an idle worker that dies closes its pipes; look at the others once a second
            if (check_idle or not proc.piped) and proc.poll() is not None:
                self.idle.remove(proc)
                self._close_proc(proc)
                self._spare_deaths += 1  # died without a batch: do not respawn at once
                self._spare_after = now + respawn_delay(self._spare_deaths)
        since = now - self._last_sweep
        if since >= 2.0 or (self._sweep_due and since >= 0.25):
            # a walk of the process table costs milliseconds: once per 0.25 s at most,
            # however many workers crashed meanwhile
            self._last_sweep, self._sweep_due = now, False
            self._sweep_orphans()

    def _read(self, events, owners: dict, now: float) -> bool:
        """Take the lines *events* announce; True if a batch ended or a worker exited."""
        act = False
        for key, _ in events:
            proc = self.fdmap.get(key.fd)
            if proc is None:
                continue
            lines = proc.read(key.fd)
            if key.fd not in proc.fds:
                self._forget_fd(key.fd)
                if not proc.piped:  # both pipes closed: it is exiting; reap it
                    for _ in range(20):  # the exit closes files a moment before the zombie
                        if proc.poll() is not None:
                            break
                        time.sleep(0.0005)
                    act = True
            run = owners.get(id(proc))
            for line in lines:
                if run is not None:
                    run.line(line, now)
                elif line.strip() == b"ready":  # an idle spare has finished starting up
                    proc.ready = True
            if run is not None and run.ended_batch:
                act = True
            if proc.ready and proc.ready_at is None:
                proc.ready_at = now
                self._startup = 0.8 * self._startup + 0.2 * (now - proc.started)
        return act

    def _sweep_orphans(self) -> None:
        """Daemonised grandchildren re-parented to qsup (a subreaper) are leaks of
        workers: kill and reap them."""
        if self.adopt_orphans:
            reap_orphans({r.proc.pid for r in self.all_runs()} | {p.pid for p in self.idle})

    def all_runs(self) -> list[Run]:
        return list(self.runs.values()) + ([self.canary_run] if self.canary_run else [])

    def _watch(self, run: Run, now: float, poll: bool) -> None:
        """Reap workers every POLL_EVERY (one whose pipes closed is reaped as soon as
        they close, in _read; an exited worker's daemonised child may hold its pipes
        open); kill a worker at its deadline."""
        proc = run.proc
        if (poll or not proc.piped or now >= run.deadline) and proc.poll() is None and now >= run.deadline:
            proc.kill("timeout")

    def _retire(self, proc: WorkerProcess, polite: float = 0.0) -> None:
        """End a worker on purpose (recycle, reload, stop, canary) and reap it."""
        end = time.monotonic() + polite
        while polite and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        proc.kill("stopped")
        end = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        self._close_proc(proc)

    def _forget_fd(self, fd: int) -> None:
        if self.fdmap.pop(fd, None) is not None:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _close_proc(self, proc: WorkerProcess) -> list[bytes]:
        fds = list(proc.fds)
        for fd in fds:
            self._forget_fd(fd)
        return proc.close()

    # ----------------------------------------------------------------- collect
    def _collect(self, now: float) -> list[Ended]:
        ended: list[Ended] = []
        for run in self.all_runs():
            if run.proc.exit is None and not run.ended_batch:
                continue
            if run.proc.exit is not None:
                self._ended_workers += not run.canary
                for line in self._close_proc(run.proc):
                    run.line(line, now)
                self._sweep_due = True  # its daemonised children, if any: soon, not per crash
            ending, detail = run.ending()
            if run.canary:
                self.canary_run = None
                self._canary_done(run, ending, detail, now)
                continue
            del self.runs[run.batch_id]
            if run.ended_batch and run.proc.exit is None:
                self._recycle_or_keep(run.proc)
            self.stats["ignored_lines"] += run.ignored + run.proc.lines.overlong
            run.proc.lines.overlong = 0
            ended.append(Ended(run.batch_id, run.batch, run.fps, run.sizes, run.outcome(), detail,
                               duration=now - run.started, stderr=run.proc.stderr_tail,
                               verdicts=run.verdicts,
                               fresh_start=run.started if run.first else -math.inf))
            run.proc.stderr_tail = b""
        return ended

    def _recycle_or_keep(self, proc: WorkerProcess) -> None:
        limit = self.config.recycle_rss_mb
        too_big = limit is not None and proc.sample() > limit * 1024 * 1024
        if proc.batches >= self.config.recycle_batches or too_big or self.stop:
            self._retire(proc)  # planned: never counts against a message
            self._ended_workers += 1
            self.stats["recycled"] += 1
        else:
            self.idle.append(proc)

    def _settle(self, ended: list[Ended], now: float, dispatch: bool = False) -> None:
        """One durable commit per pass of the loop. It holds: what completes the
        previous pass's moves; the policy's decisions for every batch that ended,
        with the intents of the deliveries they plan; and, with *dispatch*, the
        in-flight records of the batches about to start. Then the workers are
        given their batches (first: idle workers are what slows a drain), and the
        moves are made (their completion waits for the next commit: replaying a
        finished move is harmless)."""
        finished, self._completing = self._completing, []
        dispatch = dispatch and len(self.runs) < self.config.workers and bool(self.suspects or self.buffer)
        if not (ended or finished or dispatch):
            return
        delivers, ready, key = [], [], ""
        with self.store.write() as w:
            for done_key, group, results, t in finished:
                moves.complete(w, done_key, group, results, t)
            decisions = [self._decide(w, e) for e in ended]
            for e, decision in zip(ended, decisions):
                delivers += self._record(w, e, decision, now)
                for qid in decision.requeue:
                    self.busy.pop(qid, None)
                self.breaker.delivered(len(decision.deliver), now)
                self._judge_environment(w, e, decision, now)  # a storm stops this pass's dispatch
            if delivers:
                key = f"deliver/{self._new_batch_id()}"
                moves.record(w, key, delivers)
            if dispatch:
                ready = self._dispatch(w, now)
        for batch_id, batch, fps, sizes in ready:
            self._launch(batch_id, batch, fps, sizes, now)
        if self.hooks.qsup_verdict.get_hookimpls():  # one call per message: only if heard
            for e, decision in zip(ended, decisions):
                for qid in decision.deliver:
                    if qid in e.verdicts:
                        self._fire("qsup_verdict", qid=qid, verdict=e.verdicts[qid], queue=self.queue)
        if delivers:
            wall = self.wall()
            self._completing.append((key, delivers, moves.make(self.queue, delivers), wall))
        for e, decision in zip(ended, decisions):
            for qid in decision.deliver:
                self.busy.pop(qid, None)
                self.queue.scan_done(qid)
            self.stats["delivered"] += len(decision.deliver)
            self._rates.append((now, len(decision.deliver)))
            if e.outcome.ending is Ending.OK:
                self._healthy(e.fresh_start)

    def _decide(self, r, e: Ended) -> Decision:
        strikes = {}
        if e.outcome.ending in CRASHES:  # strikes matter only to a crash
            strikes = {q: (r.get("history", message_key(q, e.fps[q])) or {}).get("strikes", 0)
                       for q in e.batch.ids if q in e.fps}
        # A persistent worker's crash costs a new worker (its start-up) while another
        # batch costs little: a blind crash sends every suspect alone (1 + K crashes
        # per poison message). A one-shot worker pays its start-up for every batch
        # either way: bisect (fewest runs, ⌈log₂ n⌉ + K crashes).
        split = len(e.batch.ids) if self.scanner.mode == "persistent" else 2
        return decide(e.batch, e.outcome, strikes, self.config.strikes, hunt=e.batch_id, split=split)

    def _record(self, w, e: Ended, decision: Decision, now: float) -> list:
        """Write what the decision means for the state; return the deliveries planned."""
        batch, fps, outcome = e.batch, e.fps, e.outcome
        crashed = outcome.ending in CRASHES
        if outcome.ending is Ending.OK:
            self._crash_streak = 0
            self._spare_deaths = 0
        elif crashed:
            if self._crash_streak == 0:
                self._streak_started = now
            self._crash_streak += 1
            self.stats["crashes"] += 1
            log.info("batch %s (%d message(s), %s lane) crashed: %s%s", e.batch_id, len(batch.ids),
                     batch.lane.value, outcome.ending.value, _detail_text(e.detail))
        unexplained = None
        if crashed or outcome.ending is Ending.OK:  # a stop says nothing about a hunt
            unexplained = self.hunts.finish(batch, crashed)
            self.hunts.start(e.batch_id, decision, batch.ids)
        w.delete("batches", e.batch_id)
        if crashed:
            attempt = {"batch": e.batch_id, "size": len(batch.ids), "ending": outcome.ending.value,
                       "duration": round(e.duration, 3), "when": self.wall(), "path": list(batch.path),
                       "stderr": e.stderr[-600:].decode("utf-8", "replace"), **e.detail}
            for qid in batch.ids:
                if qid not in outcome.done:
                    self._note_attempt(w, qid, fps[qid], attempt, qid in decision.strike)
        if unexplained:
            self.stats["unexplained"] += 1
            for qid in unexplained:
                if qid in fps:
                    self._note(w, qid, fps[qid], "unexplained", 1)
        for retry in decision.retry:
            self._hold(w, retry, fps, f"{e.batch_id}.{next(self._ids):x}")
        for qid in decision.quarantine:
            key = message_key(qid, fps[qid])
            pid = f"{e.batch_id}.q{next(self._ids):x}"
            data = batch_to_json(Batch(ids=(qid,), lane=Lane.SUSPECT, path=batch.path), fps)
            data["awaiting"] = True
            w.put("pending", pid, data)
            self.awaiting[key] = {"qid": qid, "fp": fps[qid], "crashed_at": now, "pending": pid,
                                  "path": list(batch.path), "size": e.sizes.get(qid, 0)}
        return [self.queue.plan(q, fps[q], "outgoing") for q in decision.deliver]

    def _judge_environment(self, w, e: Ended, decision: Decision, now: float) -> None:
        """Spawn failures and storms open the breaker."""
        if decision.systemic:
            self._env_failed_while_open = True
            self._forgive(now, w)  # the environment is failing: so may have their last crashes
            said = e.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            why = e.detail.get("error") or "it died before reading anything"
            rest = _detail_text({k: v for k, v in e.detail.items() if k != "error"})
            if self.breaker.trip(f"worker cannot start: {why}{rest}"
                                 + (f"; it said: {said[0][:200]}" if said else ""), now):
                self._announce_breaker()
        for qid in decision.strike:
            self.stats["strikes"] += 1
            if self.breaker.solo_crash(message_key(qid, e.fps[qid]), now):
                if self.breaker.storm(f"storm: more than {self.config.storm_limit} distinct messages "
                                      f"crashed alone within {self.config.storm_window:.0f}s", now):
                    self._announce_breaker()

    @staticmethod
    def _history(w, qid: str, fp: str) -> tuple[str, dict]:
        key = message_key(qid, fp)
        return key, w.get("history", key) or {"qid": qid, "fp": fp, "strikes": 0,
                                              "attempts_total": 0, "attempts": []}

    def _note_attempt(self, w, qid: str, fp: str, attempt: dict, strike: bool) -> None:
        key, hist = self._history(w, qid, fp)
        hist["attempts_total"] += 1
        hist["attempts"] = (hist["attempts"] + [dict(attempt, strike=strike)])[-self.config.history:]
        if strike:
            hist["strikes"] += 1
        w.put("history", key, hist)

    def _note(self, w, qid: str, fp: str, field: str, inc: int) -> None:
        key, hist = self._history(w, qid, fp)
        hist[field] = hist.get(field, 0) + inc
        w.put("history", key, hist)

    # ------------------------------------------------------------------ canary
    def _canary_tick(self, now: float) -> None:
        if not self.breaker.is_open and self.awaiting:
            # those with proof of a working environment since their crash go now
            self._confirm(self.last_canary_pass, now)
        if self.canary_run is not None:
            return
        if self.breaker.is_open:
            due = self.breaker.probe_due(now)
        else:
            # Candidates wait for a canary, or for a fresh worker's good batch (the
            # same proof, for free) while traffic flows; and when every run dies,
            # ask the canary early.
            streak = self._crash_streak >= max(3, self.config.workers)
            waited = now - min((a["crashed_at"] for a in self.awaiting.values()), default=now)
            flowing = bool(self.buffer or self.suspects)
            due = (bool(self.awaiting) and (waited >= CANARY_WAIT or not flowing)) or (
                streak and self._streak_started > self.last_canary_pass)
        if not due:
            return
        fps = {canary.CANARY_ID: "canary"}
        batch = Batch(ids=(canary.CANARY_ID,), lane=Lane.SUSPECT)
        self._launch(f"canary-{self._new_batch_id()}", batch, fps, {}, now, is_canary=True)
        self.stats["canary_runs"] += 1

    def _healthy(self, started: float) -> None:
        """A fresh worker (its first batch) given a batch at *started* scanned all of
        it: what a canary passing then shows, that the environment works. Candidates
        that crashed before it need no canary of their own (see _canary_tick)."""
        if started > self.last_canary_pass and not self.breaker.is_open:
            self.last_canary_pass = started

    def _canary_done(self, run: Run, ending: Ending, detail: dict, now: float) -> None:
        if ending is Ending.OK and run.proc.persistent and run.proc.exit is None and not self.stop:
            self._recycle_or_keep(run.proc)  # a worker that just proved itself: keep it
        else:
            self._retire(run.proc)
        if self.breaker.is_open and run.started < self.breaker.since:
            return  # began before the breaker opened: it proves nothing about why
        if ending is Ending.OK:
            self.last_canary_pass = run.started
            if self.breaker.is_open:
                log.warning("breaker closed: the canary passed again after %.0fs (%s)",
                            now - self.breaker.since, self.breaker.reason)
                self.breaker.probe_passed(now)
                self._said_breaker = False
                self._fire("qsup_breaker", state="closed", reason="canary passed")
                if self._env_failed_while_open:
                    # The environment failed (a canary, a worker that could not start)
                    # while it was open: candidates that crashed since crashed in a
                    # broken environment, and their last strike does not count.
                    self._forgive(now)
                self._env_failed_while_open = False
            self._confirm(run.started, now)
            return
        self._canary_failed(f"{ending.value}{_detail_text(detail)}", now)

    def _canary_failed(self, why: str, now: float) -> None:
        self.stats["canary_failures"] += 1
        self._env_failed_while_open = True
        if self.breaker.is_open:
            self.breaker.probe_failed(now)
        elif self.breaker.trip(f"the canary failed too ({why}): the environment is at fault", now):
            self._announce_breaker()
        self._forgive(now)

    def _forgive(self, now: float, w=None) -> None:
        """The environment was broken: candidates' last strike does not count. They
        stay suspects (to run alone again once the breaker closes). In *w* if given."""
        if not self.awaiting:
            return
        if w is None:
            with self.store.write() as w:
                self._forgive(now, w)
            return
        k = self.config.strikes
        for key, cand in self.awaiting.items():
            hist = w.get("history", key)
            if hist:
                hist["strikes"] = min(hist["strikes"], k - 1)
                hist["forgiven"] = hist.get("forgiven", 0) + 1
                w.put("history", key, hist)
            w.delete("pending", cand["pending"])
            batch = Batch(ids=(cand["qid"],), lane=Lane.SUSPECT, path=tuple(cand["path"]))
            self._hold(w, batch, {cand["qid"]: cand["fp"]}, f"forgiven.{next(self._ids):x}")
        self.stats["forgiven"] += len(self.awaiting)
        self.awaiting.clear()

    def _confirm(self, canary_started: float, now: float) -> None:
        if self.breaker.is_open:
            return
        for key, cand in list(self.awaiting.items()):
            if cand["crashed_at"] <= canary_started:  # same pass: started after the crash was seen
                del self.awaiting[key]
                self._quarantine(key, cand)

    def _quarantine(self, key: str, cand: dict) -> None:
        qid, fp = cand["qid"], cand["fp"]
        sender, subject, headers = summary(self.queue.head("incoming", qid, HEAD_BYTES))
        with self.store.read() as r:
            hist = r.get("history", key) or {}
        last = (hist.get("attempts") or [{}])[-1]
        record = {"qid": qid, "fp": fp, "key": key, "when": self.wall(), "why": last.get("ending", "?"),
                  "signal": last.get("signal"), "exit_code": last.get("exit_code"),
                  "peak_rss": max((a.get("peak_rss") or 0 for a in hist.get("attempts", [])), default=0),
                  "strikes": hist.get("strikes", 0), "size": cand.get("size", 0), "sender": sender,
                  "subject": subject, "headers": headers, "path": cand.get("path", []),
                  "queue": self.queue.name, "state": "moving"}
        mv, ikey, extra = self.queue.plan(qid, fp, "quarantine"), f"quarantine/{key}", {"record": record}
        with self.store.write() as w:
            w.put("quarantine", key, record)
            w.delete("pending", cand["pending"])
            moves.record(w, ikey, [mv], extra)
        results = moves.make(self.queue, [mv])
        with self.store.write() as w:
            moves.complete(w, ikey, [mv], results, self.wall(), extra)
            if results[0] == "gone":
                w.delete("quarantine", key)
        self.busy.pop(qid, None)
        self.queue.scan_done(qid)
        if results[0] == "gone":
            return
        self.stats["quarantined"] += 1
        log.warning("quarantined %s (%s%s) after %d strike(s): from %s, subject %s", qid, record["why"],
                    f", {record['signal']}" if record["signal"] else "", record["strikes"],
                    sender or "?", subject or "?")
        self._fire("qsup_quarantined", record=dict(record, name=mv.name, state="quarantined"))

    def _fire(self, hook: str, **kwargs) -> None:
        """Call an event hook. A plugin that raises is reported (rate-capped) and
        the supervisor goes on: a notification bug must not stop the mail."""
        try:
            getattr(self.hooks, hook)(**kwargs)
        except Exception as exc:  # third-party code: any error is possible
            self.stats["hook_errors"] += 1
            self._hook_log(logging.ERROR, "a plugin's %s hook failed: %s: %s", hook,
                           type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

    def _announce_breaker(self) -> None:
        if not self._said_breaker:
            self._said_breaker = True
            log.error("breaker open: %s — nothing is quarantined or dispatched; probing with the "
                      "canary", self.breaker.reason)
            self._fire("qsup_breaker", state="open", reason=self.breaker.reason)

    # ---------------------------------------------------------------- recovery
    def recover(self) -> dict:
        """Finish what a dead qsup left: half-made moves, batches in flight, suspects."""
        now, wall = self.clock(), self.wall()
        report = {"at": wall, "intents": moves.finish_pending(self.store, self.queue, wall)}
        with self.store.read() as r:
            batches = list(r.items("batches"))
            pending = list(r.items("pending"))
            previous = r.get("meta", "status") or {}
        report["killed_workers"] = kill_stale_workers(self.state_dir)
        solo_after = self.config.recovery_solo_after
        lost_ids = 0
        for batch_id, data in batches:
            batch, fps = batch_from_json(data)
            with self.store.write() as w:
                for qid in batch.ids:
                    self._note(w, qid, fps[qid], "deaths", 1)
            with self.store.read() as r:
                deaths = {q: (r.get("history", message_key(q, fps[q])) or {}).get("deaths", 0)
                          for q in batch.ids}
            lost_ids += len(batch.ids)
            # Seen in flight across repeated deaths: a suspect that runs alone.
            solo = tuple(q for q in batch.ids if deaths[q] >= solo_after)
            rest = tuple(q for q in batch.ids if q not in solo)
            for qid in solo:
                self._queue_pending(Batch(ids=(qid,), lane=Lane.SUSPECT, path=batch.path + ("1",)), fps)
            if rest:
                sub = Batch(ids=rest, lane=batch.lane, path=batch.path, hunt=batch.hunt)
                decision = decide(sub, Outcome(ending=Ending.LOST), {}, self.config.strikes, batch_id)
                for retry in decision.retry:
                    self._queue_pending(retry, fps)
            with self.store.write() as w:
                w.delete("batches", batch_id)
        for pid, data in pending:
            batch, fps = batch_from_json(data)
            for qid, fp in fps.items():
                self.busy[qid] = fp
            if data.get("awaiting"):  # reached K strikes: only the canary's word is missing
                qid = batch.ids[0]
                self.awaiting[message_key(qid, fps[qid])] = {
                    "qid": qid, "fp": fps[qid], "crashed_at": now, "pending": pid,
                    "path": list(batch.path), "size": (self.queue.identify(qid) or (0, ""))[0]}
                continue
            self.suspects.append(Waiting(batch, fps, pid))
        report.update(batches=len(batches), messages=lost_ids, suspects=len(self.suspects))
        if batches or report["intents"]:
            report["why"] = (f"the previous qsup (pid {previous.get('pid', '?')}) died with "
                             f"{len(batches)} batch(es) in flight; they are treated as crashed "
                             f"batches (bisected, no strikes)")
            log.warning("recovered: %s; %d interrupted move(s) finished", report["why"], report["intents"])
            with self.store.write() as w:
                w.put("meta", "recovery", report)
        return report

    def _queue_pending(self, batch: Batch, fps: dict[str, str]) -> None:
        with self.store.write() as w:
            self._hold(w, batch, fps, f"recovered.{self._new_batch_id()}")

    def _hold(self, w, batch: Batch, fps: dict[str, str], pid: str) -> None:
        """Record a suspect batch in `pending` (it survives a restart) and queue it."""
        mine = {q: fps[q] for q in batch.ids}
        w.put("pending", pid, batch_to_json(batch, mine))
        self.busy.update(mine)
        self.suspects.append(Waiting(batch, mine, pid))

    # ------------------------------------------------------------------ status
    def snapshot(self, now: float, force: bool = False) -> dict:
        while self._rates and self._rates[0][0] < now - 60:
            self._rates.popleft()
        span = min(60.0, max(now - self.started, 1e-6))
        if force or now - self._last_depth[0] > 5:
            self._last_depth = (now, self.queue.depth())
        return {
            "pid": os.getpid(), "mode": self.mode, "updated": self.wall(),
            "uptime": round(now - self.started, 1),
            "workers": [{"pid": r.proc.pid, "batch": r.batch_id, "lane": r.batch.lane.value,
                         "size": len(r.batch.ids), "age": round(now - r.started, 1)}
                        for r in self.runs.values()],
            "canary": bool(self.canary_run), "suspects": sum(len(w.batch.ids) for w in self.suspects),
            "awaiting_canary": len(self.awaiting), "queue_depth": self._last_depth[1],
            "breaker": dict(self.breaker.snapshot(), since_wall=(
                self.wall() - (now - self.breaker.since) if self.breaker.is_open else None)),
            "throughput": round(sum(n for _, n in self._rates) / span, 2),
            "counters": dict(self.stats),
        }

    def _status(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_status < STATUS_EVERY:
            return
        self._last_status = now
        snap = self.snapshot(now, force)
        with self.store.write() as w:
            w.put("meta", "status", snap)

    def _prune(self, now: float) -> None:
        """Drop completion records past their retention, a slice per call."""
        if now - self._last_prune < 3600:
            return
        self._last_prune = now
        cutoff = self.wall() - self.config.done_retention_hours * 3600
        with self.store.read() as r:
            old = [key for key, rec in r.items("done") if rec.get("t", 0) < cutoff]
        for start in range(0, len(old), 5000):
            with self.store.write() as w:
                for key in old[start:start + 5000]:
                    w.delete("done", key)
        if old:
            log.info("pruned %d completion record(s) older than %.0fh", len(old),
                     self.config.done_retention_hours)

    def _requests(self, now: float) -> None:
        """Release/purge asked for by `qsup release` / `qsup purge` while we run."""
        if now - self._last_requests < 0.25:
            return
        self._last_requests = now
        if ops.serve_requests(self.state_dir, self.store, self.queue):
            self._last_list = -math.inf  # released messages are in the queue now

    # ---------------------------------------------------------------- shutdown
    def _do_reload(self) -> None:
        self._reload_wanted = False
        if self.reload is None:
            return
        try:
            new = self.reload()
        except Exception as exc:  # a bad file must not stop a running daemon
            log.error("reload failed, keeping the old configuration: %s", exc)
            return
        if self.make_scanner is not None:
            try:
                self.scanner = self.make_scanner(new)
            except Exception as exc:
                log.error("reload failed, keeping the old configuration: %s", exc)
                return
        self.config = new
        self.breaker.storm_limit, self.breaker.storm_window = new.storm_limit, new.storm_window
        for proc in self.idle:  # persistent workers restart with the new settings
            self._retire(proc)
        self.idle.clear()
        log.info("configuration reloaded from %s", new.source)

    def _shutdown(self) -> None:
        now = self.clock()
        if self._listing is not None:
            self._listing.close()  # its directory handle
            self._listing = None
        for run in self.all_runs():
            run.proc.kill("stopped")
        deadline = time.monotonic() + 5
        while any(r.proc.poll() is None for r in self.all_runs()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._state_broken:  # no more writes: the next start recovers the rest
            for run in self.all_runs():
                self._close_proc(run.proc)
            for proc in self.idle:
                self._retire(proc)
            self.sel.close()
            return
        self._settle(self._collect(now), now)
        self._settle([], now)  # completes the last moves
        for proc in self.idle:
            proc.terminate()
        for proc in self.idle:
            self._retire(proc, polite=2.0)
        self.idle.clear()
        self._sweep_orphans()
        self._status(now, force=True)
        self.sel.close()

    def summary(self) -> dict:
        return {"delivered": self.stats["delivered"], "quarantined": self.stats["quarantined"],
                "crashes": self.stats["crashes"], "unexplained": self.stats["unexplained"],
                "strikes": self.stats["strikes"], "canary_runs": self.stats["canary_runs"],
                "ignored_lines": self.stats["ignored_lines"], "odd_entries": self.stats["odd_entries"],
                "worker_starts": self.stats["worker_starts"],
                "breaker": self.breaker.snapshot(), "seconds": round(self.clock() - self.started, 2),
                "qsup_peak_rss_mb": round(peak_rss_of_self() / 2**20, 1)}


def _detail_text(detail: dict) -> str:
    parts = []
    if detail.get("signal"):
        parts.append(detail["signal"])
    if detail.get("exit_code") is not None:
        parts.append(f"exit {detail['exit_code']}")
    if detail.get("peak_rss"):
        parts.append(f"peak RSS {detail['peak_rss'] // (1024 * 1024)} MB")
    if detail.get("error"):
        parts.append(detail["error"])
    return f" ({', '.join(parts)})" if parts else ""


__all__ = ["Ended", "Stop", "Supervisor"]
