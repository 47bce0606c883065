"""Is the environment sound? The breaker and the evidence that says so.

A quarantine needs proof that the environment worked after the message crashed:
a canary that passed, or a fresh worker's clean batch started after the crash.
A canary that dies, or a worker that cannot start, opens the breaker instead, and
the candidates' last strikes are forgiven. This module decides; it answers with a
:class:`Proof` that the supervisor acts on (quarantine, forgive), and does no I/O
beyond its log lines and the breaker events.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass

from quarantine.breaker import Breaker
from quarantine.config import Config
from quarantine.events import Events
from quarantine.policy import Ending
from quarantine.runs import detail_text

log = logging.getLogger("qsup")
CANARY_WAIT = 1.0  # how long candidates wait for other proof before a canary runs


class CrashRate:
    """The crashes the environment alone explains, over the last *window* seconds,
    per message scanned and per run. Scans are messages handled and canaries passed;
    runs are batches that scanned everything, canaries, and the crashed runs counted;
    crashes are failed canaries, hunts no part of which crashed, and strikes of
    messages that then passed alone.

    Both rates matter: a scanner that fails on some messages whatever they are
    crashes per message, one that dies in some runs whatever they read crashes per
    run (one crash in a run of 200 messages is a low rate per message, a high one
    for a message run alone). :meth:`chance` bounds, under either, the chance that
    the environment alone gave *s* solo crashes to any message seen in the window."""

    def __init__(self, window: float = 3600.0):
        self.window = window
        self._events: deque[tuple[float, int, int, int]] = deque()  # (time, scans, runs, crashes)
        self.scans = self.runs = self.crashes = 0

    def add(self, now: float, scans: int = 0, crashes: int = 0, runs: int = 0) -> None:
        if scans or crashes or runs:
            self._events.append((now, scans, runs, crashes))
            self.scans += scans
            self.runs += runs
            self.crashes += crashes

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            _, scans, runs, crashes = self._events.popleft()
            self.scans -= scans
            self.runs -= runs
            self.crashes -= crashes

    def estimate(self, now: float) -> float:
        """The rate per message scanned, with a tenth of a crash added so that no
        evidence is no proof."""
        self._expire(now)
        return min(1.0, (self.crashes + 0.1) / (self.scans + 1))

    def per_run(self, now: float) -> float:
        """The rate per run, as :meth:`estimate` is per message."""
        self._expire(now)
        return min(1.0, (self.crashes + 0.1) / (self.runs + 1))

    def chance(self, now: float, solo_crashes: int) -> float:
        """At most the chance that *solo_crashes* crashes of one message, of all those
        seen, are the environment's doing (a Bonferroni bound over the messages, or
        the runs, that could each have been struck by luck)."""
        per_message = max(1, self.scans) * self.estimate(now) ** solo_crashes
        per_run = max(1, self.runs) * self.per_run(now) ** solo_crashes
        return min(1.0, max(per_message, per_run))


@dataclass(frozen=True)
class Proof:
    """What an observation of the environment means for the candidates."""

    confirm_before: float | None = None  # candidates that crashed at or before this go
    forgive: bool = False  # the environment failed: candidates' last strike does not count


NOTHING = Proof()


class Environment:
    def __init__(self, config: Config, events: Events, stats: Counter):
        self.events, self.stats = events, stats
        self.breaker = Breaker(config.storm_limit, config.storm_window)
        self.last_pass = -math.inf  # when the last canary (or proof as good) started
        self.passed_by: dict = {}  # what that was: the evidence a quarantine names
        self.failed_while_open = False  # a canary or a start failed since it last closed
        self.streak = 0  # batches crashed in a row with no success between
        self.streak_started = -math.inf
        self._said = False
        self.stalled = 0.0  # seconds the breaker was open since a message last went through
        self._looked = None
        self.rate = CrashRate()
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.breaker.storm_limit, self.breaker.storm_window = config.storm_limit, config.storm_window

    @property
    def is_open(self) -> bool:
        return self.breaker.is_open

    # ------------------------------------------------------------ evidence
    def batch_ended(self, ending: Ending, crashed: bool, now: float) -> None:
        if ending is Ending.OK:
            self.streak = 0
        elif crashed:
            if self.streak == 0:
                self.streak_started = now
            self.streak += 1

    def scanned(self, now: float, scans: int, crashes: int = 0, runs: int = 0) -> None:
        """Messages handled, crashes that were the environment's doing, and the runs
        they were seen in."""
        self.rate.add(now, scans, crashes, runs)
        if scans:
            self.stalled = 0.0  # progress

    def crash_rate(self, now: float) -> float:
        return self.rate.estimate(now)

    def healthy(self, started: float, batch: str = "", pid: int | None = None) -> None:
        """A fresh worker (its first batch) given a batch at *started* scanned all of
        it: what a canary passing then shows, that the environment works."""
        if started > self.last_pass and not self.breaker.is_open:
            self.last_pass = started
            self.passed_by = {"by": "a fresh worker's clean batch", "run": batch, "pid": pid,
                              "started": started}

    def proof_of(self, before: float, now: float) -> dict:
        """What passed at *before* (a Proof's confirm_before), for a quarantine's record:
        which run, on which worker, how long before *now*."""
        if self.passed_by.get("started") != before:
            return {}
        return {k: v for k, v in self.passed_by.items() if k != "started"} | {
            "seconds_before": round(now - before, 3)}

    def canary_due(self, now: float, oldest_crash: float | None, flowing: bool) -> bool:
        """Candidates wait for a canary, or for a fresh worker's good batch (the same
        proof, for free) while traffic flows; when every run dies, ask early."""
        if self.breaker.is_open:
            return self.breaker.probe_due(now)
        streak = self.streak >= max(3, self.config.workers)
        waited = now - oldest_crash if oldest_crash is not None else 0.0
        return (oldest_crash is not None and (waited >= CANARY_WAIT or not flowing)) or (
            streak and self.streak_started > self.last_pass)

    def canary_ended(self, started: float, ending: Ending, detail: dict, now: float,
                     run: str = "") -> Proof:
        if ending is Ending.STOPPED or (self.breaker.is_open and started < self.breaker.since):
            # a planned kill (stop, reload) says nothing about the environment; one that
            # began before the breaker opened proves nothing about why it opened
            self.stats["canary_inconclusive"] += 1
            return NOTHING
        if ending is not Ending.OK:
            self.rate.add(now, crashes=1, runs=1)
            return self.canary_failed(f"{ending.value}{detail_text(detail)}", now)
        self.stats["canary_passes"] += 1
        self.rate.add(now, scans=1, runs=1)
        self.last_pass = started
        self.passed_by = {"by": "canary", "run": run, "pid": detail.get("pid"), "started": started}
        forgive = False
        if self.breaker.is_open:
            log.warning("breaker closed: the canary passed again after %.0fs (%s)",
                        now - self.breaker.since, self.breaker.reason)
            self.breaker.probe_passed(now)
            self._said = False
            self.events.breaker(state="closed", reason="canary passed")
            # The environment failed (a canary, a worker that could not start) while
            # it was open: candidates that crashed since crashed in a broken
            # environment, and their last strike does not count.
            forgive, self.failed_while_open = self.failed_while_open, False
        return Proof(confirm_before=started, forgive=forgive)

    def canary_failed(self, why: str, now: float) -> Proof:
        self.stats["canary_failures"] += 1
        self.failed_while_open = True
        if self.breaker.is_open:
            self.breaker.probe_failed(now)
        elif self.breaker.trip(f"the canary failed too ({why}): the environment is at fault", now):
            self._announce()
        return Proof(forgive=True)

    def cannot_start(self, why: str, said: str, now: float) -> Proof:
        """A worker could not start (or died before reading anything)."""
        self.failed_while_open = True
        if self.breaker.trip(f"worker cannot start: {why}" + (f"; it said: {said[:200]}" if said else ""), now):
            self._announce()
        return Proof(forgive=True)

    def solo_crash(self, key: str, now: float) -> None:
        """A distinct message crashed alone: too many in a window is a storm."""
        if self.breaker.solo_crash(key, now):
            cfg = self.config
            if self.breaker.storm(f"storm: more than {cfg.storm_limit} distinct messages crashed "
                                  f"alone within {cfg.storm_window:.0f}s", now):
                self._announce()

    def gave_up(self, now: float) -> bool:
        """Drain: the breaker has kept it from progress (open, or reopening after every
        probe) for longer than max_wait in total. Called once a pass."""
        if self._looked is not None and self.breaker.is_open:
            self.stalled += now - self._looked
        self._looked = now
        if not self.breaker.is_open or self.stalled < self.config.max_wait:
            return False
        log.error("breaker open for %.0fs in all since a message last went through (%s): giving "
                  "up; nothing was quarantined because of it", self.stalled, self.breaker.reason)
        return True

    def _announce(self) -> None:
        if not self._said:
            self._said = True
            log.error("breaker open: %s — nothing is quarantined or dispatched; probing with the "
                      "canary", self.breaker.reason)
            self.events.breaker(state="open", reason=self.breaker.reason)
