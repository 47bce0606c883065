"""A persistent-capable worker that logs "PID QID" for every message it scans to
$PIDLOG, and misbehaves on the demo poison headers like the demo scanner."""

import os

from quarantine.demo_scanner import misbehave, poison_kind
from quarantine.worker import serve

BALLAST = []


def scan(path, qid):
    with open(os.environ["PIDLOG"], "a") as fh:
        fh.write(f"{os.getpid()} {qid}\n")
    kind = poison_kind(path)
    if kind:
        misbehave(kind)
    if os.environ.get("GROW_MB"):
        BALLAST.append(bytearray(int(os.environ["GROW_MB"]) * 1024 * 1024))
    return "clean"


if __name__ == "__main__":
    serve(scan)
