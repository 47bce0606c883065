"""A scanner whose crashes follow a script: what a flaky environment did on one
day, replayed exactly. $SCRIPT names a JSON file {ID: [action, ...]}; the n-th scan
of ID does its n-th action: "crash" (SIGSEGV), "slow" (3 s, then clean), "ok".
Scans are counted across processes with one file per scan in $SCRIPT.d/."""

import ctypes
import json
import os
import time

from quarantine.worker import serve

SCRIPT = os.environ["SCRIPT"]
with open(SCRIPT) as fh:
    PLAN = json.load(fh)
COUNTS = SCRIPT + ".d"


def scan(path, qid):
    actions = PLAN.get(qid, ())
    n = 0
    while True:  # claim the next scan number of this ID, atomically
        try:
            os.close(os.open(os.path.join(COUNTS, f"{qid}.{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            n += 1
    action = actions[n] if n < len(actions) else "ok"
    if action == "crash":
        ctypes.string_at(0)
    if action == "slow":
        time.sleep(3)
    return "clean"


if __name__ == "__main__":
    os.makedirs(COUNTS, exist_ok=True)
    serve(scan)
