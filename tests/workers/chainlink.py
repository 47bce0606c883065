"""A link of a scanner chain whose behaviour each message sets in a header of its
own: ``X-Link-NAME: ACTION`` for the link named $LINK_NAME, ACTION being ``segv``,
``hang``, ``exit`` (status 3) or a verdict (``infected Eicar``, ``spam 9.0/5.0``).
Without the header: ``clean``. Every scan is logged to $CHAIN_LOG as
``NAME PID QID``, so a test sees the order of the links and who scanned what. While
the file $LINK_BROKEN_FILE exists, every scan segfaults (a broken update)."""

import ctypes
import os
import sys
import time

from quarantine.worker import serve

NAME = os.environ["LINK_NAME"]
FIELD = f"x-link-{NAME}:".encode()


def action(path):
    with open(path, "rb") as fh:
        for line in fh.read(8192).split(b"\r\n\r\n", 1)[0].splitlines():
            if line.lower().startswith(FIELD):
                return line[len(FIELD):].decode().strip()
    return "clean"


def scan(path, qid):
    with open(os.environ["CHAIN_LOG"], "a") as log:
        log.write(f"{NAME} {os.getpid()} {qid}\n")
    todo = action(path)
    broken = os.environ.get("LINK_BROKEN_FILE")
    if broken and os.path.exists(broken):  # a broken update: every scan dies
        todo = "segv"
    if todo == "segv":
        ctypes.string_at(0)
    if todo == "hang":
        time.sleep(3600)
    if todo == "exit":
        sys.exit(3)
    return todo


if __name__ == "__main__":
    serve(scan)
