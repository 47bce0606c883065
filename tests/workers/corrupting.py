"""A scanner with a heap-corruption bug: a message with ``X-Corrupt: yes`` leaves
the process corrupted without crashing it, and the *next* message this process
scans segfaults (whatever it is). The corrupting message itself is fine."""

import ctypes

from quarantine.worker import serve

corrupted = False


def scan(path, qid):
    global corrupted
    if corrupted:
        ctypes.string_at(0)  # a real SIGSEGV, blamed on an innocent message
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"X-Corrupt: yes" in head:
        corrupted = True
    return "clean"


if __name__ == "__main__":
    serve(scan)
