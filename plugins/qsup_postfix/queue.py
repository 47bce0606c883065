"""The Postfix hold queue as a qsup queue (the Queue protocol of quarantine.hookspecs).

Postfix puts every incoming message on hold (``header_checks``: ``/^Received:/ HOLD``);
qsup takes the held messages, has them scanned and moves each one:

=============  =========================================================================
move           what happens in Postfix
=============  =========================================================================
→ outgoing     ``postsuper -H ID`` (checked: "Released from hold: 1 message"), then
               ``postqueue -i ID`` so it leaves now, not at the next queue run; a
               pass's deliveries together (:meth:`PostfixQueue.apply_all`): one
               ``postsuper -H - hold`` with the IDs on stdin (each checked: still on
               hold afterwards is an error), then one ``postkick public qmgr D``
→ outgoing,    (a spam verdict, with ``reinject`` set) a copy with the headers added
  tagged       is re-injected over SMTP and lands on hold under a new ID; then the
               original goes (``postsuper -d ID hold``) and the copy is released
               (:mod:`qsup_postfix.reinject`)
→ quarantine   stays on hold; a copy goes into the quarantine store with a *claim*
               that hides it from :meth:`PostfixQueue.pending`
→ incoming     (``qsup release``) the claim and the copy go; the held message is
               pending again and is scanned again
purge          ``postsuper -d ID hold``, then the copy and the claim go
=============  =========================================================================

Waiting messages are read from ``queue_directory/hold`` directly (what MailScanner
does): a directory listing and a ``stat`` per file, where ``postqueue -j`` would have
showq open every queue file of every queue on each look. A message is identified by
its raw queue file: size plus a hash of its first 4 KiB (no body is read). The
scanner gets what ``postcat -bh -q ID`` prints, in a private 0700 directory, one file
per ID: read from the queue file directly (:mod:`qsup_postfix.queuefile`) when it is
small and laid out as expected, else from postcat.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator

from qsup_postfix import queuefile
from qsup_postfix.commands import Postfix, PostfixError
from qsup_postfix.reinject import Reinjector
from qsup_postfix.store import QuarantineStore
from qsup_postfix.held import QuarantineSide
from qsup_postfix.release import Releases
from qsup_postfix.tagged import TaggedCopies
from quarantine.hookspecs import MessageRef, Move
from quarantine.ids import fingerprint, is_queue_id
from quarantine.reports import Reports, file_kind
from quarantine.spool import read_head

log = logging.getLogger("qsup.postfix")

_READY = stat.S_IRWXU  # Postfix marks a complete queue file with mode 0700
_HASH_DIR = re.compile(r"[0-9A-Fa-f]")
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}  # Postfix: bare = days
_DIRECT_MAX = 256 * 1024  # bigger queue files: postcat, whose start-up is small beside them


def content_size(head: bytes) -> int | None:
    """The message size from a queue file's first record (REC_TYPE_SIZE, 'C'):
    the content length Postfix logs as ``size=`` (lines counted with CRLF, as on the
    wire); None if the head does not start with one."""
    if len(head) < 2 or head[:1] != b"C":
        return None
    length, shift, pos = 0, 0, 1
    while pos < len(head) and pos < 6:
        byte = head[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    fields = head[pos:pos + length].split()
    return int(fields[0]) if fields and fields[0].isdigit() else None


def duration(value: str) -> float:
    """A Postfix time value ("5d", "3600s", "7") in seconds (bare numbers are days)."""
    found = _DURATION.fullmatch(value.strip())
    return int(found.group(1)) * _UNITS[found.group(2)] if found else 5 * 86400.0


class PostfixQueue(Releases, TaggedCopies, QuarantineSide):
    name = "postfix"

    def __init__(self, postfix: Postfix, quarantine_dir: str, scan_dir: str = "", reinject: str = ""):
        self.postfix = postfix
        # A delivery may add header lines (a spam verdict) only through re-injection.
        self.reinjector = Reinjector(reinject, postfix.timeout) if reinject else None
        self.can_tag = self.reinjector is not None
        params = postfix.params("queue_directory", "hash_queue_names", "enable_long_queue_ids",
                                "maximal_queue_lifetime", "bounce_queue_lifetime")
        self.hold = os.path.join(params["queue_directory"], "hold")
        if not os.path.isdir(self.hold):
            raise PostfixError(f"{self.hold} is not a directory: is Postfix installed and started "
                               f"once for {postfix.config_directory or 'the default instance'}?")
        self.hashed = "hold" in re.split(r"[\s,]+", params["hash_queue_names"])
        self.long_ids = params["enable_long_queue_ids"].lower() in ("yes", "true", "1")
        self.lifetime = min(duration(params["maximal_queue_lifetime"]),
                            duration(params["bounce_queue_lifetime"]))
        self.store = QuarantineStore(quarantine_dir)
        self.scan_dir = os.path.abspath(scan_dir or os.path.join(self.store.root, ".scan"))
        shutil.rmtree(self.scan_dir, ignore_errors=True)  # a dead qsup's leftovers; we hold the lock
        os.makedirs(self.scan_dir, mode=0o700, exist_ok=True)
        os.chmod(self.scan_dir, 0o700)
        self._paths: dict[str, str] = {}  # queue ID -> hold path (hashed hold only)
        self._fps: dict[str, tuple[tuple, str]] = {}  # queue ID -> (stat key, fingerprint)
        self._reports = Reports()  # odd entries on hold, lost claims: each said once
        if not self.long_ids:
            log.info("Postfix uses short queue IDs (enable_long_queue_ids = no): IDs are reused "
                     "once a message leaves the queue; qsup tells the messages apart by content, "
                     "but logs and `qsup show` are clearer with enable_long_queue_ids = yes")

    def close(self) -> None:
        shutil.rmtree(self.scan_dir, ignore_errors=True)
        self.store.close()

    # ------------------------------------------------------------ the hold queue
    def _held_files(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """(queue ID, path, stat) of every complete queue file on hold."""
        folders = [self.hold]
        while folders:
            folder = folders.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise PostfixError(f"cannot list {folder}: {exc.strerror}") from None
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # released or deleted while we looked
                if self.hashed and stat.S_ISDIR(st.st_mode) and _HASH_DIR.fullmatch(entry.name):
                    folders.append(entry.path)
                    continue
                if not is_queue_id(entry.name):
                    self._reports.add(entry.path, f"hold/{entry.name!r}: not a queue ID; left alone")
                elif not stat.S_ISREG(st.st_mode):
                    kind = file_kind(st.st_mode, devices=False)
                    self._reports.add(entry.path, f"hold/{entry.name}: is a {kind}; left alone")
                elif st.st_mode & _READY == _READY:  # else Postfix is still writing it
                    if self.hashed:
                        self._paths[entry.name] = entry.path
                    yield entry.name, entry.path, st

    def _path(self, qid: str) -> str | None:
        if not is_queue_id(qid):
            return None
        if not self.hashed:
            return os.path.join(self.hold, qid)
        path = self._paths.get(qid)
        if path is None or not os.path.lexists(path):
            self._paths.pop(qid, None)
            for found, path, _ in self._held_files():
                if found == qid:
                    return path
            return None
        return path

    def _on_hold(self, qid: str) -> bool:
        path = self._path(qid)
        return path is not None and os.path.lexists(path)

    def _fingerprint(self, qid: str, path: str, st: os.stat_result) -> str | None:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._fps.get(qid)
        if cached and cached[0] == key:
            return cached[1]
        ident = self._identify_path(path)
        if ident is None:
            return None
        if len(self._fps) > 50_000:
            self._fps.clear()
        self._fps[qid] = (key, ident[1])
        return ident[1]

    def _quarantined(self) -> dict[str, set[str]]:
        """queue ID -> fingerprints of held messages that are quarantined."""
        out: dict[str, set[str]] = {}
        for qid, fp in self.store.claims().values():
            out.setdefault(qid, set()).add(fp)
        return out

    def pending(self, limit: int, skip: Callable[[str], bool]) -> list[MessageRef]:
        quarantined = self._quarantined()
        copies = self._copies()
        seen: set[tuple[str, str]] = set()
        entries = []
        for qid, path, st in self._held_files():
            if qid in copies:
                continue
            if qid in quarantined:
                fp = self._fingerprint(qid, path, st)
                if fp in quarantined[qid]:
                    seen.add((qid, fp))
                    continue
            if skip(qid):
                continue
            entries.append((st.st_mtime, qid, st.st_size))
        for name, (qid, fp) in self.store.claims().items():
            if (qid, fp) not in seen:
                self._reports.add(f"claim {name} {fp}", f"quarantined message {qid} is no longer on "
                                  f"hold in Postfix (deleted or released outside qsup); its copy is "
                                  f"{self.store.root}/{name}")
        oldest = heapq.nsmallest(limit, entries)
        return [MessageRef(qid=qid, size=size, age_key=mtime) for mtime, qid, size in oldest]

    def depth(self) -> int:
        skipped = set(self._quarantined()) | self._copies()
        return sum(1 for qid, _, _ in self._held_files() if qid not in skipped)

    def _identify_path(self, path: str) -> tuple[int, str] | None:
        found = read_head(path)
        if found is None:
            return None
        size, head = found
        return content_size(head) or size, fingerprint(size, head)

    def identify(self, qid: str) -> tuple[int, str] | None:
        path = self._path(qid)
        return self._identify_path(path) if path else None

    def _held(self, qid: str, fp: str) -> bool:
        """Is this very message (not another one reusing its ID) on hold?"""
        ident = self.identify(qid)
        return ident is not None and ident[1] == fp

    # ------------------------------------------------------------ the scanner's copy
    def scan_path(self, qid: str) -> str:
        path = os.path.join(self.scan_dir, qid)
        tmp = os.path.join(self.scan_dir, f".{qid}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            # Gone since it was identified: the scanner sees an empty file and the
            # move that follows finds the message gone.
            self._cat(qid, fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path

    def _cat(self, qid: str, fd: int) -> bool:
        """The message's content into *fd* (empty), as ``postcat -bh -q ID`` prints it."""
        path = self._path(qid)
        try:
            small = path is not None and os.lstat(path).st_size <= _DIRECT_MAX
        except OSError:
            small = False
        if small:
            try:
                if queuefile.copy_content(path, fd):
                    return True
            except queuefile.NotUnderstood as exc:
                log.debug("%s: queue file read by postcat (%s)", qid, exc, extra={"qid": qid})
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        return self.postfix.cat(qid, fd)

    def scan_done(self, qid: str) -> None:
        if is_queue_id(qid):
            try:
                os.unlink(os.path.join(self.scan_dir, qid))
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------- moves
    def plan(self, qid: str, fp: str, dest: str, origin: str = "incoming", source: str = "") -> Move:
        name = qid
        if dest == "quarantine":
            base, n = f"{qid[:110]}.{fp[:12]}", 0
            while self.store.has_copy(name) or self.store.claim(name) is not None:
                n += 1
                name = base if n == 1 else f"{base}.{n}"
        return Move(qid=qid, fp=fp, dest=dest, name=name, origin=origin, source=source)

    def apply(self, move: Move) -> str:
        names = (move.qid, move.name) + ((move.source,) if move.source else ())
        if not all(is_queue_id(n) for n in names):
            return "gone"
        if move.origin == "quarantine":
            return self._from_quarantine(move)
        if move.dest == "quarantine":
            return self._to_quarantine(move)
        if move.dest == "outgoing" and move.tag and self.reinjector:
            return self._tagged(move)
        if move.dest == "outgoing":
            ident = self.identify(move.qid)
            if ident is None:
                # Released before a restart (or by someone else): it may have been cut
                # off before its postqueue -i, so ask again, or it waits for a queue run.
                self.postfix.deliver_now(move.qid)
                return "already"
            if ident[1] != move.fp:
                return "already"  # a new message reusing the ID: never released unscanned
            self._release(move.qid, move.fp)
            return "moved"
        raise ValueError(f"no such move for the Postfix queue: {move.origin} -> {move.dest}")

    # ------------------------------------------------------------------ reading
    def head(self, location: str, name: str, limit: int) -> bytes:
        if not is_queue_id(name):
            return b""
        if location == "quarantine":
            return self.store.head(name, limit)
        if location == "incoming":
            return self.postfix.headers(name, limit) if self.identify(name) else b""
        return b""

    def reports(self) -> list[str]:
        return self._reports.take()
