"""Status lines from a worker: a non-blocking byte stream split into bounded lines.
Pure: no processes, no I/O (the pool reads, this splits)."""

from __future__ import annotations

MAX_LINE = 512  # longer status lines are dropped and counted, never trusted


class LineReader:
    """Splits a non-blocking byte stream into bounded lines."""

    def __init__(self) -> None:
        self.buf = b""
        self.overlong = 0
        self._dropping = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        lines = []
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE:
                    if not self._dropping:
                        self.overlong += 1
                    self._dropping, self.buf = True, b""
                return lines
            line, self.buf = self.buf[:nl], self.buf[nl + 1 :]
            if self._dropping or len(line) > MAX_LINE:
                if not self._dropping:
                    self.overlong += 1
                self._dropping = False
                continue
            lines.append(line)
