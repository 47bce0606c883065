"""One-shot qsup worker: one clamscan run over the whole batch.

    python -m qsup_clamav.clamscan_worker --clamscan /usr/bin/clamscan [--database DIR] -- PATH…

clamscan prints a line per file as it goes, in argument order ("PATH: OK",
"PATH: NAME FOUND"), so each line becomes ``done ID clean`` / ``done ID infected
NAME`` and ``begin`` of the next file: if clamscan dies, the file it was on is named.
clamscan's own exit status 1 ("virus found") is a verdict, not a failure. This worker
exits 0 only when every file got an answer; if clamscan dies of a signal, so does
this worker (qsup then records the signal).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import TextIO

from quarantine.worker import status_stream


def parse_line(line: str, paths: dict[str, int]) -> tuple[int, str] | None:
    """(index of the file, what clamscan said about it) or None if not about one."""
    line = line.rstrip("\n")
    line = line.removeprefix("WARNING: ")
    start = 0
    while True:
        cut = line.find(": ", start)
        if cut < 0:
            return None
        if line[:cut] in paths:
            return paths[line[:cut]], line[cut + 2:].strip()
        start = cut + 1


def verdict(answer: str) -> str | None:
    """``clean`` / ``infected NAME``, or None for an error about the file."""
    if answer == "OK":
        return "clean"
    if answer.endswith(" FOUND"):
        return "infected " + answer[: -len(" FOUND")].strip().replace(" ", "_")
    return None


class Progress:
    def __init__(self, ids: list[str], out: TextIO | None):
        self.ids, self.out = ids, out
        self.answered: dict[int, str] = {}
        self.errors: dict[int, str] = {}
        self.begun: set[int] = set()

    def say(self, text: str) -> None:
        if self.out:
            self.out.write(text + "\n")

    def begin_next(self, after: int) -> None:
        for i in range(after + 1, len(self.ids)):
            if i not in self.answered and i not in self.errors:
                if i not in self.begun:
                    self.begun.add(i)
                    self.say(f"begin {self.ids[i]}")
                return

    def answer(self, index: int, text: str) -> None:
        result = verdict(text)
        if result is None:
            self.errors[index] = text
        elif index not in self.answered:
            self.answered[index] = result
            self.say(f"done {self.ids[index]} {result}")
        self.begin_next(index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsup-clamscan-worker")
    parser.add_argument("--clamscan", default="clamscan")
    parser.add_argument("--database", default="")
    parser.add_argument("--arg", action="append", default=[], help="extra clamscan argument")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)
    paths = [os.path.abspath(p) for p in args.paths]
    if not paths:
        return 0
    progress = Progress([os.path.basename(p) for p in paths], status_stream())
    index = {p: i for i, p in enumerate(paths)}
    cmd = [args.clamscan, "--no-summary", "--stdout", *args.arg]
    if args.database:
        cmd += ["--database", args.database]
    progress.begin_next(-1)
    proc = subprocess.Popen(cmd + ["--", *paths], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            text=True, errors="replace")
    for line in proc.stdout:
        found = parse_line(line, index)
        if found is not None:
            progress.answer(*found)
    rc = proc.wait()
    if rc < 0:
        sys.stderr.write(f"clamscan died of {signal.Signals(-rc).name}\n")
        sys.stderr.flush()
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)  # die the same way, so qsup records the signal
    missing = [progress.ids[i] for i in range(len(paths)) if i not in progress.answered]
    if rc not in (0, 1) or missing:
        errors = "; ".join(f"{progress.ids[i]}: {t}" for i, t in sorted(progress.errors.items()))
        sys.stderr.write(f"clamscan exit {rc}; no verdict for {len(missing)} file(s)"
                         + (f" ({errors})" if errors else "") + "\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
