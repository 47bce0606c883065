"""Scanner identity and re-test (docs/reference.md §9): poison is a property of a
message and a scanner version.

The identity is read at start, on reload, every ``retest_check`` seconds in ``run``
and on ``qsup retest``: from ``scanner_version`` (a command, its first line of
output), else from the scanner (``identity()``: clamd's ``VERSION``), else its name.
Every attempt and quarantine record names it. When poison was quarantined under
another identity, a canary first passes under the new one (a broken update opens the
breaker and re-tests nothing); then those messages run alone in a fresh worker from
the quarantine, oldest first, at most ``retest_rate`` a minute, one at a time beside
the traffic: one that passes is delivered through the queue ("released by re-test:
A → B"); one that crashes stays, the attempt added to its history. Verdict
quarantines (infected, spam) are never re-tested. Nothing is written before a
re-test ends, so a ``kill -9`` makes it run at most once more.
"""

from __future__ import annotations

import logging
import math
import shlex
import subprocess
from collections import Counter

from quarantine import journal, moves
from quarantine.ledger import History
from quarantine.policy import Batch, Ending, Lane
from quarantine.process import SpawnError
from quarantine.runs import Ended, detail_text
from quarantine.store import Store

log = logging.getLogger("qsup")
PREFIX = "retest-"  # the batch IDs of re-test runs
_VERSION_TIMEOUT = 5.0


