"""A scanner that leaks LEAK_MB (default 2) MB per message it scans and never gives
it back: a long-lived process grows until its memory limit, whatever it reads."""

import os

from quarantine.worker import serve

kept = []
MB = int(os.environ.get("LEAK_MB", "2"))


def scan(path, qid):
    kept.append(bytearray(os.urandom(16)) * (MB * 65536))
    return "clean"


if __name__ == "__main__":
    serve(scan)
