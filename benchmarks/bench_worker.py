"""The worker every benchmark policy runs: the bundled demo scanner, unchanged in
what it does per message (reads the headers, really segfaults on
``X-Demo-Poison: segv``, sleeps ``--delay`` seconds, pays ``--startup`` once per
process), plus the two things the demo scanner does not offer:

* ``--no-progress`` in persistent mode: the persistent protocol without
  ``begin``/``done`` lines (only ``ready`` and ``end BATCH``), i.e. a long-lived
  scanner that only says "batch finished" — the blind case;
* ``--noop``: scan nothing (no file is opened), for the overhead measurement.

One-shot mode (no ``QSUP_PERSISTENT=1``) is handed to the demo scanner's own main().

    python benchmarks/bench_worker.py [--delay S] [--startup S] [--no-progress] [--noop] [PATH…]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Started with ``python -S`` (see WORKER): no site-packages, so the start-up this
# worker pays is the simulated --startup, not the interpreter scanning site-packages
# (an editable install's import hook alone costs ~20 ms of CPU per start, paid by
# every policy for every crash). The package is imported from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quarantine import demo_scanner
from quarantine.worker import run_oneshot, run_persistent

WORKER = [sys.executable, "-S", os.path.abspath(__file__)]  # how the benchmarks start it


def run_blind_persistent(scan, stdin, stdout) -> int:
    """The persistent protocol of quarantine/worker.py without progress lines."""
    return run_persistent(scan, stdin, stdout, progress=False)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench_worker")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--startup", type=float, default=0.0)
    parser.add_argument("--noop", action="store_true", help="open no file, scan nothing")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)
    persistent = os.environ.get("QSUP_PERSISTENT") == "1"
    if not persistent and not args.noop:
        demo_scanner.main(argv)  # one-shot: exactly the bundled demo scanner
        return
    if args.startup:
        time.sleep(args.startup)
    scan = (lambda path, qid: None) if args.noop else demo_scanner.make_scan(args.delay)
    if not persistent:
        if args.no_progress:
            os.environ.pop("QSUP_STATUS_FD", None)
        sys.exit(run_oneshot(scan, args.paths))
    if args.no_progress:
        sys.exit(run_blind_persistent(scan, sys.stdin, sys.stdout))
    sys.exit(run_persistent(scan, sys.stdin, sys.stdout))


if __name__ == "__main__":
    main()
