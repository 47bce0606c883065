"""Intake: the buffer of waiting messages and the listing of the queue that fills it.

A queue that can list in slices (``pending_steps``) is listed a slice per loop pass,
early enough that the buffer lasts until the listing ends; a listing that would
leave workers idle is finished at once. Memory stays flat however deep the queue:
at most ``REFILL_MAX`` entries are held.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterator, Mapping

from quarantine.config import Config
from quarantine.hookspecs import MessageRef, Queue
from quarantine.ledger import InFlight, Waiting
from quarantine.policy import Batch
from quarantine.ticks import Every

log = logging.getLogger("qsup")
REFILL_MAX = 50_000  # most queue entries held in memory at once
DEPTH_EVERY = 5.0  # seconds a queue depth count is reused


class Intake:
    def __init__(self, queue: Queue, config: Config, held: Mapping[str, str], stats: Counter):
        self.queue, self.held, self.stats = queue, held, stats
        self.buffer: deque[MessageRef] = deque()
        self.buffered: set[str] = set()
        self._listing: Iterator | None = None  # a listing of the queue under way, in slices
        self._steps = getattr(queue, "pending_steps", None)
        self._list = Every(config.poll_interval)
        self._depth = (-math.inf, 0)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self._list.interval = config.poll_interval

    def __bool__(self) -> bool:
        return bool(self.buffer)

    @property
    def listing(self) -> bool:
        """A sliced listing is under way (its next slice is due soon)."""
        return self._listing is not None

    def depth(self, now: float, force: bool = False) -> int:
        """How many messages wait, counted at most every DEPTH_EVERY seconds."""
        if force or now - self._depth[0] > DEPTH_EVERY:
            self._depth = (now, self.queue.depth())
        return self._depth[1]

    def relist(self) -> None:
        """Look at the queue again at the next refill (something was put back)."""
        self._list.soon()

    def refill(self, now: float, force: bool = False) -> None:
        """Keep the buffer filled; with *force*, list now and finish the listing."""
        cap = self.config.workers * self.config.batch_size
        if self._listing is not None:
            self._list_more(finish=force or len(self.buffer) < cap)
            if not (force and not self.buffer):
                return
        if len(self.buffer) >= (cap * 8 if self._steps else cap * 2):
            return
        if self._depth[0] == -math.inf:
            self.depth(now, force=True)
        if not self._list.due(now, force):
            return
        skip = self._skip
        # A deep queue is listed less often: take a larger slice of it each time
        # (bounded, so memory stays flat however deep the queue is).
        want = max(cap * 4, min(REFILL_MAX, self._depth[1] // 2))
        self._listing = self._steps(want, skip) if self._steps else iter([self.queue.pending(want, skip)])
        self._list_more(finish=force or len(self.buffer) < cap)

    def _skip(self, qid: str) -> bool:
        return qid in self.held or qid in self.buffered

    def _list_more(self, finish: bool) -> None:
        """One slice of the listing under way (all of it with *finish*)."""
        for part in self._listing:
            if part is None:
                if finish:
                    continue
                return
            for ref in part:
                if ref.qid not in self.held and ref.qid not in self.buffered:
                    self.buffer.append(ref)
                    self.buffered.add(ref.qid)
            if not finish:
                return
        self._listing = None
        for line in self.queue.reports():
            log.warning("%s", line)
            self.stats["odd_entries"] += 1

    def take(self, n: int) -> Waiting:
        """The next *n* waiting messages as a clean-lane batch."""
        refs = [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]
        for ref in refs:
            self.buffered.discard(ref.qid)
        return Waiting(Batch(ids=tuple(r.qid for r in refs)), {})

    def identify(self, waiting: Waiting, batch_id: str) -> tuple[InFlight, list[str]]:
        """Fingerprint a batch's messages before it starts: the batch without the ones
        gone or replaced, and those (qsup no longer holds them)."""
        batch, known = waiting.batch, waiting.fps
        fps, sizes, keep, gone = {}, {}, [], []
        for qid in batch.ids:
            ident = self.queue.identify(qid)
            if ident is None or (qid in known and known[qid] != ident[1]):
                why = "vanished" if ident is None else "was replaced by a new message"
                log.warning("%s %s while qsup held it; the old content is no longer in the queue", qid, why,
                            extra={"qid": qid})
                self.stats["vanished"] += 1
                gone.append(qid)
                continue
            sizes[qid], fps[qid] = ident
            keep.append(qid)
        kept = Batch(ids=tuple(keep), lane=batch.lane, path=batch.path, hunt=batch.hunt)
        return InFlight(batch_id, kept, fps, sizes), gone

    def close(self) -> None:
        """Let go of a listing under way (a directory handle, for the spool)."""
        listing, self._listing = self._listing, None
        close = getattr(listing, "close", None)  # a generator has one; a plain iterator not
        if close is not None:
            close()
