"""The no-op scanner of postfix_speed.py: every message is "clean", nothing is read.
Started with ``python -S`` and the package imported from this checkout, like
bench_worker.py, so each batch pays the interpreter's start-up only."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quarantine.worker import serve  # noqa: E402  (after the path above)

if __name__ == "__main__":
    serve(lambda path, qid: "clean")
