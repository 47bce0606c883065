"""A worker that closes stdout, stderr and the status fd, keeps running a while,
then exits 0: qsup must judge it by its exit, not by its pipes."""

import os
import sys
import time

for fd in (1, 2, int(os.environ.get("QSUP_STATUS_FD", "1"))):
    try:
        os.close(fd)
    except OSError:
        pass
time.sleep(1.0)
sys.exit(0)
