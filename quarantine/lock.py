"""A lock file that names its holder: one qsup per state directory, one per spool,
one per Postfix hold queue (docs/reference.md §3).

The lock is an flock(2) on the file, not the pid written in it: the kernel drops it
with the holder's descriptor, even after ``kill -9``, so a stale pid never locks
anyone out. The pid is there to name the holder (in the error, in ``qsup status``).
"""

from __future__ import annotations

import fcntl
import os

from quarantine.errors import StateLocked

_PID_BYTES = 32


def _pid_text(fd: int) -> str:
    return os.pread(fd, _PID_BYTES, 0).decode(errors="replace").strip()


class PidLock:
    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str, rule: str = "") -> None:
        """Take the lock without waiting and write our pid in the file. If another
        process holds it, raise StateLocked: "WHAT is in use by another qsup (pid N)",
        followed by ": RULE" when given. OSError if the file cannot be opened."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_text(fd) or "?"
            os.close(fd)
            raise StateLocked(f"{what} is in use by another qsup (pid {pid})"
                              + (f": {rule}" if rule else "")) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: str) -> int | None:
        """The pid of the process holding the lock file *path*, -1 if it holds it
        without a readable pid, None if nobody holds it (or there is no such file)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = _pid_text(fd)
            return int(raw) if raw.isdigit() else -1
        finally:
            os.close(fd)
        return None
