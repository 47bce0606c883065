"""How a scanner is run: one-shot (a process per batch, paths on its command line)
or persistent (long-lived workers that read batches on stdin). Chosen once, from
the scanner's ``mode``; the pool asks its mode instead of testing a string."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, deque
from typing import Protocol

from quarantine.backoff import respawn_delay
from quarantine.config import Config
from quarantine.policy import Batch, Costs, split_parts
from quarantine.process import SpawnError, WorkerProcess

log = logging.getLogger("qsup")


class WorkerPool(Protocol):
    """What a mode uses of the pool (quarantine.pool.WorkerPool)."""

    config: Config
    stats: Counter
    idle: list[WorkerProcess]
    started: float  # when the pool started (for the spare demand rate)
    startup: float  # seconds a worker takes to say `ready`, a moving average

    def spawn(self, batch_id: str, paths: list[str], now: float) -> WorkerProcess: ...


ARG_SLACK = 16_384  # bytes of ARG_MAX left unused: the kernel's own accounting differs a little


class Timing:
    """How long runs take, fitted as start + n × scan over the batches that passed
    (least squares, recent runs weighing most): what a split costs (policy.Costs).
    Until batches of different sizes have passed, half a batch's time is its start."""

    DECAY = 0.98

    def __init__(self, start: float = 0.5, scan: float = 0.005):
        self.start, self.scan = start, scan
        self._w = self._n = self._d = self._nn = self._nd = 0.0

    def ran(self, n: int, duration: float) -> None:
        if n < 1 or duration <= 0:
            return
        k = self.DECAY
        self._w, self._n, self._d = k * self._w + 1, k * self._n + n, k * self._d + duration
        self._nn, self._nd = k * self._nn + n * n, k * self._nd + n * duration
        mean_n, mean_d = self._n / self._w, self._d / self._w
        var = self._nn / self._w - mean_n ** 2
        if var > 0.25:
            scan = max(0.0, (self._nd / self._w - mean_n * mean_d) / var)
            self.start, self.scan = max(0.0, mean_d - scan * mean_n), scan
        else:
            self.start, self.scan = mean_d / 2, mean_d / 2 / max(mean_n, 1)


class OneShot:
    """A fresh process per batch: every batch pays a start-up, so a crashed batch is
    split into few parts (see :meth:`split`). Its paths are
    its command line, so a batch is never bigger than what the kernel takes
    (ARG_MAX, shared with the environment): the limit is learnt from the paths."""

    persistent = False

    def __init__(self) -> None:
        self.cap: int | None = None  # most paths that fit a command line, once one did not
        self.timing = Timing()  # a run's duration includes its process start

    def batch_limit(self, size: int) -> int:
        return min(size, self.cap) if self.cap else size

    def fits(self, fixed: int, paths: list[str]) -> bool:
        """Whether *paths* fit after *fixed* bytes (environment, command); if not, learn
        how many do."""
        room = os.sysconf("SC_ARG_MAX") - ARG_SLACK - fixed
        need = [len(p.encode()) + 9 for p in paths]  # the string, its NUL, its pointer
        if sum(need) <= room:
            return True
        n = 0
        while n < len(need) and room >= need[n]:
            room -= need[n]
            n += 1
        self.cap = max(1, min(n, self.cap or n))
        log.warning("a batch of %d paths does not fit a command line (ARG_MAX, with the "
                    "environment): batches of at most %d from now on", len(paths), self.cap)
        return False

    def argv(self, command: list[str], paths: list[str]) -> list[str]:
        return command + paths

    def environment(self) -> dict[str, str]:
        return {}

    def split(self, batch: Batch, free: int, clean_waiting: bool, startup: float) -> int:
        """Every run is a process start: fewest runs while the pool is busy (about √n
        groups, then singles), singles at the tail when free workers take them at once."""
        t = self.timing
        start, scan = round(t.start, 2), round(t.scan, 4)  # a few distinct costs: the plans are cached
        costs = Costs(group=start, solo=start, scan=scan, crash=start)
        return split_parts(len(batch.ids), costs, free, clean_waiting)

    def acquire(self, pool: WorkerPool, batch_id: str, paths: list[str], now: float,
                fresh: bool) -> WorkerProcess:
        return pool.spawn(batch_id, paths, now)

    def hand(self, proc: WorkerProcess, batch_id: str, ids: tuple[str, ...], paths: list[str]) -> None:
        """The batch is on its command line already."""

    def keep_spares(self, pool: WorkerPool, now: float) -> None:
        """A one-shot worker cannot be started ahead: its argv is the batch."""

    def worker_ended(self) -> None:
        pass

    def batch_ok(self) -> None:
        pass

    def spare_died(self, now: float) -> None:
        pass


