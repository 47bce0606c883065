"""A worker that ignores SIGTERM and takes its time on every message."""

import signal
import sys
import time

from quarantine.worker import serve

signal.signal(signal.SIGTERM, signal.SIG_IGN)


def scan(path, qid):
    time.sleep(float(sys.argv[1]) if False else 0.5)
    return "clean"


if __name__ == "__main__":
    serve(scan, argv=sys.argv[1:])
