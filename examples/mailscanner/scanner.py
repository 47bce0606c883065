#!/usr/bin/env python3
"""A MailScanner-style batch scanner for qsup — one that really segfaults.

What it does with each message (toy versions of what MailScanner does):

* parses it with the stdlib ``email`` package (``policy=email.policy.default``) and
  walks the MIME tree;
* decodes every leaf part (base64, quoted-printable, 7bit/8bit) through a "native"
  decoder — a stand-in for the C/XS code a Perl scanner loads (MIME::Base64's XS,
  Convert::UUlib, HTML::Parser, a libclamav unpacker …);
* flags attachments with dangerous file names (``.exe``, ``.scr``, ``.pif``, a double
  extension like ``invoice.pdf.exe`` …), counts HTML parts, and looks for a phishing
  trick: a link whose visible text is a URL on a different host than its ``href``.

It prints nothing on stdout in one-shot mode; the verdict of each message goes on the
status fd qsup hands it (``done ID VERDICT``): ``clean``, ``clean html=2``,
``dangerous-attachment invoice.exe``, ``phishing www.paypal.com->203.0.113.9``,
``malformed-mime CloseBoundaryNotFoundDefect``, …

The crash
=========

The message that kills it is a *structurally* malformed multipart message:

1. a ``multipart/*`` whose **closing boundary never comes** (``--BOUNDARY--`` is
   missing; the last part runs to the end of the file — the ``email`` package records
   ``CloseBoundaryNotFoundDefect``), and
2. whose last, unterminated part carries a ``Content-Length:`` header claiming **more
   bytes than the decoder's 64 KiB output buffer** (e.g. ``Content-Length:
   4294967040``) while the part itself is a few hundred bytes.

Either malformation alone is harmless: a terminated part is measured by its
boundaries, and an unterminated part without a ``Content-Length`` is measured by what
is left of the file. (``make_backlog.py`` puts such harmless truncated messages in the
backlog too; they are delivered with a ``malformed-mime`` verdict.)

Together they hit a bug of the kind C decoders have had for decades: when the
decoder cannot find the part's end it falls back to the length the part *claims*, and
copies that many bytes into its fixed-size buffer without checking the buffer's size —
``memcpy(out, part, strtoul(content_length))``. Here the buffer is 64 KiB of
``mmap``-ed memory followed by an inaccessible guard page (``PROT_NONE``), and the copy
is a real ``ctypes.memmove``; it runs off the end of the buffer (or off the end of the
part it reads from) and the kernel kills the process with a genuine **SIGSEGV** —
not a Python exception, not ``sys.exit``. The supervisor sees exactly what it sees when
a Perl MailScanner child dies inside an XS module.

Why this shape: the incident in the project's seeds (003, "MS/perl segfaults",
MailScanner list, November 2008) is a weekend backlog of 66,000 mails behind ~100
messages that made MailScanner children segfault — "more likely one of its perl
modules", "possibly malformed HTML spams". Perl itself does not segfault on bad input;
the compiled modules underneath it do, and the classic cause is a length taken from the
message (a header, a uuencode ``begin`` line, an archive directory) trusted for a copy.
Every child that picked up a batch containing one such message died, the batch was
retried whole, died again, and the queue stopped. Run this scanner under qsup and only
the crafted messages are quarantined.

``--checked-decoder`` is "the fixed scanner" (think: the upgraded module): the decoder
checks the claimed length against the buffer and the bytes actually there, and the
crafted message gets a ``malformed-mime`` verdict instead of killing the process. The
example README uses it to show ``qsup release``.

Usage (options come before the message paths)::

    python examples/mailscanner/scanner.py [--checked-decoder] [--startup S] [--delay S] PATH…

It also runs persistent (``QSUP_PERSISTENT=1``: batches on stdin), through
``quarantine.worker.serve``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import email
import email.policy
import mmap
import os
import re
import sys
import time

try:
    from quarantine.worker import serve
except ImportError:  # run from a source checkout with an interpreter that lacks qsup
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    from quarantine.worker import serve

OUT_SIZE = 64 * 1024  # the decoder's output buffer

DANGEROUS = {
    "exe", "scr", "pif", "com", "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "hta",
    "lnk", "cpl", "msi", "jar", "ps1", "reg",
}
ANCHOR = re.compile(rb"<a\s[^>]*href\s*=\s*[\"']?https?://([^/\"' >:]+)[^>]*>\s*(?:<[^>]+>\s*)*"
                    rb"(?:https?://)?(www\.[a-z0-9.-]+|[a-z0-9-]+\.(?:com|net|org|co\.uk))",
                    re.I)


class NativeDecoder:
    """The stand-in for a compiled decoder: a fixed 64 KiB output buffer in an
    ``mmap``-ed arena, followed by a guard page nobody may touch (as the end of a heap
    arena or a thread stack would be). Parts are copied in with ``ctypes.memmove``."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked
        page = mmap.PAGESIZE
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        size = OUT_SIZE + page
        addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap of the decoder arena failed")
        if libc.mprotect(addr + OUT_SIZE, page, 0) != 0:  # PROT_NONE guard page
            raise OSError(ctypes.get_errno(), "mprotect of the guard page failed")
        self.out = addr

    def copy(self, body: bytes, claimed: int | None, terminated: bool) -> bytes:
        """Copy a part's raw body into the output buffer, chunk by chunk, and return
        what was copied. *claimed* is the part's Content-Length header, if any."""
        src = ctypes.create_string_buffer(body, len(body))
        if not terminated and claimed is not None and not self.checked:
            # THE BUG: no boundary to measure the part by, so trust the length it
            # claims, and never compare it with the buffer (or with what is there).
            ctypes.memmove(self.out, src, claimed)  # SIGSEGV when claimed > OUT_SIZE
            return ctypes.string_at(self.out, min(claimed, len(body)))
        # Measured by what is really there (the fix: --checked-decoder always does).
        chunks = []
        for start in range(0, len(body), OUT_SIZE):
            n = min(OUT_SIZE, len(body) - start)
            ctypes.memmove(self.out, ctypes.addressof(src) + start, n)
            chunks.append(ctypes.string_at(self.out, n))
        return b"".join(chunks)


