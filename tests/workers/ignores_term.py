"""A worker that ignores SIGTERM and takes its time on every message; it touches
$TERM_STARTED once it scans so a test knows the batch is in flight."""

import os
import signal
import sys
import time

from quarantine.worker import serve

signal.signal(signal.SIGTERM, signal.SIG_IGN)


def scan(path, qid):
    started = os.environ.get("TERM_STARTED")
    if started:
        open(started, "a").close()
    time.sleep(float(sys.argv[1]) if False else 0.5)
    return "clean"


if __name__ == "__main__":
    serve(scan, argv=sys.argv[1:])
