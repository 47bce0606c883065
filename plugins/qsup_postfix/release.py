"""The Postfix queue's releases from hold: a pass's deliveries in one ``postsuper -H
- hold`` (each release checked: one still on hold is an error for that ID, never
taken for done) and one queue-manager kick, and the warning for mail held so long
that a failed first delivery bounces it. A part of
:class:`qsup_postfix.queue.PostfixQueue`, kept in a room of its own."""

from __future__ import annotations

import logging
import os
import time

from qsup_postfix.commands import PostfixError
from quarantine.hookspecs import Move
from quarantine.ids import is_queue_id

log = logging.getLogger("qsup.postfix")


class Releases:
    """Mixed into PostfixQueue: uses its postfix, reinjector, lifetime and hold-queue
    helpers."""

    def apply_all(self, moves: list[Move]) -> list[str]:
        """:meth:`apply` for each move, the releases from hold made together: one
        ``postsuper -H - hold`` and one queue-manager kick for the lot (each a process,
        where one of each per message would cost more than the scan). Idempotent like
        :meth:`apply`: a replay finds the released ones gone from hold ("already")."""
        results: list[str | None] = [None] * len(moves)
        batch: dict[str, tuple[int, float | None]] = {}  # queue ID -> (index, arrival)
        kick = False
        for i, move in enumerate(moves):
            if not self._batchable(move):
                results[i] = self.apply(move)
                continue
            ident = self.identify(move.qid)
            if ident is None:
                results[i], kick = "already", True  # released before a restart: kick again
            elif ident[1] != move.fp or move.qid in batch:
                results[i] = "already"  # a new message reusing the ID: never released unscanned
            else:
                batch[move.qid] = (i, self._arrival(move.qid))
        for qid, result in self._release_many(moves, batch).items():
            results[batch[qid][0]] = result
        if kick or batch:
            self.postfix.kick()
        return results

    def _batchable(self, move: Move) -> bool:
        names = (move.qid, move.name) + ((move.source,) if move.source else ())
        plain = move.origin == "incoming" and move.dest == "outgoing" and not (move.tag and self.reinjector)
        return plain and all(is_queue_id(n) for n in names)

    def _arrival(self, qid: str) -> float | None:
        path = self._path(qid)
        try:
            return os.stat(path).st_mtime if path else None
        except OSError:
            return None

    def _release_many(self, moves: list[Move], batch: dict[str, tuple[int, float | None]]) -> dict[str, str]:
        """Release the batch from hold: queue ID -> result. One that Postfix did not
        release and that is still on hold is an error (nothing is taken for done)."""
        if not batch:
            return {}
        try:
            released = self.postfix.release_many(list(batch))
        except PostfixError as exc:  # it may have released some before it stopped
            stuck = self._still_held(moves, batch, set())
            raise PostfixError(f"{exc}; still on hold: {', '.join(stuck[:10]) or 'none'}") from None
        stuck = self._still_held(moves, batch, released)
        if stuck:
            raise PostfixError(f"postsuper -H - hold released {len(released)} of {len(batch)} messages; "
                               f"still on hold: {', '.join(stuck[:10])}")
        for qid in released:
            self._warn_if_old(qid, batch[qid][1])
        # Not released and not on hold: released or deleted by someone else meanwhile.
        return {qid: "moved" if qid in released else "already" for qid in batch}

    def _still_held(self, moves: list[Move], batch: dict, released: set[str]) -> list[str]:
        return [q for q in batch if q not in released and self._held(q, moves[batch[q][0]].fp)]

    def _release(self, qid: str, fp: str) -> None:
        arrived = self._arrival(qid)
        released = self.postfix.release(qid)
        if released != 1 and self._held(qid, fp):
            raise PostfixError(f"postsuper -H {qid} released {released} messages, but {qid} is still on hold")
        if released == 1:
            self._warn_if_old(qid, arrived)
            self.postfix.deliver_now(qid)

    def _warn_if_old(self, qid: str, arrived: float | None) -> None:
        # postsuper(1): mail held for a significant fraction of the queue lifetime
        # expires (bounces) at its first failed delivery attempt after -H.
        age = time.time() - arrived if arrived else 0.0
        if age > self.lifetime / 2:
            log.warning("%s was on hold for %.1f days (queue lifetime %.1f days): if its first "
                        "delivery attempt fails it bounces instead of being retried", qid,
                        age / 86400, self.lifetime / 86400, extra={"qid": qid})
