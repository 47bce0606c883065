"""Tagged copies into Postfix over SMTP: a held queue file cannot be edited, so a
spam verdict's headers go on a copy that is re-injected, and the original is
deleted once Postfix has queued the copy.

The re-injection service is an ``smtpd`` of its own on a loopback port (master.cf,
see ``examples/mailscanner/POSTFIX.md``) that skips header_checks (the copy is not
held again by the HOLD rule, nor edited twice by other rules) and puts what it
receives on hold itself (``smtpd_data_restrictions = check_client_access
static:HOLD``). The copy waits on hold under its new queue ID until qsup has deleted
the original and releases it: the copy cannot leave Postfix before qsup knows its
ID, so a qsup killed at any instant finds out on its next start whether the copy was
queued, by the header ``X-Qsup-Reinjected: QUEUE_ID.FINGERPRINT`` it carries — never
two copies delivered, never none (:meth:`qsup_postfix.queue.PostfixQueue.apply`).

The envelope is the held message's own (sender and recipients from its queue file):
the copy goes where the message was addressed, and nowhere else.
"""

from __future__ import annotations

import re
import smtplib
import socket
from typing import BinaryIO

from qsup_postfix.commands import PostfixError
from quarantine.errors import ConfigError
from quarantine.ids import is_queue_id

HEADER = "X-Qsup-Reinjected"
_QUEUED = re.compile(rb"queued as ([A-Za-z0-9]+)")
_ADDRESS = re.compile(r"(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+|localhost)):(\d{1,5})")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Za-z:.]+\]")
_CHUNK = 64 * 1024


def token(qid: str, fp: str) -> str:
    """What the copy of held message *qid* (fingerprint *fp*) carries in HEADER."""
    return f"{qid}.{fp}"


def parse_address(value: str) -> tuple[str, int]:
    """``127.0.0.1:10026`` or ``[::1]:10026`` -> (host, port); a loopback address
    only, since the service skips the checks other mail goes through."""
    found = _ADDRESS.fullmatch(value.strip())
    port = int(found.group(3)) if found else 0
    host = (found.group(1) or found.group(2)) if found else ""
    if not found or not 0 < port < 65536 or not _loopback(host):
        raise ConfigError(f"[plugin.postfix] reinject: {value!r} is not a loopback HOST:PORT "
                          f"(like 127.0.0.1:10026)")
    return host, port


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def smtp_address(address: str) -> str:
    """An address as Postfix keeps it (internal form) written for MAIL FROM / RCPT TO."""
    if not address:
        return ""
    if any(c in address for c in "\r\n\0<>") or len(address) > 998 or not address.isascii():
        raise PostfixError(f"cannot re-inject to the address {address[:80]!r}")
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if domain and not _DOMAIN.fullmatch(domain):
        raise PostfixError(f"cannot re-inject to the address {address[:80]!r}")
    if not _ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}" if at else local


class Reinjector:
    """One SMTP transaction per copy to the re-injection service."""

    def __init__(self, address: str, timeout: float):
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = timeout

    def send(self, sender: str, recipients: list[str], top: bytes, content: BinaryIO) -> str:
        """*top* (header lines) then *content* (the message as postcat prints it,
        LF line ends) to *recipients*; the queue ID Postfix gave the copy."""
        try:
            with smtplib.SMTP(self.host, self.port, local_hostname="localhost", timeout=self.timeout) as smtp:
                _expect(smtp.ehlo(), (250,), "EHLO")
                _expect(smtp.docmd("MAIL", f"FROM:<{smtp_address(sender)}>"), (250,), "MAIL FROM")
                for rcpt in recipients:
                    _expect(smtp.docmd("RCPT", f"TO:<{smtp_address(rcpt)}>"), (250, 251), f"RCPT TO {rcpt}")
                _expect(smtp.docmd("DATA"), (354,), "DATA")
                for chunk in wire(top, content):
                    smtp.send(chunk)
                reply = _expect(smtp.getreply(), (250,), "end of DATA")
        except (OSError, smtplib.SMTPException, socket.timeout) as exc:
            raise PostfixError(f"re-injection service {self.address}: {exc}") from None
        found = _QUEUED.search(reply)
        if found is None or not is_queue_id(found.group(1).decode()):
            raise PostfixError(f"re-injection service {self.address}: no queue ID in {reply[:200]!r}")
        return found.group(1).decode()


def _expect(answer: tuple[int, bytes], codes: tuple[int, ...], step: str) -> bytes:
    code, text = answer
    if code not in codes:
        raise PostfixError(f"{step}: {code} {text.decode('utf-8', 'replace')[:200]}")
    return text


def wire(top: bytes, content: BinaryIO):
    """The DATA section: CRLF line ends, dot-stuffed, ending with the lone dot; in
    chunks, so memory does not grow with the message."""
    out, size, at_start = [], 0, True
    for source in (_lines_of(top), iter(lambda: content.readline(_CHUNK), b"")):
        for line in source:
            if at_start and line.startswith(b"."):
                line = b"." + line
            at_start = line.endswith(b"\n")
            if at_start:
                line = line[:-1] + b"\r\n"
            out.append(line)
            size += len(line)
            if size >= _CHUNK:
                yield b"".join(out)
                out, size = [], 0
    out.append(b".\r\n" if at_start else b"\r\n.\r\n")
    yield b"".join(out)


def _lines_of(data: bytes):
    return iter(data.splitlines(keepends=True))
