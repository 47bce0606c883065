"""The realsys tests' scanner: crashes for real (SIGSEGV) on a message carrying the
header ``X-Qsup-Test: poison``, says ``clean`` for the others.

    python tests/realsys/poison_scanner.py [--fixed] PATH…

``--fixed`` is the scanner after the bug fix: it survives poison (verdict
``poison-survived``), so a released message goes through. With ``QSUP_TEST_SCANNED``
set, the ID of every message scanned is appended to that file (what was scanned, for
tests that check nothing is delivered unscanned).
"""

import ctypes
import os
import sys

from quarantine.worker import serve

MARKER = b"\nX-Qsup-Test: poison"


def main() -> None:
    fixed = "--fixed" in sys.argv[1:]
    paths = [a for a in sys.argv[1:] if a != "--fixed"]

    scanned = os.environ.get("QSUP_TEST_SCANNED")

    def scan(path: str, qid: str) -> str:
        with open(path, "rb") as fh:
            data = fh.read()
        if scanned:
            with open(scanned, "a") as log:
                log.write(f"{qid}\n")
        if MARKER in data:
            if fixed:
                return "poison-survived"
            ctypes.string_at(0)  # a real segfault, as a scanner's C module would
        return "clean"

    serve(scan, argv=paths)


if __name__ == "__main__":
    main()
