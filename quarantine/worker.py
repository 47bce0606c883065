"""Write a scanner worker for qsup in a few lines.

    from quarantine.worker import serve

    def scan(path: str, qid: str) -> str | None:
        ...               # raise, crash or hang as scanners do; return a verdict or None

    if __name__ == "__main__":
        serve(scan, setup=load_rules)

The same program works in both modes of the worker protocol (docs/reference.md §4):

* one-shot: ``worker PATH…``; progress lines go to ``$QSUP_STATUS_FD``;
* persistent (``QSUP_PERSISTENT=1``): batches arrive on stdin as
  ``batch BATCH_ID N`` followed by N lines ``ID PATH``; the worker answers on stdout
  ``ready`` once set up, then ``begin ID`` / ``done ID [VERDICT]`` and ``end BATCH_ID``.

An exception raised by *scan* is a crash of that message: the worker exits non-zero
(one-shot) or dies (persistent), exactly as a scanner that segfaults would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

Scan = Callable[[str, str], "str | None"]


def _clean(verdict: str | None) -> str:
    if not verdict:
        return ""
    return " " + " ".join(str(verdict).split())[:200]


def status_stream() -> TextIO | None:
    """The line-buffered progress stream of a one-shot worker (``$QSUP_STATUS_FD``),
    or None when qsup gave none: progress lines are optional (docs/reference.md §4)."""
    fd = os.environ.get("QSUP_STATUS_FD")
    if not fd or not fd.isdigit():
        return None
    try:
        return os.fdopen(int(fd), "w", buffering=1)
    except OSError:
        return None


def run_oneshot(scan: Scan, paths: list[str]) -> int:
    status = status_stream()
    for path in paths:
        qid = os.path.basename(path)
        if status:
            status.write(f"begin {qid}\n")
        verdict = scan(path, qid)
        if status:
            status.write(f"done {qid}{_clean(verdict)}\n")
    return 0


def run_persistent(scan: Scan, stdin: TextIO, stdout: TextIO, progress: bool = True) -> int:
    """The persistent protocol; without *progress* only ``ready`` and ``end`` lines
    are written (a black-box scanner: qsup then bisects)."""
    stdout.write("ready\n")
    stdout.flush()
    while True:
        header = stdin.readline()
        if not header:
            return 0
        parts = header.split()
        if len(parts) != 3 or parts[0] != "batch":
            continue
        batch_id, count = parts[1], int(parts[2])
        items = []
        for _ in range(count):
            qid, _, path = stdin.readline().rstrip("\n").partition(" ")
            items.append((qid, path))
        for qid, path in items:
            if progress:
                stdout.write(f"begin {qid}\n")
                stdout.flush()
            verdict = scan(path, qid)
            if progress:
                stdout.write(f"done {qid}{_clean(verdict)}\n")
        stdout.write(f"end {batch_id}\n")
        stdout.flush()


def serve(scan: Scan, setup: Callable[[], None] | None = None, argv: list[str] | None = None) -> None:
    """Run *scan* over the batch qsup gives this process, in whichever mode it runs."""
    argv = sys.argv[1:] if argv is None else argv
    if setup:
        setup()
    if os.environ.get("QSUP_PERSISTENT") == "1":
        sys.exit(run_persistent(scan, sys.stdin, sys.stdout))
    sys.exit(run_oneshot(scan, argv))
