"""A scanner that segfaults on FLAKY_RATE (default 5 %) of the messages it scans,
whatever they are: flaky memory, a library with a race. Nothing is poison."""

import ctypes
import os
import random

from quarantine.worker import serve

RATE = float(os.environ.get("FLAKY_RATE", "0.05"))


def scan(path, qid):
    if random.random() < RATE:
        ctypes.string_at(0)
    return "clean"


if __name__ == "__main__":
    serve(scan)
