"""The spool-directory queue (docs/reference.md §3), a built-in plugin.

    SPOOL/tmp/         writers create files here, then rename() into incoming/
    SPOOL/incoming/    one regular file per message; the file name is the queue ID
    SPOOL/outgoing/    scanned messages
    SPOOL/quarantine/  poison messages (0700, files 0600)
    SPOOL/.qsup.lock   held by the one qsup draining this spool, whatever its state

Anything in incoming/ that is not a regular file with a queue-ID name is never read,
moved or followed, and reported once. Moves are rename() within the file system and
never overwrite: a name already taken gets the fingerprint appended. A move or a
deletion the file system refuses (another file system, an immutable or read-only
directory) is a QueueError naming both paths and the reason; the file stays put.
"""

from __future__ import annotations

import errno
import heapq
import os
import re
import stat
import weakref
from collections.abc import Callable, Iterator

from quarantine import tagging
from quarantine.files import OPEN_FLAGS as _OPEN_FLAGS
from quarantine.files import read_head, rename_noreplace, stat_head as _stat_head  # noqa: F401 (read_head: for queues)
from quarantine.errors import ConfigError, QueueError
from quarantine.hookspecs import MessageRef, Move, Quarantined, hookimpl
from quarantine.ids import FINGERPRINT_BYTES, fingerprint, is_queue_id
from quarantine.lock import PidLock
from quarantine.reports import Reports, file_kind

SUBDIRS = ("tmp", "incoming", "outgoing", "quarantine")
LOCK_FILE = ".qsup.lock"  # in the spool directory, beside incoming/: one qsup per spool
_SEEN_CAP = 200_000
LIST_STEP = 2_000  # directory entries per slice of pending_steps() (~15 ms)
# a bounded max-heap keeps the oldest `limit` entries (heapq.nsmallest's own method)
_heapify_max = getattr(heapq, "heapify_max", None) or heapq._heapify_max
_heapreplace_max = getattr(heapq, "heapreplace_max", None) or heapq._heapreplace_max

# a file system that refuses: the spool cannot be used until an operator acts
_REFUSALS = {errno.EROFS, errno.EPERM, errno.EACCES, errno.ENOSPC, errno.EDQUOT, errno.EIO}


