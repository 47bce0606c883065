"""A worker that cannot get going: it exits 1 before reading anything."""

import sys

sys.exit(1)
