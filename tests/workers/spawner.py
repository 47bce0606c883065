"""A worker that leaves descendants behind: for a message with the header
``X-Demo-Poison: hang-family`` it starts a child and a daemonised grandchild (its
own session), records their pids in $SPAWNER_PIDS, and hangs. Others pass."""

import os
import subprocess
import sys
import time

from quarantine.demo_scanner import poison_kind
from quarantine.worker import serve


def scan(path, qid):
    if poison_kind(path) == "hang-family":
        child = subprocess.Popen(["sleep", "1000"])
        daemon = subprocess.Popen(["sleep", "1001"], start_new_session=True)
        with open(os.environ["SPAWNER_PIDS"], "a") as fh:
            fh.write(f"{child.pid}\n{daemon.pid}\n")
        while True:
            time.sleep(3600)
    return "clean"


if __name__ == "__main__":
    serve(scan, argv=sys.argv[1:])