def _stamp(st: os.stat_result) -> tuple:
    """What changes when a file is rewritten or another one is renamed over its name."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


_TAKEN = re.compile(r"(.+)\.[0-9a-f]{12}(?:\.[0-9]+)?")  # QID + what plan() adds to a taken name


def describe_name(name: str) -> str:
    """A name made safe for a one-line report (newlines, bad UTF-8 escaped)."""
    return ascii(os.fsencode(name))[2:-1] if not name.isprintable() else repr(name)


class SpoolQueue:
    name = "spool"

    def __init__(self, root: str, lock: bool = False):
        """The spool in *root*; with *lock*, held against any other qsup (whatever its
        state directory) until :meth:`close`, or until the queue is dropped."""
        self.root = os.path.abspath(root)
        must_exist(self.root)
        self._dirs = {sub: os.path.join(self.root, sub) for sub in SUBDIRS}
        for sub in SUBDIRS:
            os.makedirs(self.dir(sub), mode=0o700 if sub == "quarantine" else 0o755, exist_ok=True)
        os.chmod(self.dir("quarantine"), 0o700)
        self._lock = PidLock(os.path.join(self.root, LOCK_FILE))
        if lock:
            self._lock.acquire(f"spool {self.root}", rule="one qsup per queue")
            weakref.finalize(self, self._lock.release)
        self._reports = Reports()  # odd names in incoming/, each reported once
        # queue ID -> (stamp, fingerprint) from identify(): apply() checks that the file
        # it moves is still the one fingerprinted with one lstat instead of a re-read
        self._seen: dict[str, tuple[tuple, str]] = {}

    def dir(self, sub: str) -> str:
        return self._dirs.get(sub) or os.path.join(self.root, sub)

    def path(self, sub: str, name: str) -> str:
        return f"{self._dirs[sub]}/{name}"  # hot path: no os.path.join

    def _report(self, name: str, why: str, then: str = "left alone") -> None:
        if name not in self._reports:  # every listing meets it again: no line built then
            self._reports.add(name, f"incoming/{describe_name(name)}: {why}; {then}")

    def _entries(self, skip: Callable[[str], bool], step: int = 0):
        """(mtime, name, size) of each waiting message; with *step*, also None after
        every *step* directory entries (a point to pause at)."""
        with os.scandir(self.dir("incoming")) as it:
            for n, entry in enumerate(it, 1):
                if step and n % step == 0:
                    yield None
                name = entry.name
                if not is_queue_id(name):
                    self._report(name, "not a queue ID")
                    continue
                if skip(name):  # already held: no stat needed
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    self._report(name, f"is a {file_kind(st.st_mode)}, not a regular file")
                    continue
                if st.st_size == 0:
                    self._report(name, "is empty", "passed to the scanner as it is")
                yield (st.st_mtime, name, st.st_size)

    def pending(self, limit: int, skip: Callable[[str], bool]) -> list[MessageRef]:
        return [ref for part in self.pending_steps(limit, skip, step=0) if part for ref in part]

    def pending_steps(self, limit: int, skip: Callable[[str], bool],
                      step: int = LIST_STEP) -> Iterator[list[MessageRef] | None]:
        """pending() in slices: None after every *step* directory entries, then the
        messages, oldest first, in lists of at most *step* (0: one list). Listing a
        deep spool takes ~8 µs an entry (half a second for 66,000): the supervisor
        takes a slice per pass instead of stalling every worker. Only the oldest
        *limit* entries are kept, however large the directory."""
        heap: list = []
        for item in self._entries(skip, step):
            if item is None:
                yield None
            elif len(heap) < limit:
                heap.append(item)
                if len(heap) == limit:
                    _heapify_max(heap)
            elif item < heap[0]:
                _heapreplace_max(heap, item)
        heap.sort()
        size = step or len(heap) or 1
        for i in range(0, len(heap), size):
            yield [MessageRef(qid=n, size=sz, age_key=mtime) for mtime, n, sz in heap[i:i + size]]

    def depth(self) -> int:
        with os.scandir(self.dir("incoming")) as it:
            return sum(1 for e in it if is_queue_id(e.name) and e.is_file(follow_symlinks=False))

    def _identify_path(self, path: str) -> tuple[int, str] | None:
        found = read_head(path)
        if found is None:
            return None
        size, head = found
        return size, fingerprint(size, head)

    def identify(self, qid: str) -> tuple[int, str] | None:
        found = _stat_head(self.path("incoming", qid), FINGERPRINT_BYTES)
        if found is None:
            self._seen.pop(qid, None)
            return None
        st, head = found
        fp = fingerprint(st.st_size, head)
        if len(self._seen) >= _SEEN_CAP:
            self._seen.clear()  # only a shortcut: apply() falls back to reading
        self._seen[qid] = (_stamp(st), fp)
        return st.st_size, fp

    def scan_path(self, qid: str) -> str:
        return self.path("incoming", qid)

    def scan_done(self, qid: str) -> None:
        self._seen.pop(qid, None)

    def plan(self, qid: str, fp: str, dest: str, origin: str = "incoming", source: str = "") -> Move:
        name = qid
        base = f"{qid[:110]}.{fp[:12]}"
        n = 0
        while os.path.lexists(self.path(dest, name)):
            n += 1
            name = base if n == 1 else f"{base}.{n}"
        seen = self._seen.get(qid) if origin == "incoming" and not source else None
        ino = seen[0][0] if seen is not None and seen[1] == fp else 0
        return Move(qid=qid, fp=fp, dest=dest, name=name, origin=origin, source=source, ino=ino)

    def _src(self, move: Move) -> str:
        return self.path(move.origin, move.source or move.qid)

    def _unchanged(self, move: Move, src: str) -> bool:
        """The file at *src* is the one identify() fingerprinted as move.fp. A file in
        quarantine/ is the one qsup put there under that name, whatever its content
        now: the directory is qsup's own (0700), and a header the postmaster added
        does not make it another message."""
        if move.origin == "quarantine":
            try:
                return stat.S_ISREG(os.lstat(src).st_mode)
            except OSError:
                return False
        seen = self._seen.pop(move.qid, None) if move.origin == "incoming" and not move.source else None
        if seen is not None and seen[1] == move.fp:
            try:
                st = os.lstat(src)
            except OSError:
                return False
            if stat.S_ISREG(st.st_mode) and _stamp(st) == seen[0]:
                return True
        ident = self._identify_path(src)
        if ident is not None and ident[1] == move.fp:
            return True
        # Edited in place by the scanner during its batch (tagging, disinfection): the
        # same file, so what the scanner left is what goes on (contract §4). A message
        # renamed over it would be another inode: that one is new, and is scanned.
        try:
            st = os.lstat(src)
        except OSError:
            return False
        return bool(move.ino) and move.dest == "outgoing" and stat.S_ISREG(st.st_mode) \
            and st.st_ino == move.ino

    def apply(self, move: Move) -> str:
        src, dst = self._src(move), self.path(move.dest, move.name)
        try:
            if move.tag and move.dest == "outgoing":
                return self._apply_tagged(move, src, dst)
            if self._unchanged(move, src):
                if not self._rename(src, dst):
                    return "taken"
                result = "moved"
            else:
                found = self._identify_path(dst)
                if found is None or not (found[1] == move.fp or move.origin == "quarantine"):
                    return "gone"  # (a released file is known by its name, as in _unchanged)
                result = "already"  # also when killed before the chmod below
            if move.dest == "quarantine":
                os.chmod(dst, 0o600, follow_symlinks=False)
            return result
        except OSError as exc:
            raise QueueError(f"cannot move {src} to {dst}: {_reason(exc)}") from None

    # ------------------------------------------------------------------ tagging
    can_tag = True  # a delivery may add header lines (a spam verdict)

    def _apply_tagged(self, move: Move, src: str, dst: str) -> str:
        """A delivery that adds move.tag on top: the tagged copy is written in tmp/,
        renamed over the message in incoming/ (one copy at every instant, tagged or
        not), then moved as any other. A replay finds it tagged already, in
        incoming/ or outgoing/, and never tags it twice."""
        if not tagging.tagged_of(src, move):
            if not self._unchanged(move, src):
                found = self._identify_path(dst)
                return "already" if tagging.tagged_of(dst, move) or (found and found[1] == move.fp) else "gone"
            tagging.tag_in_place(move, src, self.path("tmp", f".qsup-tag.{move.name}"))
        return "moved" if self._rename(src, dst) else "taken"

    @staticmethod
    def _rename(src: str, dst: str) -> bool:
        """rename_noreplace(); False if another file holds *dst*."""
        try:
            rename_noreplace(src, dst)
            return True
        except FileExistsError:
            if not _same_file(src, dst):
                return False
        os.unlink(src)  # link() + unlink() cut short: *dst* is this message already
        return True

    def head(self, location: str, name: str, limit: int) -> bytes:
        if location not in SUBDIRS or not is_queue_id(name):
            return b""
        try:
            fd = os.open(os.path.join(self.dir(location), name), _OPEN_FLAGS)
        except OSError:
            return b""
        try:
            return os.read(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)

    def quarantine_path(self, name: str) -> str:
        """The quarantined file *name*, for a re-test to scan where it lies."""
        if not is_queue_id(name):
            raise ValueError(f"not a quarantine name: {name!r}")
        return self.path("quarantine", name)

    def quarantine_names(self) -> Iterator[str]:
        """The names of the files in quarantine/ (regular files with queue-ID names)."""
        with os.scandir(self.dir("quarantine")) as it:
            for entry in it:
                if is_queue_id(entry.name) and entry.is_file(follow_symlinks=False):
                    yield entry.name

    def quarantined(self, name: str) -> Quarantined | None:
        if not is_queue_id(name):
            return None
        found = _stat_head(self.path("quarantine", name), FINGERPRINT_BYTES)
        if found is None:
            return None
        st, head = found
        taken = _TAKEN.fullmatch(name)
        qid = taken.group(1) if taken and is_queue_id(taken.group(1)) else name
        # ctime: the rename into quarantine/ (and its chmod), not the message's arrival
        return Quarantined(name, qid, fingerprint(st.st_size, head), st.st_size, st.st_ctime)

    def purge(self, name: str) -> bool:
        if not is_queue_id(name):
            return False
        path = os.path.join(self.dir("quarantine"), name)
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise QueueError(f"cannot delete {path}: {_reason(exc)}") from None

    def reports(self) -> list[str]:
        return self._reports.take()

    def close(self) -> None:
        self._lock.release()


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EXDEV:
        return f"{exc.strerror} (the spool's directories must all be on one file system)"
    return exc.strerror or str(exc)


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def must_exist(root: str) -> None:
    """A spool that does not exist is a mistyped path or a missing mount, never made."""
    if not os.path.lexists(root):
        raise ConfigError(f"spool: {root} does not exist: create it (mkdir -p {root}) or give "
                          f"--spool DIR; qsup makes incoming/, outgoing/, quarantine/ and tmp/ in it")


def open_spool(root: str, lock: bool = False) -> SpoolQueue:
    """The spool at *root*; a file system that refuses to prepare it (read-only,
    immutable, full) is a QueueError (exit 4), a path that cannot be one (a file,
    say) a ConfigError (exit 2)."""
    try:
        return SpoolQueue(root, lock=lock)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in _REFUSALS:
            raise QueueError(f"cannot use the spool {root}: {_reason(exc)}{where}") from None
        raise ConfigError(f"spool: cannot use {root}: {_reason(exc)}{where}") from None


@hookimpl
def qsup_queue_types():
    return {"spool": lambda config: open_spool(config.spool, lock=True)}


@hookimpl
def qsup_queue_identity(config):
    if config.queue == "spool":
        return {"kind": "spool", "where": os.path.realpath(config.spool)}
    return None
