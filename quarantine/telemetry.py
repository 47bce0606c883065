"""Counters, rates and the views of a running supervisor: the status snapshot that
``qsup status`` reads and the summary ``drain`` prints. Metrics read from here."""

from __future__ import annotations

import bisect
import os
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from quarantine.policy import Ending
from quarantine.process import peak_rss_of_self

if TYPE_CHECKING:
    from quarantine.breaker import Breaker
    from quarantine.isolation import Isolation
    from quarantine.pool import WorkerPool
    from quarantine.runs import Ended

RATE_WINDOW = 60.0  # seconds of deliveries the throughput is measured over
# upper bounds (seconds) of the batch-duration histogram: a fast scan of a few
# messages up to a batch of 30 at its 30 s per message
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 300.0, 900.0)
SUMMARY_KEYS = ("delivered", "quarantined", "crashes", "unexplained", "strikes", "canary_runs",
                "ignored_lines", "odd_entries", "worker_starts", "tagged", "retests", "retest_passed",
                "retest_crashed")


class Telemetry:
    def __init__(self, clock: Callable[[], float], wall: Callable[[], float], mode: str):
        self.clock, self.wall, self.mode = clock, wall, mode
        self.stats: Counter = Counter()
        self.started = clock()
        self._rates: deque[tuple[float, int]] = deque()  # (time, delivered)
        self.durations = Histogram(DURATION_BUCKETS)
        self.last: dict = {}  # the latest snapshot() (STATUS= and the metrics' gauges read it)

    def ended(self, e: Ended, delivered: int, now: float) -> None:
        """One batch ended: its deliveries, and its duration if it ran (a planned stop
        or a worker that could not start says nothing of how long scans take)."""
        self.delivered(delivered, now)
        if e.outcome.ending not in (Ending.STOPPED, Ending.SPAWN):
            self.durations.observe(e.duration)

    def delivered(self, count: int, now: float) -> None:
        self.stats["delivered"] += count
        self._rates.append((now, count))

    def throughput(self, now: float) -> float:
        while self._rates and self._rates[0][0] < now - RATE_WINDOW:
            self._rates.popleft()
        span = min(RATE_WINDOW, max(now - self.started, 1e-6))
        return round(sum(n for _, n in self._rates) / span, 2)

    def snapshot(self, now: float, *, pool: WorkerPool, isolation: Isolation, depth: int,
                 breaker: Breaker) -> dict:
        """What `qsup status` shows: workers, suspects, depth, breaker, throughput."""
        since_wall = self.wall() - (now - breaker.since) if breaker.is_open else None
        self.last = {
            "pid": os.getpid(), "mode": self.mode, "updated": self.wall(),
            "uptime": round(now - self.started, 1),
            "workers": [{"pid": r.proc.pid, "batch": r.batch_id, "lane": r.batch.lane.value,
                         "size": len(r.batch.ids), "age": round(now - r.started, 1)}
                        for r in pool.runs.values()],
            "canary": bool(pool.canary), "suspects": isolation.suspect_ids,
            "awaiting_canary": len(isolation.candidates), "queue_depth": depth,
            "breaker": dict(breaker.snapshot(), since_wall=since_wall),
            "throughput": self.throughput(now),
            "counters": dict(self.stats),
        }
        return self.last

    def summary(self, breaker: Breaker) -> dict:
        """What `drain` prints when it is done."""
        out = {key: self.stats[key] for key in SUMMARY_KEYS}
        out.update(breaker=breaker.snapshot(), seconds=round(self.clock() - self.started, 2),
                   qsup_peak_rss_mb=round(peak_rss_of_self() / 2**20, 1))
        return out


class Histogram:
    """Observations counted per bucket (the last one unbounded), and their sum. The
    state is one tuple, replaced whole: a reader in another thread (the metrics
    server) sees one consistent state without a lock."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.state: tuple[tuple[int, ...], float] = ((0,) * (len(bounds) + 1), 0.0)

    def observe(self, value: float) -> None:
        counts, total = self.state
        i = bisect.bisect_left(self.bounds, value)  # the first bound >= value: "le"
        self.state = (counts[:i] + (counts[i] + 1,) + counts[i + 1:], total + value)