class Persistent:
    """Long-lived workers reused across batches, with spares started ahead so a
    crash or a canary does not wait for a start-up (see :meth:`split` for what a
    blind crash costs)."""

    persistent = True

    def batch_limit(self, size: int) -> int:
        return size

    def fits(self, fixed: int, paths: list[str]) -> bool:
        return True  # batches go on stdin

    def __init__(self) -> None:
        self.fresh_taken: deque[float] = deque()  # when a fresh worker was taken for demand
        self.ended = 0  # workers gone (crash, recycle) and not yet replaced
        self.deaths = 0  # spares that died idle since the last good batch
        self.after = -math.inf  # no spare is started before this time
        self.timing = Timing(start=0.0)  # a warm worker's runs: scanning only

    def argv(self, command: list[str], paths: list[str]) -> list[str]:
        return command

    def environment(self) -> dict[str, str]:
        return {"QSUP_PERSISTENT": "1"}

    def split(self, batch: Batch, free: int, clean_waiting: bool, startup: float) -> int:
        """A crash costs a new worker, and a suspect alone needs a fresh one (contract
        §5.7), while a group runs on a warm worker for little: groups while the pool
        is busy (a few fresh workers, not n), singles at the tail when free workers
        can take them at once."""
        startup = round(startup, 2)  # a few distinct costs: the plans are cached
        costs = Costs(group=0.0, solo=startup, scan=round(self.timing.scan, 4), crash=startup)
        return split_parts(len(batch.ids), costs, free, clean_waiting)

    def acquire(self, pool: WorkerPool, batch_id: str, paths: list[str], now: float,
                fresh: bool) -> WorkerProcess:
        """Warm workers first; a spare (never used) when a fresh one is wanted; among
        spares, one that has finished starting up."""
        if pool.idle:
            best = min(pool.idle, key=lambda p: ((p.batches == 0) != fresh, not p.ready))
            if not fresh or best.batches == 0:
                pool.idle.remove(best)
                if best.batches == 0:
                    self._took_fresh(now, fresh)
                    pool.stats["spares_taken" if best.ready else "spares_taken_starting"] += 1
                return best
        self._took_fresh(now, fresh)
        pool.stats["started_on_demand"] += 1
        return pool.spawn(batch_id, paths, now)

    def hand(self, proc: WorkerProcess, batch_id: str, ids: tuple[str, ...], paths: list[str]) -> None:
        lines = [f"batch {batch_id} {len(paths)}\n"] + [f"{q} {p}\n" for q, p in zip(ids, paths)]
        proc.batches += 1
        proc.send("".join(lines))  # a dead worker shows up as an exit in the loop

    def _took_fresh(self, now: float, fresh: bool) -> None:
        """Count what spares are for: a canary or a suspect alone (they need a fresh
        worker), or a worker replacing one that ended. The first start of the pool is
        not demand that recurs: counted, it made the first crash start a spare for
        every worker at once."""
        if fresh:
            self.fresh_taken.append(now)
        elif self.ended:
            self.ended -= 1
            self.fresh_taken.append(now)

    def wanted(self, pool: WorkerPool, now: float) -> int:
        """Enough spares to cover what crashes and canaries take during one start-up
        (both measured over the last minute), and at least a quarter of the workers
        plus one; never more than the workers."""
        while self.fresh_taken and self.fresh_taken[0] < now - 60:
            self.fresh_taken.popleft()
        span = min(60.0, max(now - pool.started, 1.0))
        rate = len(self.fresh_taken) / span
        workers = pool.config.workers
        base = max(1, workers // 4) + 1
        return max(base, min(workers, math.ceil(rate * pool.startup * 1.5) + 1))

    def keep_spares(self, pool: WorkerPool, now: float) -> None:
        """Keep `spare_workers` fresh workers started ahead, backing off when they die
        on their own (a broken environment must not spin)."""
        if now < self.after:
            return
        wanted = pool.config.spare_workers
        if wanted is None:
            wanted = self.wanted(pool, now)
        while sum(1 for p in pool.idle if p.batches == 0) < wanted:
            try:
                pool.idle.append(pool.spawn("spare", [], now))
            except SpawnError:
                self.spare_died(now)
                return

    def worker_ended(self) -> None:
        self.ended += 1

    def batch_ok(self) -> None:
        self.deaths = 0

    def spare_died(self, now: float) -> None:
        """A worker died without a batch: do not start another at once."""
        self.deaths += 1
        self.after = now + respawn_delay(self.deaths)


def mode_for(scanner_mode: str) -> OneShot | Persistent:
    return Persistent() if scanner_mode == "persistent" else OneShot()