def read_identity(config, scanner) -> str | None:
    """The scanner's identity now, or None if it cannot be read (said, once per call)."""
    if config.scanner_version:
        try:
            cp = subprocess.run(shlex.split(config.scanner_version), capture_output=True,
                                timeout=_VERSION_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            log.warning("scanner_version: cannot run %r: %s", config.scanner_version, exc)
            return None
        line = next((ln.strip() for ln in cp.stdout.decode("utf-8", "replace").splitlines() if ln.strip()), "")
        if cp.returncode != 0 or not line:
            log.warning("scanner_version %r: exit %d, no version printed", config.scanner_version,
                        cp.returncode)
            return None
        return line[:200]
    ident = getattr(scanner, "identity", None)
    if ident is not None:
        try:
            found = ident()
        except Exception as exc:  # a plugin's reading failing must not stop the mail
            log.warning("cannot read the %s scanner's identity: %s", scanner.name, exc)
            return None
        if found:
            return str(found)[:200]
    return scanner.name


def retestable(rec: dict, identity: str) -> bool:
    """A poison record quarantined under another identity, not re-tested under this one."""
    return (rec.get("kind") or "poison") == "poison" and rec.get("state") == "quarantined" \
        and rec.get("scanner", "") != identity and rec.get("retested_under") != identity


class Retester:
    def __init__(self, config, store: Store, queue, stats: Counter, identity: str, now: float,
                 outbox=None):
        self.config, self.store, self.queue, self.stats = config, store, queue, stats
        self.outbox = outbox  # the operator's digest names what a re-test released
        self.identity, self.since = identity, now  # since: when this identity was first seen
        self.previous = ""  # the identity before the last change seen
        self.running: dict | None = None  # the record being re-tested
        self.next_at = -math.inf
        self._pending: list[dict] | None = None  # records to re-test, oldest first; None: look
        self._said_unsupported = False

    def configure(self, config) -> None:
        self.config = config

    def observe(self, identity: str | None, now: float) -> bool:
        """A reading of the identity; True if it changed."""
        if identity is None or identity == self.identity:
            return False
        log.warning("the scanner changed from %s to %s: the canary runs under it first, then what "
                    "was quarantined under another scanner is re-tested", self.identity, identity)
        self.previous = self.identity
        self.identity, self.since, self._pending = identity, now, None
        return True

    def pending(self) -> list[dict]:
        if self._pending is None:
            if self.config.retest == "off" or not hasattr(self.queue, "quarantine_path"):
                self._pending = []
            else:
                with self.store.read() as r:
                    found = [rec for _, rec in r.items("quarantine") if retestable(rec, self.identity)]
                self._pending = sorted(found, key=lambda rec: rec.get("when") or 0)
        return self._pending

    def wants_canary(self, last_pass: float) -> bool:
        """Re-tests wait for a canary passed under this identity."""
        return self.running is None and last_pass < self.since and bool(self.pending())

    @property
    def busy(self) -> bool:
        """Re-tests in flight or waiting (drain finishes only after them)."""
        return self.running is not None or bool(self.pending())

    def next(self, now: float, last_pass: float, is_open: bool) -> dict | None:
        """The record to re-test now, if any: one at a time, retest_rate a minute."""
        if self.running is not None or is_open or last_pass < self.since or now < self.next_at:
            return None
        pending = self.pending()
        if not pending:
            return None
        self.running = pending.pop(0)
        self.next_at = now + 60.0 / self.config.retest_rate
        return self.running

    # ------------------------------------------------------------ the lane
    def launch(self, pool, env, judge, batch_id: str, now: float) -> None:
        """Start the next re-test due: alone, in a fresh worker, on the quarantined
        file, beside the traffic. A worker that cannot start is the environment's
        failure, as for any batch."""
        rec = self.next(now, env.last_pass, env.is_open)
        if rec is None:
            return
        qid = rec["qid"]
        batch = Batch(ids=(qid,), lane=Lane.SUSPECT, path=("retest",))
        try:
            pool.launch(PREFIX + batch_id, batch, {qid: rec["fp"]}, {qid: rec.get("size", 0)},
                        [self.path(rec)], now)
        except SpawnError as exc:
            self.give_back(rec)
            self.stats["spawn_failures"] += 1
            judge.act(env.cannot_start(str(exc), "", now), now)
            return
        self.stats["retests"] += 1
        log.info("re-testing %s alone under %s (quarantined under %s)", qid, self.identity,
                 rec.get("scanner") or "?", extra={"qid": qid})

    def collect(self, ended: list[Ended], wall: float) -> list[Ended]:
        """Take the re-test runs out of *ended* (and act on them); the rest go on."""
        rest = []
        for e in ended:
            if e.batch_id.startswith(PREFIX):
                self.ended(e, wall)
            else:
                rest.append(e)
        return rest

    def answer(self, before: str) -> str:
        """What ``qsup retest`` is told, once the identity was read again."""
        waiting = len(self.pending())
        if self.identity != before:
            return f"qsup: the scanner changed from {before} to {self.identity}: {waiting} to re-test"
        return f"qsup: the scanner is still {before}: {waiting} quarantined message(s) to re-test"

    def give_back(self, rec: dict) -> None:
        """A re-test that could not start: first in line again."""
        self.running = None
        self.pending().insert(0, rec)

    def path(self, rec: dict) -> str:
        return self.queue.quarantine_path(rec.get("name", rec["qid"]))

    def ended(self, e: Ended, wall: float) -> None:
        """A re-test run ended: deliver what passed, keep (with the attempt) what did not."""
        rec, self.running = self.running, None
        if rec is None:
            return
        ending = e.outcome.ending
        if ending is Ending.STOPPED or ending is Ending.SPAWN:
            return  # says nothing of the message: re-tested later
        old = rec.get("scanner", "") or "?"
        if ending is Ending.OK:
            self._released(rec, old, wall)
        else:
            self._stays(rec, e, wall)

    def _released(self, rec: dict, old: str, wall: float) -> None:
        note = f"released by re-test: {old} → {self.identity}"
        mv = self.queue.plan(rec["qid"], rec["fp"], "outgoing", origin="quarantine",
                             source=rec.get("name", rec["qid"]))
        result = moves.move(self.store, self.queue, f"retest/{rec['key']}", [mv], wall)[0]
        if result == "gone":
            log.warning("%s passed its re-test but its quarantined file is gone; its record stays",
                        rec["qid"], extra={"qid": rec["qid"]})
            return
        with self.store.write() as w:
            journal.Journal.operator(w, wall, "released", rec, note)
            if self.outbox is not None:
                self.outbox.released(w, wall, rec, note)
        self.stats["retest_passed"] += 1
        self.stats["released"] += 1
        log.warning("%s %s (delivered)", rec["qid"], note, extra={"qid": rec["qid"]})

    def _stays(self, rec: dict, e: Ended, wall: float) -> None:
        fp = rec["fp"]
        attempt = {"batch": e.batch_id, "size": 1, "ending": e.outcome.ending.value,
                   "duration": round(e.duration, 3), "when": wall, "path": ["retest"],
                   "scanner": self.identity, "stderr": e.stderr[-600:].decode("utf-8", "replace"),
                   **e.detail}
        with self.store.write() as w:
            hist = History.load(w, rec["qid"], fp)
            hist.attempt(attempt, False, self.config.history)
            hist.save(w)
            current = w.get("quarantine", rec["key"])
            if current is not None:
                w.put("quarantine", rec["key"], dict(current, retested_under=self.identity))
        self.stats["retest_crashed"] += 1
        log.info("%s still crashes under %s (%s%s): it stays in the quarantine", rec["qid"],
                 self.identity, e.outcome.ending.value, detail_text(e.detail), extra={"qid": rec["qid"]})
