"""File primitives for queues: reads that never follow a symlink or block on a FIFO,
and a rename that never replaces (renameat2 RENAME_NOREPLACE, else link + unlink)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from quarantine.ids import FINGERPRINT_BYTES

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    _renameat2.restype = ctypes.c_int
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1

def rename_noreplace(src: str, dst: str) -> None:
    """Atomic rename that fails with FileExistsError instead of replacing *dst*."""
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), src)
    os.link(src, dst, follow_symlinks=False)  # EEXIST instead of overwriting
    os.unlink(src)


def read_head(path: str, limit: int = FINGERPRINT_BYTES) -> tuple[int, bytes] | None:
    """Size and first *limit* bytes of a regular file, never following a symlink and
    never blocking on a FIFO; None if it is gone or not a regular file."""
    found = stat_head(path, limit)
    return None if found is None else (found[0].st_size, found[1])


def stat_head(path: str, limit: int) -> tuple[os.stat_result, bytes] | None:
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return st, os.read(fd, limit)
    finally:
        os.close(fd)
