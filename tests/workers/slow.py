"""A worker that writes progress lines and takes SLOW_SECONDS per message; it
touches $SLOW_STARTED once it runs so a test knows the batch is in flight."""

import os
import time

from quarantine.worker import serve


def scan(path, qid):
    started = os.environ.get("SLOW_STARTED")
    if started:
        open(started, "a").close()
    time.sleep(float(os.environ.get("SLOW_SECONDS", "0.5")))
    with open(path, "rb") as fh:
        fh.read(4096)
    return "clean"


if __name__ == "__main__":
    serve(scan)
