"""A persistent worker whose environment breaks while it scans one message, as when
clamd is killed under it: scanning a message with ``X-Break-Env: yes`` creates
$ENVBREAK_FLAG and crashes; while the flag exists a new worker cannot start (it exits
before saying ready) and a running one crashes on any message. The test removes the
flag to mend the environment; the message then scans cleanly."""

import ctypes
import os
import sys
import time

from quarantine.worker import serve

FLAG = os.environ["ENVBREAK_FLAG"]


def scan(path, qid):
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"X-Break-Env: yes" in head and not os.path.exists(FLAG + ".broken-once"):
        open(FLAG + ".broken-once", "w").close()
        open(FLAG, "w").close()
    if os.path.exists(FLAG):
        ctypes.string_at(0)  # a real segfault
    time.sleep(0.01)
    return "clean"


if __name__ == "__main__":
    if os.path.exists(FLAG):
        sys.exit(1)  # the environment is broken: cannot start
    serve(scan)
