"""Things a queue reports once, such as odd entries it leaves alone (docs/reference.md §3).

A queue notes a line under a key each time it meets the thing (every listing
meets the same symlink again); :class:`Reports` keeps the first line per key and
hands it out once through :meth:`Reports.take`, the queue's ``reports()``. The keys
remembered are capped, so a hostile directory cannot grow qsup's memory
(docs/reference.md §5.6): past the cap, new things go unreported rather than repeated.
"""

from __future__ import annotations

import stat

CAP = 100_000  # keys remembered

_KINDS = (
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)
_DEVICES = (
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


class Reports:
    def __init__(self, cap: int = CAP):
        self.cap = cap
        self._said: set[str] = set()
        self._new: list[str] = []

    def __contains__(self, key: str) -> bool:
        """Already reported (a caller can skip building the line)."""
        return key in self._said

    def add(self, key: str, line: str) -> None:
        """Report *line* unless something was reported under *key* before."""
        if key in self._said or len(self._said) >= self.cap:
            return
        self._said.add(key)
        self._new.append(line)

    def take(self) -> list[str]:
        """The lines added since the last take."""
        out, self._new = self._new, []
        return out


def file_kind(mode: int, devices: bool = True) -> str:
    """What a file that is not a regular one is, in words: "symlink", "directory",
    "FIFO", "socket", "character device" or "block device" (without *devices*,
    those two are a "special file" as anything else is)."""
    for test, kind in _KINDS + (_DEVICES if devices else ()):
        if test(mode):
            return kind
    return "special file"
