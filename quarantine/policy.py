"""The isolation policy: what to run next after a batch ends.

Pure functions over plain data — no I/O, no clock, no processes. The supervisor
acts on the decisions; the tests drive this module with hypothesis.

A message's life, on one screen::

    QUEUED ──dispatch──▶ IN_FLIGHT ──batch ok──────────────────▶ DELIVERED
       ▲                   │
       │ not begun,        │ batch crashed
       │ planned stop      ▼
       └──────────────── SUSPECT ──solo ok───────────────────▶ DELIVERED
                           │  ▲
                  solo crash│  │ strike < K: run alone again
                           ▼  │
                         STRUCK ──strike K, canary passes──▶ QUARANTINED
                                                                 │ release
                                            QUEUED ◀─────────────┘

The states are not kept as values: a message's state is where qsup holds it (the
intake's buffer, a run of the pool, isolation's suspects and candidates, a
quarantine record), and each arrow is one of the decisions below.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Ending(StrEnum):
    """How a worker run ended."""

    OK = "ok"  # exit 0: every message handled
    EXIT = "exit"  # non-zero exit status
    SIGNAL = "signal"  # died of a signal it brought on itself (SIGSEGV, SIGABRT, …)
    KILLED = "killed"  # SIGKILL that qsup did not send: most likely the kernel's OOM killer
    TIMEOUT = "timeout"  # deadline passed; qsup killed the process group
    MEMORY = "memory"  # RSS limit passed; qsup killed the process group
    LOST = "lost"  # in flight when a previous qsup died; found on restart
    STOPPED = "stopped"  # planned kill (operator stop, reload): never counts
    SPAWN = "spawn"  # could not start: the environment's fault, never the message's


CRASHES = frozenset(
    {Ending.EXIT, Ending.SIGNAL, Ending.KILLED, Ending.TIMEOUT, Ending.MEMORY, Ending.LOST}
)
# Endings that say something about a message only when observed, never when inferred.
STRIKING = CRASHES - {Ending.LOST}


class Lane(StrEnum):
    CLEAN = "clean"
    SUSPECT = "suspect"


@dataclass(frozen=True)
class Batch:
    ids: tuple[str, ...]
    lane: Lane = Lane.CLEAN
    path: tuple[str, ...] = ()  # how bisection reached this batch, e.g. ("30", "15", "8")
    hunt: str | None = None  # the crashed batch this one was split from


@dataclass(frozen=True)
class Outcome:
    ending: Ending
    begun: tuple[str, ...] = ()  # IDs with a `begin` line, in order
    done: frozenset[str] = frozenset()  # IDs with a `done` line
    fresh: bool = True  # the worker process had scanned nothing before this batch

    @property
    def has_progress(self) -> bool:
        return bool(self.begun or self.done)


@dataclass(frozen=True)
class Decision:
    deliver: tuple[str, ...] = ()  # handled: move on
    requeue: tuple[str, ...] = ()  # back to the normal queue with nothing against them
    retry: tuple[Batch, ...] = ()  # new suspect-lane batches
    strike: tuple[str, ...] = ()  # crashed alone (or blamed by progress lines)
    quarantine: tuple[str, ...] = ()  # reached K strikes: quarantine once the canary agrees
    systemic: bool = False  # the environment failed: open the breaker


def chunks(ids: tuple[str, ...], parts: int) -> list[tuple[str, ...]]:
    """*ids* in *parts* runs of near-equal length, in order (larger ones first)."""
    parts = max(1, min(parts, len(ids)))
    size, extra = divmod(len(ids), parts)
    out, at = [], 0
    for i in range(parts):
        n = size + (i < extra)
        out.append(ids[at:at + n])
        at += n
    return out


def bisect(batch: Batch, ids: tuple[str, ...], hunt: str, parts: int = 2) -> tuple[Batch, ...]:
    """Split the crashed IDs into *parts* suspect batches (two by default: halves;
    as many as there are IDs: every one alone)."""
    path = batch.path or (str(len(batch.ids)),)
    return tuple(
        Batch(ids=p, lane=Lane.SUSPECT, path=path + (str(len(p)),), hunt=hunt)
        for p in chunks(ids, max(2, parts))
    )


def isolated(qid: str, batch: Batch, outcome: Outcome) -> bool:
    """Whether *qid* crashed alone in a fresh process: the batch was only it, or it
    was the first message the process began. Anything the process scanned before
    (a warm persistent worker, earlier messages of the batch) may have corrupted it
    or leaked into it: such a crash is a strike, never the one that quarantines."""
    if not outcome.fresh:
        return False
    return batch.ids == (qid,) or (bool(outcome.begun) and outcome.begun[0] == qid)


def _strike(qid: str, batch: Batch, outcome: Outcome, strikes: Mapping[str, int], k: int) -> Decision:
    """A strike for one message: quarantine at K if it crashed in isolation, else run
    it alone (in a fresh process) again. With K = 1 the first crash quarantines
    wherever it happened: the operator asked for one crash to be enough, and the
    crash bound (K with progress lines) holds."""
    if strikes.get(qid, 0) + 1 >= k and (k == 1 or isolated(qid, batch, outcome)):
        return Decision(strike=(qid,), quarantine=(qid,))
    path = batch.path or (str(len(batch.ids)),)
    solo = Batch(ids=(qid,), lane=Lane.SUSPECT, path=path + ("1",) if path[-1] != "1" else path)
    return Decision(strike=(qid,), retry=(solo,))


def merge(*parts: Decision) -> Decision:
    return Decision(
        deliver=sum((p.deliver for p in parts), ()),
        requeue=sum((p.requeue for p in parts), ()),
        retry=sum((p.retry for p in parts), ()),
        strike=sum((p.strike for p in parts), ()),
        quarantine=sum((p.quarantine for p in parts), ()),
        systemic=any(p.systemic for p in parts),
    )


def decide(
    batch: Batch, outcome: Outcome, strikes: Mapping[str, int], k: int, hunt: str,
    split: int = 2,
) -> Decision:
    """What to do with every ID of *batch* after it ended with *outcome*.

    *strikes* are the strikes each ID already has; *k* is how many make a quarantine;
    *hunt* names this batch if it has to be split, and *split* into how many parts
    (2: bisection, at most ⌈log₂ n⌉ + k crashes per poison message; n: every
    suspect alone, at most 1 + k, for workers whose crash costs more than a batch).
    Every ID of the batch appears in exactly one of deliver, requeue, retry or
    quarantine.
    """
    ids = batch.ids
    done = tuple(i for i in ids if i in outcome.done)
    rest = tuple(i for i in ids if i not in outcome.done)
    if outcome.ending is Ending.OK:
        return Decision(deliver=ids)
    if outcome.ending in (Ending.STOPPED, Ending.SPAWN):
        # Not the messages' doing: clean traffic goes back to the queue, suspects
        # stay suspects, exactly as they were.
        systemic = outcome.ending is Ending.SPAWN
        if batch.lane is Lane.SUSPECT and rest:
            again = Batch(ids=rest, lane=Lane.SUSPECT, path=batch.path, hunt=batch.hunt)
            return Decision(deliver=done, retry=(again,), systemic=systemic)
        return Decision(deliver=done, requeue=rest, systemic=systemic)
    if not rest:
        return Decision(deliver=done)
    handled = Decision(deliver=done)
    pending = [i for i in outcome.begun if i in rest]
    pending = list(dict.fromkeys(pending))
    if outcome.ending in STRIKING and len(pending) == 1:
        # Progress lines name the message that was being scanned: it alone is blamed,
        # the ones never begun go back to the normal queue untouched.
        culprit = pending[0]
        not_begun = tuple(i for i in rest if i != culprit)
        return merge(handled, Decision(requeue=not_begun), _strike(culprit, batch, outcome, strikes, k))
    if len(rest) == 1 and outcome.ending in STRIKING:
        return merge(handled, _strike(rest[0], batch, outcome, strikes, k))
    if pending:
        # Several begun and unfinished (a parallel scanner): hunt among those only.
        not_begun = tuple(i for i in rest if i not in pending)
        return merge(
            handled, Decision(requeue=not_begun, retry=bisect(batch, tuple(pending), hunt, split))
        )
    return merge(handled, Decision(retry=bisect(batch, rest, hunt, split)))


@dataclass(frozen=True)
class Costs:
    """What the runs of a hunt cost, in seconds (the pool's measures, see modes.py)."""

    group: float = 0.5  # to start a run of several (one-shot: a process; persistent: ~0, a warm worker)
    solo: float = 0.5  # to start a run alone: always a fresh process (contract §5.7)
    scan: float = 0.005  # per message scanned
    crash: float = 0.5  # a crash beyond its run: a replacement worker, evidence against the environment


def _options(m: int, free: int) -> set[int]:
    return {p for p in (2, 3, math.isqrt(m - 1) + 1, free, m) if 2 <= p <= m}


def _run(size: int, c: Costs) -> float:
    return (c.solo if size == 1 else c.group) + size * c.scan


@functools.lru_cache(maxsize=4096)
def _plan(m: int, c: Costs, free: int, tail: bool) -> tuple[tuple[float, float], int]:
    """((cost, tie-break), parts) of the cheapest hunt for one poison among *m* suspects:
    worker-seconds while clean traffic waits (every run takes a worker from it), the
    time to isolate the poison at the tail (the workers are free: only waiting counts,
    ⌈parts / free⌉ rounds of runs), each with the other as the tie-break."""
    if m <= 1:
        return (0.0, 0.0), 1
    best = None
    for p in sorted(_options(m, free)):
        size, extra = divmod(m, p)  # as chunks() cuts: *extra* parts of size + 1, the rest of size
        largest = size + (extra > 0)
        work = sum(_run(size + (i < extra), c) for i in range(p)) + c.crash
        wait = -(-p // max(1, free)) * (_run(largest, c) + c.crash)
        (below_a, below_b), _ = _plan(largest, c, free, tail)
        key = (wait, work) if tail else (work, wait)
        score = (key[0] + below_a, key[1] + below_b)
        if best is None or score < best[0]:
            best = (score, p)
    return best


def split_parts(n: int, costs: Costs, free: int, clean_waiting: bool) -> int:
    """How many parts a crashed batch of *n* suspects splits into (at least 2, at most
    n). While clean traffic waits, the split that spends the fewest worker-seconds:
    about √n groups (then singles) when a run's start dwarfs a crash's extra cost,
    halves when starts are dear and batches large; at the tail, with workers free,
    the one that isolates the poison soonest: singles when the free workers can run
    them at once. Every part has at most ⌈n/2⌉ suspects, so a poison message crashes
    at most ⌈log₂ n⌉ times before it runs alone, whatever is chosen (contract §5.5)."""
    if n <= 2:
        return 2
    return _plan(n, costs, max(1, free), not clean_waiting)[1]


def suspect_slots(total_workers: int, clean_waiting: bool) -> int:
    """How many workers may serve the suspect lane: half (at least one) while clean
    traffic waits, so the queue keeps flowing while poison is hunted; suspects go
    first within it, since a hunt is a chain of runs and clean batches are not."""
    if not clean_waiting:
        return total_workers
    return max(1, total_workers // 2)


@dataclass
class Hunts:
    """Tracks split batches so a crash that no half reproduces is recorded as
    unexplained instead of being chased forever."""

    open: dict[str, list] = field(default_factory=dict)  # hunt -> [halves left, crashed?, ids]

    def start(self, hunt: str, decision: Decision, ids: tuple[str, ...]) -> None:
        children = [b for b in decision.retry if b.hunt == hunt]
        if children:
            self.open[hunt] = [len(children), False, ids]

    def finish(self, batch: Batch, crashed: bool) -> tuple[str, ...] | None:
        """Note that a half ended; return the hunt's IDs if no half crashed."""
        entry = self.open.get(batch.hunt) if batch.hunt else None
        if entry is None:
            return None
        entry[0] -= 1
        entry[1] = entry[1] or crashed
        if entry[0] > 0:
            return None
        del self.open[batch.hunt]
        return None if entry[1] else entry[2]
