"""A worker that records which messages it was given in $RECORD_FILE, then passes."""

import os
import sys

with open(os.environ["RECORD_FILE"], "a") as fh:
    for path in sys.argv[1:]:
        fh.write(os.path.basename(path) + "\n")
sys.exit(0)
