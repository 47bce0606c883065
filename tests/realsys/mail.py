"""Messages for the realsys scanner tests, written into a qsup spool the way writers
must (tmp/, then rename() into incoming/), oldest first."""

from __future__ import annotations

import base64
import os
from pathlib import Path

# The ClamAV test signature's marker (harness.write_clamav_signature) and the tiny
# SpamAssassin rule set's subject marker (harness.TINY_RULES).
AV_MARKER = b"QSUP-TEST-MARKER-5d1f3a9c"
SPAM_SUBJECT = "qsup-spam-marker: cheap watches"


def plain(i: int, subject: str = "", body: bytes = b"") -> bytes:
    return (f"From: Sender {i} <s{i}@example.org>\r\nTo: rcpt@example.net\r\n"
            f"Subject: {subject or f'message {i}'}\r\nMessage-ID: <rs-{i}@example.org>\r\n"
            f"Date: Sat, 21 Nov 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode() + (
        body or f"Hello, this is message {i}.\r\n".encode())


def with_attachment(i: int, payload: bytes) -> bytes:
    """multipart/mixed with *payload* base64-encoded in an attachment."""
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (f"From: Sender {i} <s{i}@example.org>\r\nTo: rcpt@example.net\r\n"
            f"Subject: invoice {i}\r\nMessage-ID: <rs-{i}@example.org>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n'
            f"--b{i}\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
            f'--b{i}\r\nContent-Type: application/octet-stream; name="invoice.bin"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n").encode() + encoded + f"--b{i}--\r\n".encode()


def infected(i: int) -> bytes:
    """Half of them carry the marker in the text, half in a base64 attachment."""
    if i % 2:
        return with_attachment(i, b"\x00\x01binary junk " + AV_MARKER + b" more junk\x02")
    return plain(i, body=b"Please run this: " + AV_MARKER + b"\r\n")


def write_spool(spool: Path, messages: dict[str, bytes]) -> list[str]:
    """The messages into SPOOL/incoming, mtimes one second apart in the given order."""
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    start = 1_790_000_000
    for n, (qid, data) in enumerate(messages.items()):
        tmp = spool / "tmp" / qid
        tmp.write_bytes(data)
        os.utime(tmp, (start + n, start + n))
        os.rename(tmp, spool / "incoming" / qid)
    return list(messages)


def outgoing(spool: Path) -> set[str]:
    return set(os.listdir(spool / "outgoing"))
