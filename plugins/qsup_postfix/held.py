"""The Postfix queue's quarantine side: a quarantined message stays on hold, and a
copy with a claim sits in the quarantine store (:mod:`qsup_postfix.store`); release
drops the claim (scanned again) or releases it from hold (``--no-scan``); purge
deletes it from hold and drops the copy and the claim. A part of
:class:`qsup_postfix.queue.PostfixQueue`, kept in a room of its own."""

from __future__ import annotations

import logging
import os
import time

from qsup_postfix.commands import PostfixError
from quarantine.hookspecs import Move, Quarantined
from quarantine.ids import is_queue_id

log = logging.getLogger("qsup.postfix")


class QuarantineSide:
    """Mixed into PostfixQueue: uses its postfix, store and hold-queue helpers."""

    def _to_quarantine(self, move: Move) -> str:
        claim = self.store.claim(move.name)
        if claim == (move.qid, move.fp):
            return "already"
        if claim is not None:
            raise PostfixError(f"quarantine name {move.name} is taken by {claim[0]}; not overwritten")
        if not self._held(move.qid, move.fp):
            return "gone"
        if not self.store.write_copy(move.name, lambda fd: self.postfix.cat(move.qid, fd)):
            return "gone"
        self.store.set_claim(move.name, move.qid, move.fp)
        return "moved"

    def _from_quarantine(self, move: Move) -> str:
        """Release (to incoming: scanned again) or release --no-scan (to outgoing)."""
        name = move.source or move.qid
        claim = self.store.claim(name)
        held = self._held(move.qid, move.fp)
        if claim is not None and not held:
            # The claim stays with the copy, the only one left: qsup's record of it is
            # kept, and only a purge removes the three.
            log.warning("%s is no longer on hold in Postfix (deleted outside qsup?); its copy stays "
                        "in %s", move.qid, self.store.path(name), extra={"qid": move.qid})
            return "gone"
        if claim is not None:
            self.store.drop_claim(name)  # from here on it is pending again
        if move.dest == "outgoing" and held:
            self._release(move.qid, move.fp)
        self.store.drop_copy(name)
        return "moved" if claim is not None else "already"

    def quarantine_path(self, name: str) -> str:
        """The quarantined copy *name* (what a re-test scans; the held original
        stays on hold until the re-test passes and it is released)."""
        return self.store.path(name)

    def quarantine_names(self) -> list[str]:
        """The names of the quarantined messages (their claims)."""
        return sorted(self.store.claims())

    def quarantined(self, name: str) -> Quarantined | None:
        claim = self.store.claim(name) if is_queue_id(name) else None
        if claim is None:
            return None
        try:
            st = os.stat(self.store.path(name))
            size, since = st.st_size, st.st_mtime
        except OSError:
            size, since = 0, time.time()  # the claim without its copy: still on hold
        return Quarantined(name, claim[0], claim[1], size, since)

    def purge(self, name: str) -> bool:
        if not is_queue_id(name):
            return False
        claim = self.store.claim(name)
        existed = claim is not None or self.store.has_copy(name)
        if claim is not None and self._held(*claim):
            deleted = self.postfix.delete(claim[0])
            if deleted != 1 and self._held(*claim):
                raise PostfixError(f"postsuper -d {claim[0]} hold deleted {deleted} messages, "
                                   f"but it is still on hold")
        self.store.drop_claim(name)
        self.store.drop_copy(name)
        return existed