DECODER: NativeDecoder | None = None


def decode_part(part, raw: bytes, terminated: bool) -> bytes:
    """Run the part's encoded body through the native decoder (the copy a C decoder
    works on), then decode the transfer encoding as the email package does."""
    claimed = None
    value = part.get("Content-Length")
    if value is not None and str(value).strip().isdigit():
        claimed = int(str(value).strip())
    DECODER.copy(raw, claimed, terminated)
    return part.get_payload(decode=True) or b""


def raw_body(part) -> bytes:
    payload = part.get_payload(decode=False)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def bad_name(name: str) -> bool:
    """An executable type, also behind a decoy (``scan_0042.pdf.scr``)."""
    return "." in name and name.rsplit(".", 1)[1].strip().lower() in DANGEROUS


def walk(part, terminated: bool, report: dict) -> None:
    """Walk the MIME tree. *terminated* is False for the last part of a multipart
    whose closing boundary never came (and for everything below it)."""
    for defect in part.defects:
        report["defects"].add(type(defect).__name__)
    if part.is_multipart():
        children = part.get_payload()
        open_end = any(type(d).__name__ == "CloseBoundaryNotFoundDefect" for d in part.defects)
        for i, child in enumerate(children):
            last = i == len(children) - 1
            walk(child, terminated and not (open_end and last), report)
        return
    name = part.get_filename()
    if name:
        report["attachments"] += 1
        if bad_name(name):
            report["dangerous"].append(name)
    data = decode_part(part, raw_body(part), terminated)
    if part.get_content_type() == "text/html":
        report["html"] += 1
        match = ANCHOR.search(data)
        if match:
            href, shown = match.group(1).decode("ascii", "replace").lower(), match.group(2).decode(
                "ascii", "replace").lower()
            if not href.endswith(shown.removeprefix("www.")):
                report["phishing"].append(f"{shown}->{href}")


def scan(path: str, qid: str) -> str:
    with open(path, "rb") as fh:
        msg = email.message_from_binary_file(fh, policy=email.policy.default)
    report = {"defects": set(), "attachments": 0, "dangerous": [], "html": 0, "phishing": []}
    walk(msg, True, report)
    if report["dangerous"]:
        return "dangerous-attachment " + " ".join(report["dangerous"][:3])
    if report["phishing"]:
        return "phishing " + report["phishing"][0]
    if report["defects"]:
        return "malformed-mime " + " ".join(sorted(report["defects"])[:3])
    extra = f" html={report['html']}" if report["html"] else ""
    extra += f" attachments={report['attachments']}" if report["attachments"] else ""
    return "clean" + extra


def main() -> None:
    parser = argparse.ArgumentParser(prog="mailscanner-example", description=__doc__.split("\n")[0])
    parser.add_argument("--checked-decoder", action="store_true",
                        help="the fixed scanner: bound the copy by the buffer and the bytes there")
    parser.add_argument("--startup", type=float, default=0.0,
                        help="seconds of start-up cost (rule loading), paid once per process")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="extra seconds per message (to watch `qsup status` at work)")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args()

    def setup() -> None:
        global DECODER
        DECODER = NativeDecoder(checked=args.checked_decoder)
        if args.startup:
            time.sleep(args.startup)

    def scan_slowly(path: str, qid: str) -> str:
        verdict = scan(path, qid)
        time.sleep(args.delay)
        return verdict

    serve(scan_slowly if args.delay else scan, setup=setup, argv=args.paths)


if __name__ == "__main__":
    main()
