"""qsup's log lines (docs/reference.md §8): one line per event, with a timestamp, to stderr by
default, or to the local syslog socket (RFC 3164, facility mail) or the journal's
native socket (structured fields). A line about one message is logged with
``extra={"qid": ID}``: the journal gets it as ``QSUP_QUEUE_ID=``, and the other
targets always show the ID in the line.

The sockets are datagram sockets written with a short timeout: a syslog daemon that
stops reading must not stall the mail. A line that cannot be sent goes to stderr
instead, and for a few seconds every line does, before the socket is tried again.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import time

from quarantine.errors import ConfigError

IDENT = "qsup"
FACILITY_MAIL = 2
SOCKETS = {"syslog": "/dev/log", "journald": "/run/systemd/journal/socket"}
SEND_TIMEOUT = 0.5  # seconds one line may wait for a busy log daemon
RETRY_AFTER = 5.0  # seconds of stderr after a failed send, before the socket is tried again
MAX_BYTES = {"syslog": 8192, "journald": 48 * 1024}  # of a message (rsyslog's default limit)
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def severity(levelno: int) -> int:
    """The syslog severity of a logging level."""
    for at_least, sev in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                          (logging.INFO, 6)):
        if levelno >= at_least:
            return sev
    return 7


def text_of(record: logging.LogRecord) -> str:
    """The message on one line, naming its queue ID if the text does not."""
    text = record.getMessage()
    qid = getattr(record, "qid", None)
    if qid and qid not in text:
        text = f"{qid}: {text}"
    return text.replace("\r", "\\r").replace("\n", "\\n")


class LineFormatter(logging.Formatter):
    """``2026-12-02T03:04:05Z qsup[PID]: LEVEL: message`` (UTC)."""

    converter = time.gmtime

    def __init__(self):
        super().__init__(f"%(asctime)s {IDENT}[%(process)d]: %(levelname)s: %(message)s",
                         "%Y-%m-%dT%H:%M:%SZ")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = text_of(record)
        return super().formatMessage(record)


def rfc3164(record: logging.LogRecord) -> bytes:
    """``<PRI>Mmm dd hh:mm:ss qsup[PID]: LEVEL: message``, as syslog(3) writes to
    /dev/log (local time, no host name: the daemon adds it)."""
    t = time.localtime(record.created)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    pri = FACILITY_MAIL * 8 + severity(record.levelno)
    line = f"<{pri}>{stamp} {IDENT}[{record.process}]: {record.levelname}: {text_of(record)}"
    return line.encode("utf-8", "replace")[:MAX_BYTES["syslog"]]


def journal_fields(record: logging.LogRecord) -> bytes:
    """The journal's native protocol: ``KEY=value`` lines; a value with a newline in
    the binary form (name, newline, 64-bit little-endian length, value)."""
    fields = {"MESSAGE": record.getMessage(), "PRIORITY": severity(record.levelno),
              "SYSLOG_FACILITY": FACILITY_MAIL, "SYSLOG_IDENTIFIER": IDENT,
              "SYSLOG_PID": record.process, "CODE_FILE": record.pathname,
              "CODE_LINE": record.lineno, "CODE_FUNC": record.funcName}
    if qid := getattr(record, "qid", None):
        fields["QSUP_QUEUE_ID"] = qid
    out = []
    for name, value in fields.items():
        raw = str(value).encode("utf-8", "replace")[:MAX_BYTES["journald"]]
        if b"\n" in raw:
            out.append(name.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n")
        else:
            out.append(name.encode() + b"=" + raw + b"\n")
    return b"".join(out)


class SocketHandler(logging.Handler):
    """Log records as datagrams to a local Unix socket (syslog or journald)."""

    def __init__(self, kind: str, path: str, clock=time.monotonic):
        super().__init__()
        self.kind, self.path, self.clock = kind, path, clock
        self.encode = rfc3164 if kind == "syslog" else journal_fields
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(LineFormatter())
        self._sock: socket.socket | None = None
        self._down_until = 0.0

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        if self.clock() < self._down_until:
            self.fallback.emit(record)
            return
        try:
            data = self.encode(record)
            for attempt in (1, 2):  # the daemon may have restarted: connect again once
                try:
                    if self._sock is None:
                        self.connect()
                    self._sock.send(data)
                    return
                except OSError:
                    self._drop()
                    if attempt == 2:
                        raise
        except OSError as exc:
            self._down_until = self.clock() + RETRY_AFTER
            self.fallback.emit(record)
            self.fallback.emit(logging.makeLogRecord({
                "name": record.name, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": "cannot log to %s (%s): logging to stderr for %.0fs",
                "args": (self.path, exc.strerror or exc, RETRY_AFTER)}))
        except Exception:
            self.handleError(record)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._drop()
        super().close()


def handler_for(target: str, socket_path: str | None = None) -> logging.Handler:
    """The handler of config key ``log``; a socket that cannot be reached is a
    ConfigError naming it."""
    if target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
        return handler
    path = socket_path or SOCKETS[target]
    sock = SocketHandler(target, path)
    try:
        sock.connect()
    except OSError as exc:
        key = "log_socket" if socket_path else "log"
        raise ConfigError(f"{key}: cannot log to {target} socket {path}: "
                          f"{exc.strerror or exc}") from None
    return sock
