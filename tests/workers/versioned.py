"""A scanner whose bug depends on its version: under the version in $VERSION_FILE
"1" it segfaults on every message carrying `X-Demo-Poison`; under "2" (fixed) it
scans them cleanly; under "broken" it segfaults on everything (a bad update)."""

import ctypes
import os
import sys
import time

from quarantine.worker import serve

VERSION_FILE = os.environ["VERSION_FILE"]


def version() -> str:
    with open(VERSION_FILE) as fh:
        return fh.read().strip()


def scan(path, qid):
    v = version()
    log = os.environ.get("SCAN_LOG")
    if log:  # a re-test is scanned where it lies in the quarantine
        with open(log, "a") as fh:
            fh.write(f"{time.time():.3f} {'retest' if '/quarantine/' in path else 'scan'} {qid}\n")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if v == "broken" or (v in ("1", "1b") and b"X-Demo-Poison:" in head):
        ctypes.string_at(0)
    return "clean"


if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:
        print(f"versioned-scanner {version()}")
        sys.exit(0)
    serve(scan)
