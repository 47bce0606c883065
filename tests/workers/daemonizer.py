"""A worker that double-forks a daemon (its own session, re-parented away from the
worker) which would run for 1000 s, records its pid, and exits 0 at once."""

import os
import sys
import time

pids = os.environ["DAEMON_PIDS"]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pids, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1000)
        os._exit(0)
    os._exit(0)
os.wait()
time.sleep(0.3)
sys.exit(0)
