"""Counters, rates and the views of a running supervisor: the status snapshot that
``qsup status`` reads and the summary ``drain`` prints. Metrics read from here."""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from quarantine.process import peak_rss_of_self

if TYPE_CHECKING:
    from quarantine.breaker import Breaker
    from quarantine.isolation import Isolation
    from quarantine.pool import WorkerPool

RATE_WINDOW = 60.0  # seconds of deliveries the throughput is measured over
SUMMARY_KEYS = ("delivered", "quarantined", "crashes", "unexplained", "strikes", "canary_runs",
                "ignored_lines", "odd_entries", "worker_starts")


class Telemetry:
    def __init__(self, clock: Callable[[], float], wall: Callable[[], float], mode: str):
        self.clock, self.wall, self.mode = clock, wall, mode
        self.stats: Counter = Counter()
        self.started = clock()
        self._rates: deque[tuple[float, int]] = deque()  # (time, delivered)
        self.last: dict = {}  # the latest snapshot() (systemd's STATUS= reads it)

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
