"""A worker whose status lines are hostile: binary garbage, an endless line, IDs
outside its batch, thousands of junk lines — then it does its job and exits 0."""

import os
import sys

fd = int(os.environ["QSUP_STATUS_FD"])
os.write(fd, b"\x00\xff\xfe binary \x80\x81\n")
os.write(fd, b"begin " + b"A" * 200_000 + b"\n")  # an over-long line
os.write(fd, b"begin NOT-IN-BATCH\ndone NOT-IN-BATCH infected\n")
os.write(fd, b"garbage line\n" * 20_000)
for path in sys.argv[1:]:
    qid = os.path.basename(path)
    with open(path, "rb") as fh:
        fh.read(100)
    os.write(fd, f"begin {qid}\ndone {qid} clean\n".encode())
sys.exit(0)
