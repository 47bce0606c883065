"""Adding header lines to a message on its way out (a spam verdict's tag) without
ever leaving two copies or none: the tagged copy is written in tmp/ and renamed over
the message (one copy at every instant, tagged or not), and a replay recognises a
copy tagged already. Used by the spool queue (:meth:`SpoolQueue.apply`)."""

from __future__ import annotations

import os
import shutil
import stat

from quarantine.hookspecs import Move
from quarantine.ids import FINGERPRINT_BYTES, fingerprint
from quarantine.files import OPEN_FLAGS, read_head
from quarantine.verdicts import header_bytes


def tagged_of(path: str, move: Move) -> bool:
    """Whether *path* is move's message with its tag on top."""
    found = read_head(path, FINGERPRINT_BYTES + 4096)
    if found is None:
        return False
    size, head = found
    tag = header_bytes(move.tag, head)
    return head.startswith(tag) and fingerprint(size - len(tag), head[len(tag):]) == move.fp


def tag_in_place(move: Move, src: str, tmp: str) -> None:
    """Write move's tag and the message at *src* to *tmp*, then rename it over *src*."""
    with open(src, "rb", opener=lambda p, f: os.open(p, OPEN_FLAGS)) as original:
        tag = header_bytes(move.tag, original.read(4096))
        original.seek(0)
        mode = stat.S_IMODE(os.fstat(original.fileno()).st_mode)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(tmp, "wb", opener=lambda p, f: os.open(p, flags, mode)) as copy:
            copy.write(tag)
            shutil.copyfileobj(original, copy, 1 << 16)
            copy.flush()
            os.fsync(copy.fileno())
    os.rename(tmp, src)
