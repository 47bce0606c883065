"""The worker pool: the processes qsup runs, and what becomes of them.

Like a circus watcher it owns its processes and reconciles them: :meth:`launch`
gives a batch to a worker (warm, spare or new, as the mode decides), :meth:`wait`
reads their lines until something ends and enforces deadlines and memory limits,
:meth:`collect` turns the ended ones into :class:`~quarantine.runs.Ended` records
and keeps, recycles or retires the workers, :meth:`keep_spares` starts spares.
Reaping is explicit: a worker whose pipes closed is reaped at once, the others at
least every ``POLL_EVERY`` seconds (one that closed its pipes and lives on, or one
whose daemonised child holds them open, is still seen to exit).
"""

from __future__ import annotations

import os
import selectors
import time
from collections import Counter
from collections.abc import Callable

from quarantine.config import Config
from quarantine.hookspecs import Scanner
from quarantine.modes import mode_for
from quarantine.policy import Batch, Ending, Lane
from quarantine.process import WorkerProcess, reap_orphans, sample_all, spawn
from quarantine.runs import Ended, Run
from quarantine.ticks import Every

POLL_EVERY = 0.1  # seconds between reaping checks of workers with open pipes
CanaryEnd = tuple[Run, Ending, dict]


class WorkerPool:
    def __init__(self, config: Config, scanner: Scanner, stats: Counter, *, owner: str,
                 clock: Callable[[], float], adopt_orphans: bool = False):
        self.config, self.scanner, self.stats = config, scanner, stats
        self.owner, self.clock, self.adopt_orphans = owner, clock, adopt_orphans
        self.mode = mode_for(scanner.mode)
        self.runs: dict[str, Run] = {}  # batch ID -> the run of a message batch
        self.canary: Run | None = None
        self.idle: list[WorkerProcess] = []  # persistent workers waiting for a batch
        self.sel = selectors.DefaultSelector()
        self.fdmap: dict[int, WorkerProcess] = {}
        self.started = clock()
        self.startup = 0.5  # seconds from spawn to `ready`, a moving average once measured
        self._sample = Every(1.0)
        self._poll = Every(POLL_EVERY)
        self._idle_check = Every(1.0)
        self._last_sweep = -float("inf")
        self._sweep_due = False
        self.configure(config, scanner)

    def configure(self, config: Config, scanner: Scanner) -> None:
        self.config, self.scanner = config, scanner
        self._sample.interval = config.rss_interval if config.max_rss_mb else 1.0
        self._fixed = self._fixed_args()  # once per configuration, not per batch

    def _fixed_args(self) -> int:
        """Bytes of a worker's exec besides its paths: environment and command."""
        env = {**os.environ, **self.scanner.environment(), **self.mode.environment()}
        extra = len("QSUP_BATCH_ID=") + 64 + len(f"QSUP_OWNER={self.owner}") + len("QSUP_STATUS_FD=999") + 30
        return (sum(len(k.encode()) + len(v.encode()) + 10 for k, v in env.items()) + extra
                + sum(len(a.encode()) + 9 for a in self.scanner.command()))

    def fits(self, paths: list[str]) -> bool:
        """Whether a batch of *paths* can be started (a one-shot command line is bounded)."""
        return self.mode.persistent or self.mode.fits(self._fixed, paths)

    # ------------------------------------------------------------------ start
    def all_runs(self) -> list[Run]:
        return list(self.runs.values()) + ([self.canary] if self.canary else [])

    def split(self, batch: Batch, clean_waiting: bool) -> int:
        """How many parts a crashed *batch* splits into, from what the runs cost in this
        mode and how many workers are free (policy.split_parts)."""
        return self.mode.split(batch, self.config.workers - len(self.runs), clean_waiting, self.startup)

    def spawn(self, batch_id: str, paths: list[str], now: float) -> WorkerProcess:
        env = dict(os.environ)
        env.update(self.scanner.environment())
        env.update(self.mode.environment(), QSUP_BATCH_ID=batch_id, QSUP_OWNER=self.owner)
        proc = spawn(self.mode.argv(self.scanner.command(), paths), env=env, now=now,
                     persistent=self.mode.persistent, rlimit_as_mb=self.config.rlimit_as_mb)
        self.stats["worker_starts"] += 1
        for fd in proc.fds:
            self.sel.register(fd, selectors.EVENT_READ)
            self.fdmap[fd] = proc
        return proc

    def launch(self, batch_id: str, batch: Batch, fps: dict, sizes: dict, paths: list[str],
               now: float, canary: bool = False) -> Run:
        """Give the batch to a worker. The canary and a suspect alone get a fresh one:
        alone means alone in a process that scanned nothing before (contract §5.7).
        Raises SpawnError."""
        fresh = canary or (batch.lane is Lane.SUSPECT and len(batch.ids) == 1)
        proc = self.mode.acquire(self, batch_id, paths, now, fresh=fresh)
        proc.peak_rss, proc.killed_by_us = 0, None
        cfg = self.config
        run = Run(batch_id=batch_id, batch=batch, proc=proc, started=now,
                  deadline=now + cfg.startup_allowance + cfg.timeout * len(batch.ids), fps=fps,
                  sizes=sizes, timeout=cfg.timeout, canary=canary, first=proc.batches == 0,
                  max_rss=cfg.max_rss_mb * 2**20 if cfg.max_rss_mb else None)
        self.mode.hand(proc, batch_id, batch.ids, paths)
        if proc.outbuf and proc.stdin_fd not in self.fdmap:  # the pipe is full: write when it has room
            self.sel.register(proc.stdin_fd, selectors.EVENT_WRITE)
            self.fdmap[proc.stdin_fd] = proc
        if canary:
            self.canary = run
        else:
            self.runs[batch_id] = run
            self.stats["batches"] += 1
        return run

    def keep_spares(self, now: float) -> None:
        self.mode.keep_spares(self, now)

    # ------------------------------------------------------------------ watch
    def wait(self, timeout: float, interrupted: Callable[[], bool]) -> None:
        """Read workers' lines until one needs the loop (a batch ended, a worker
        exited), *timeout* real seconds passed or *interrupted*; then reap, enforce
        deadlines and memory limits, and look after idle workers and orphans."""
        if not self.fdmap:
            time.sleep(timeout)
        else:
            end = time.monotonic() + timeout
            owners = {id(r.proc): r for r in self.all_runs()}
            while not self._read(self.sel.select(max(end - time.monotonic(), 0.0)), owners):
                if time.monotonic() >= end or interrupted():
                    break
        now = self.clock()
        if self._sample.due(now):
            self._guard_memory()
        poll = self._poll.due(now)
        for run in self.all_runs():
            proc = run.proc
            if poll or not proc.piped or now >= run.deadline:
                proc.poll()  # reap (its exit is read in collect)
            if proc.exit is None and now >= run.deadline:
                proc.kill("timeout")
        self._look_after_idle(now)
        since = now - self._last_sweep
        if since >= 2.0 or (self._sweep_due and since >= 0.25):
            # a walk of the process table costs milliseconds: once per 0.25 s at most,
            # however many workers crashed meanwhile
            self._last_sweep, self._sweep_due = now, False
            self.sweep_orphans()

    def _read(self, events, owners: dict) -> bool:
        """Take the lines *events* announce; True if a batch ended or a worker exited."""
        act, now = False, self.clock()
        for key, _ in events:
            proc = self.fdmap.get(key.fd)
            if proc is None:
                continue
            if key.fd == proc.stdin_fd:
                if proc.flush():
                    self._forget_fd(key.fd)
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
                self.startup = 0.8 * self.startup + 0.2 * (now - proc.started)
        return act

    def _guard_memory(self) -> None:
        runs = self.all_runs()
        rss = sample_all([r.proc for r in runs if r.proc.exit is None])
        limit = self.config.max_rss_mb * 2**20 if self.config.max_rss_mb else None
        for run in runs:
            if limit and rss.get(run.proc.pid, 0) > limit:
                run.proc.kill("memory")

    def _look_after_idle(self, now: float) -> None:
        """An idle worker that dies closes its pipes; the others are polled once a second."""
        check = self._idle_check.due(now)
        for proc in list(self.idle):
            if check or not proc.piped:
                proc.poll()
            if proc.exit is not None:
                self.idle.remove(proc)
                self._close(proc)
                self.mode.spare_died(now)

    def sweep_orphans(self) -> None:
        """Daemonised grandchildren re-parented to qsup (a subreaper) are leaks of
        workers: kill and reap them."""
        if self.adopt_orphans:
            reap_orphans({r.proc.pid for r in self.all_runs()} | {p.pid for p in self.idle})

    # ---------------------------------------------------------------- collect
    def collect(self, now: float, stopping: bool) -> tuple[list[Ended], CanaryEnd | None]:
        """The runs that ended since the last call, and the canary's if it ended."""
        ended: list[Ended] = []
        canary = None
        for run in self.all_runs():
            proc = run.proc
            if proc.exit is None and not run.ended_batch:
                continue
            if proc.exit is not None:
                if not run.canary:
                    self.mode.worker_ended()
                for line in self._close(proc):
                    run.line(line, now)
                self._sweep_due = True  # its daemonised children, if any: soon, not per crash
            if run.canary:
                self.canary = None
                ending, detail = run.ending()
                if ending is Ending.OK and proc.persistent and proc.exit is None and not stopping:
                    self._recycle_or_keep(proc, stopping)  # a worker that just proved itself
                else:
                    self.retire(proc)
                canary = (run, ending, detail)
                continue
            del self.runs[run.batch_id]
            if run.ended_batch and proc.exit is None:
                self._recycle_or_keep(proc, stopping)
            self.stats["ignored_lines"] += run.ignored + proc.lines.overlong
            proc.lines.overlong = 0
            ended.append(run.ended(now))
            proc.stderr_tail = b""
        return ended, canary

    def _recycle_or_keep(self, proc: WorkerProcess, stopping: bool) -> None:
        limit = self.config.recycle_rss_mb
        too_big = limit is not None and proc.sample() > limit * 1024 * 1024
        if proc.batches >= self.config.recycle_batches or too_big or stopping:
            self.retire(proc)  # planned: never counts against a message
            self.mode.worker_ended()
            self.stats["recycled"] += 1
        else:
            self.idle.append(proc)

    # ------------------------------------------------------------------- end
    def retire(self, proc: WorkerProcess, polite: float = 0.0) -> None:
        """End a worker on purpose (recycle, reload, stop, canary) and reap it."""
        end = time.monotonic() + polite
        while polite and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        proc.kill("stopped")
        end = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        self._close(proc)

    def retire_idle(self, polite: float = 0.0) -> None:
        if polite:
            for proc in self.idle:
                proc.terminate()
        for proc in self.idle:
            self.retire(proc, polite=polite)
        self.idle.clear()

    def kill_all(self, wait: float = 5.0) -> None:
        """Kill every run's worker (a planned kill) and wait a while for them to exit."""
        for run in self.all_runs():
            run.proc.kill("stopped")
        deadline = time.monotonic() + wait
        while any(r.proc.poll() is None for r in self.all_runs()) and time.monotonic() < deadline:
            time.sleep(0.01)

    def abandon(self) -> None:
        """Close everything without collecting (the state cannot be written)."""
        for run in self.all_runs():
            self._close(run.proc)
        self.retire_idle()
        self.sel.close()

    def close(self) -> None:
        self.sel.close()

    def _forget_fd(self, fd: int) -> None:
        if self.fdmap.pop(fd, None) is not None:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass

    def _close(self, proc: WorkerProcess) -> list[bytes]:
        for fd in list(proc.fds) + [proc.stdin_fd]:
            self._forget_fd(fd)
        return proc.close()
