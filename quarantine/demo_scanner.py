"""The bundled demo scanner: a batch worker that really crashes.

A message with a header ``X-Demo-Poison: KIND`` makes it misbehave for real:

  segv     reads address 0 (SIGSEGV)
  abort    calls abort() (SIGABRT)
  memory   allocates memory without bound (until a limit kills it)
  hang     sleeps forever
  exit     exits with status 3

Everything else is "scanned" (its headers read) and passes. Options come before the
message paths::

    python -m quarantine.demo_scanner [--no-progress] [--delay S] [--startup S] PATH…
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

from quarantine.worker import run_oneshot, run_persistent

HEADER = b"x-demo-poison:"


def poison_kind(path: str) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(8192)
    for line in head.split(b"\n"):
        if not line.strip():
            break  # end of headers
        if line.lower().startswith(HEADER):
            return line[len(HEADER):].strip().decode("ascii", "replace").lower()
    return None


def misbehave(kind: str) -> None:
    if kind == "segv":
        ctypes.string_at(0)
    elif kind == "abort":
        os.abort()
    elif kind == "memory":
        hog = []
        for _ in range(64 * 16):  # stops at 16 GiB even with no limit set
            hog.append(bytearray(b"x" * (16 * 1024 * 1024)))
            time.sleep(0.005)
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "exit":
        sys.exit(3)


def make_scan(delay: float):
    def scan(path: str, qid: str) -> str:
        kind = poison_kind(path)
        if kind:
            misbehave(kind)
        if delay:
            time.sleep(delay)
        return "clean"

    return scan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qsup-demo-scanner")
    parser.add_argument("--no-progress", action="store_true", help="write no progress lines")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of 'scanning' per message")
    parser.add_argument("--startup", type=float, default=0.0, help="seconds of start-up cost")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)
    if args.startup:
        time.sleep(args.startup)
    scan = make_scan(args.delay)
    if os.environ.get("QSUP_PERSISTENT") == "1":
        sys.exit(run_persistent(scan, sys.stdin, sys.stdout, progress=not args.no_progress))
    if args.no_progress:
        os.environ.pop("QSUP_STATUS_FD", None)
    sys.exit(run_oneshot(scan, args.paths))


if __name__ == "__main__":
    main()
