"""A persistent worker that says `ready` and then never reads its stdin: a batch
bigger than the pipe must not block qsup (it is a hang, caught by its deadline)."""

import sys
import time

sys.stdout.write("ready\n")
sys.stdout.flush()
time.sleep(3600)
