"""The Postfix queue's tagged copies (docs/reference.md §7): a spam verdict's headers
go on a copy re-injected through the loopback smtpd (:mod:`qsup_postfix.reinject`),
held until the original is deleted, then released. A part of
:class:`qsup_postfix.queue.PostfixQueue`, kept in a room of its own."""

from __future__ import annotations

import logging
import os

from qsup_postfix.commands import PostfixError
from qsup_postfix.reinject import HEADER, token
from quarantine.hookspecs import Move
from quarantine.verdicts import header_bytes

log = logging.getLogger("qsup.postfix")
_COPY_HEAD = 16 * 1024  # where a re-injected copy's HEADER is: its first header lines


class TaggedCopies:
    """Mixed into PostfixQueue: uses its postfix, store, reinjector, scan_dir and its
    hold-queue helpers."""

    def _tagged(self, move: Move) -> str:
        """A delivery with move.tag added: a tagged copy re-injected (it lands on hold
        under a new ID), then the original deleted, then the copy released. The
        plugin's record of the copy (written before the copy is sent, given its ID
        once Postfix answers, dropped last) and the copy's HEADER tell a replay
        where it stopped: it sends a copy only if none is on hold and the original
        still is, so one copy leaves Postfix, tagged once."""
        entry = self.store.reinjections().get(move.name)
        if entry is not None and entry[:2] != (move.qid, move.fp):
            raise PostfixError(f"{move.qid}: a tagged copy of {entry[0]} is still on its way "
                               f"under the name {move.name}")
        if entry is None:
            if not self._held(move.qid, move.fp):
                return "already"  # done before a restart: the record went last
            self.store.set_reinjection(move.name, move.qid, move.fp)
        copy = (entry and entry[2]) or self._find_copy(token(move.qid, move.fp))
        if not copy:
            if not self._held(move.qid, move.fp):
                self.store.drop_reinjection(move.name)
                return "gone"
            copy = self._send_copy(move)
        self.store.set_reinjection(move.name, move.qid, move.fp, copy)
        self._drop_original(move)
        self._release_copy(copy)
        self.store.drop_reinjection(move.name)
        return "moved"

    def _send_copy(self, move: Move) -> str:
        """The tagged copy to the re-injection service; its new queue ID."""
        envelope = self.postfix.envelope(move.qid)
        if envelope is None:
            raise PostfixError(f"{move.qid} left the hold queue while its tagged copy was made")
        top = header_bytes([*move.tag, (HEADER, token(move.qid, move.fp))], b"\n")
        tmp = os.path.join(self.scan_dir, f".{move.qid}.tagged")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w+b") as fh:
                if not self._cat(move.qid, fh.fileno()):
                    raise PostfixError(f"{move.qid} left the hold queue while its tagged copy was made")
                fh.seek(0)
                copy = self.reinjector.send(*envelope, top, fh)
        finally:
            os.unlink(tmp)
        log.info("%s: tagged copy queued as %s", move.qid, copy, extra={"qid": move.qid})
        if not self._on_hold(copy):
            self._reports.add("reinject-not-held", f"the re-injection service {self.reinjector.address} "
                              f"did not put {copy} on hold: add -o smtpd_data_restrictions="
                              f"check_client_access,static:HOLD to it in master.cf, or a qsup "
                              f"killed at the wrong instant may have a message delivered twice")
        return copy

    def _find_copy(self, tok: str) -> str | None:
        """The queue ID of the copy on hold carrying HEADER: *tok*, if any."""
        wanted = f"{HEADER}: {tok}".encode()
        for qid, path, _ in self._held_files():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                found = wanted in os.read(fd, _COPY_HEAD)
            finally:
                os.close(fd)
            if found:
                return qid
        return None

    def _copies(self) -> set[str]:
        """Queue IDs of tagged copies on hold that wait for qsup to release them:
        scanned already, never pending."""
        out = set()
        for qid, fp, copy in self.store.reinjections().values():
            copy = copy or self._find_copy(token(qid, fp))
            if copy:
                out.add(copy)
        return out

    def _drop_original(self, move: Move) -> None:
        if not self._held(move.qid, move.fp):
            return  # deleted before a restart
        deleted = self.postfix.delete(move.qid)
        if deleted != 1 and self._held(move.qid, move.fp):
            raise PostfixError(f"postsuper -d {move.qid} hold deleted {deleted} messages, but it is still on hold")

    def _release_copy(self, copy: str) -> None:
        released = self.postfix.release(copy)
        if released != 1 and self._on_hold(copy):
            raise PostfixError(f"postsuper -H {copy} released {released} messages, but the tagged copy "
                               f"{copy} is still on hold")
        self.postfix.deliver_now(copy)
