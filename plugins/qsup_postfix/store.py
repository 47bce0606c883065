"""qsup's quarantine store for one Postfix instance.

A quarantined message stays on hold in Postfix; this store keeps a readable copy of
it and the *claim* that says "this held message is quarantined"::

    QDIR/NAME            the message as ``postcat -bh`` prints it (0600)
    QDIR/.claims/NAME    "QUEUE_ID FINGERPRINT": the held message it stands for
    QDIR/.reinject/NAME  "QUEUE_ID FINGERPRINT [COPY_ID]": a tagged copy on its way
                         (:mod:`qsup_postfix.reinject`); COPY_ID once Postfix queued it
    QDIR/.lock           held (flock) by the one qsup working on this hold queue

The claim is written last and removed first: it is the commit point of a quarantine
and of a release. The fingerprint is that of Postfix's queue file, so a new message
that happens to reuse the ID of a quarantined one (short queue IDs, after the old
one was deleted outside qsup) is not mistaken for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from quarantine.errors import StateError
from quarantine.ids import is_queue_id
from quarantine.lock import PidLock

CLAIMS = ".claims"
REINJECT = ".reinject"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(folder: str, name: str, fill: Callable[[int], bool]) -> bool:
    """Write FOLDER/NAME through a temporary file; False (nothing written) if *fill*
    says so."""
    tmp = os.path.join(folder, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        ok = fill(fd)
        if ok:
            os.fsync(fd)
    finally:
        os.close(fd)
    if not ok:
        os.unlink(tmp)
        return False
    os.replace(tmp, os.path.join(folder, name))
    _fsync_dir(folder)
    return True


class QuarantineStore:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.claims_dir = os.path.join(self.root, CLAIMS)
        self.reinject_dir = os.path.join(self.root, REINJECT)
        self._lock = PidLock(os.path.join(self.root, ".lock"))
        try:
            for folder in (self.root, self.claims_dir, self.reinject_dir):
                os.makedirs(folder, mode=0o700, exist_ok=True)
                os.chmod(folder, 0o700)
            self._lock.acquire(f"the Postfix quarantine {self.root}", rule="one qsup per hold queue")
        except OSError as exc:
            raise StateError(f"[plugin.postfix] quarantine_dir {self.root}: {exc.strerror}") from None
        self._claims: dict[str, tuple[str, str]] | None = None  # name -> (qid, fp); our writes only

    def close(self) -> None:
        self._lock.release()

    def path(self, name: str) -> str:
        if not is_queue_id(name):
            raise ValueError(f"not a quarantine name: {name!r}")
        return os.path.join(self.root, name)

    # ------------------------------------------------------------------ claims
    def claims(self) -> dict[str, tuple[str, str]]:
        """name -> (queue ID, fingerprint) of every quarantined message."""
        if self._claims is None:
            found = {}
            for name in os.listdir(self.claims_dir):
                claim = self._read_claim(name) if is_queue_id(name) else None
                if claim is not None:
                    found[name] = claim
            self._claims = found
        return dict(self._claims)

    def claim(self, name: str) -> tuple[str, str] | None:
        return self.claims().get(name)

    def _read_claim(self, name: str) -> tuple[str, str] | None:
        try:
            with open(os.path.join(self.claims_dir, name), "rb") as fh:
                words = fh.read(512).decode("ascii", "replace").split()
        except OSError:
            return None
        return (words[0], words[1]) if len(words) == 2 and is_queue_id(words[0]) else None

    def set_claim(self, name: str, qid: str, fp: str) -> None:
        self.path(name)
        self._claims = None
        _write_atomic(self.claims_dir, name, lambda fd: os.write(fd, f"{qid} {fp}\n".encode()) > 0)

    def drop_claim(self, name: str) -> bool:
        self.path(name)
        self._claims = None
        try:
            os.unlink(os.path.join(self.claims_dir, name))
        except FileNotFoundError:
            return False
        _fsync_dir(self.claims_dir)
        return True

    # ------------------------------------------------------- tagged copies on their way
    def reinjections(self) -> dict[str, tuple[str, str, str]]:
        """name -> (queue ID, fingerprint, copy's queue ID or "") of every tagged
        copy being re-injected."""
        found = {}
        for name in os.listdir(self.reinject_dir):
            words = self._words(os.path.join(self.reinject_dir, name)) if is_queue_id(name) else []
            if len(words) in (2, 3) and all(is_queue_id(w) for w in words[:1] + words[2:]):
                found[name] = (words[0], words[1], words[2] if len(words) == 3 else "")
        return found

    def set_reinjection(self, name: str, qid: str, fp: str, copy: str = "") -> None:
        self.path(name)
        line = " ".join(filter(None, (qid, fp, copy))) + "\n"
        _write_atomic(self.reinject_dir, name, lambda fd: os.write(fd, line.encode()) > 0)

    def drop_reinjection(self, name: str) -> None:
        self.path(name)
        try:
            os.unlink(os.path.join(self.reinject_dir, name))
        except FileNotFoundError:
            return
        _fsync_dir(self.reinject_dir)

    @staticmethod
    def _words(path: str) -> list[str]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            return os.read(fd, 512).decode("ascii", "replace").split()
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ copies
    def has_copy(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def write_copy(self, name: str, fill: Callable[[int], bool]) -> bool:
        """The message's content into QDIR/NAME (0600); False if *fill* found nothing."""
        self.path(name)
        return _write_atomic(self.root, name, fill)

    def drop_copy(self, name: str) -> bool:
        try:
            os.unlink(self.path(name))
            return True
        except FileNotFoundError:
            return False

    def head(self, name: str, limit: int) -> bytes:
        try:
            fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError):
            return b""
        try:
            return os.read(fd, limit)
        finally:
            os.close(fd)
