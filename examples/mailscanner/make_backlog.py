#!/usr/bin/env python3
"""Write a backlog of realistic mail into a qsup spool, with crafted poison mixed in.

    python examples/mailscanner/make_backlog.py SPOOL --messages 2000 --poison 10

Creates SPOOL/{tmp,incoming,outgoing,quarantine} if needed and writes MESSAGES files
into SPOOL/incoming/ — each one created in SPOOL/tmp/ and then rename()d into
incoming/ (the maildir rule: qsup never sees a half-written file), with modification
times one second apart so the oldest comes first. The mix:

* plain text, quoted-printable text, HTML-only newsletters, multipart/alternative;
* multipart/mixed with base64 attachments (PDF, ZIP, CSV), some nested inside a
  multipart/alternative, some forwarded as message/rfc822;
* attachments with dangerous names (``invoice.exe``, ``scan.pdf.scr`` …);
* phishing-style HTML (link text showing one host, href pointing at another);
* a few *harmlessly* malformed messages (multipart with no closing boundary, but no
  Content-Length): the scanner survives those and says ``malformed-mime``;
* POISON crafted messages that make ``scanner.py`` segfault: a multipart whose
  closing boundary never comes and whose last part claims ``Content-Length:
  4294967040`` (see the docstring of scanner.py).

Queue IDs look like Postfix's short queue IDs (10 upper-case hex digits). The IDs of
the crafted messages are printed (and written to --manifest as JSON with all IDs), so
a test or an administrator can check that exactly those end up in quarantine/.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time

WORDS = ("invoice meeting report quarter budget holiday schedule update offer order "
         "delivery contract review agenda project minutes draft signed attached "
         "please thanks regards tomorrow friday office team customer account").split()
SENDERS = ("alice@example.org", "bob@example.com", "billing@shop.example", "news@list.example",
           "hr@corp.example", "noreply@bank.example", "carol@partner.example.net")
DANGEROUS = ("invoice.exe", "scan_0042.pdf.scr", "update.pif", "photo.jpg.vbs", "setup.bat",
             "document.js", "payment.hta")
HARMLESS = ("report.pdf", "q3-figures.csv", "photos.zip", "minutes.pdf", "agenda.txt")

POISON_CLAIM = 4294967040  # what the crafted part claims; the scanner's buffer is 64 KiB


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def paragraphs(rng: random.Random, n: int) -> str:
    lines = []
    for _ in range(n):
        text = words(rng, 15, 60)
        while text:  # wrap at ~70 columns
            cut = text.rfind(" ", 0, 70) if len(text) > 70 else len(text)
            cut = cut if cut > 0 else len(text)
            lines.append(text[:cut])
            text = text[cut:].lstrip()
        lines.append("")
    return "\r\n".join(lines)


def b64(data: bytes) -> str:
    enc = base64.b64encode(data).decode()
    return "\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def headers(i: int, rng: random.Random, subject: str, when: float, extra: list[str]) -> str:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    lines = [
        f"Received: from mx{i % 7}.example.net (mx{i % 7}.example.net [198.51.100.{i % 250 + 1}])",
        f"\tby mail.example.ac.uk with ESMTP; {date}",
        f"From: {rng.choice(SENDERS)}",
        f"To: user{i % 53}@example.ac.uk",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{i}.{rng.randrange(16**8):08x}@example.net>",
        "MIME-Version: 1.0",
    ]
    return "\r\n".join(lines + extra) + "\r\n\r\n"


def attachment(rng: random.Random, name: str, boundary: str) -> str:
    kind = {"pdf": "application/pdf", "csv": "text/csv", "zip": "application/zip",
            "txt": "text/plain"}.get(name.rsplit(".", 1)[-1], "application/octet-stream")
    magic = {"application/pdf": b"%PDF-1.4\n", "application/zip": b"PK\x03\x04"}.get(kind, b"")
    data = magic + bytes(rng.randrange(256) for _ in range(rng.randint(200, 6000)))
    return (f"--{boundary}\r\nContent-Type: {kind}; name=\"{name}\"\r\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(data)}\r\n")


def html(rng: random.Random, phishing: bool) -> str:
    if phishing:
        link = ('<a href="http://203.0.113.9/secure/login.php">https://www.paypal.com/signin</a>')
    else:
        link = '<a href="https://www.example.org/news/latest">www.example.org</a>'
    body = "".join(f"<p>{words(rng, 10, 40)}</p>\r\n" for _ in range(rng.randint(1, 4)))
    return f"<html><body>\r\n<h1>{words(rng, 2, 5).title()}</h1>\r\n{body}<p>{link}</p>\r\n</body></html>\r\n"


def qp(text: str) -> str:
    import quopri

    return quopri.encodestring(text.encode("utf-8")).decode("ascii")


def make_message(i: int, rng: random.Random, when: float, kind: str) -> bytes:
    b1, b2 = f"=_b1_{rng.randrange(16**8):08x}", f"=_b2_{rng.randrange(16**8):08x}"
    subject = words(rng, 2, 6).capitalize()
    if kind == "plain":
        out = headers(i, rng, subject, when, ["Content-Type: text/plain; charset=us-ascii"])
        out += paragraphs(rng, rng.randint(1, 6))
    elif kind == "qp":
        out = headers(i, rng, subject, when, ["Content-Type: text/plain; charset=utf-8",
                                              "Content-Transfer-Encoding: quoted-printable"])
        out += qp(paragraphs(rng, rng.randint(1, 4)).replace("regards", "Grüße — regards"))
    elif kind in ("html", "phishing"):
        if kind == "phishing":
            subject = "Your account has been limited"
        out = headers(i, rng, subject, when, ["Content-Type: text/html; charset=us-ascii"])
        out += html(rng, kind == "phishing")
    elif kind == "alternative":
        out = headers(i, rng, subject, when, [f'Content-Type: multipart/alternative; boundary="{b1}"'])
        out += (f"--{b1}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{paragraphs(rng, 2)}\r\n"
                f"--{b1}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{qp(html(rng, False))}\r\n--{b1}--\r\n")
    elif kind in ("attachment", "dangerous"):
        name = rng.choice(DANGEROUS if kind == "dangerous" else HARMLESS)
        if kind == "dangerous":
            subject = rng.choice(("Invoice overdue", "Scanned document", "Payment advice"))
        out = headers(i, rng, subject, when, [f'Content-Type: multipart/mixed; boundary="{b1}"'])
        out += "This is a multi-part message in MIME format.\r\n\r\n"
        if rng.random() < 0.5:  # body as text/plain + text/html nested in an alternative
            out += (f'--{b1}\r\nContent-Type: multipart/alternative; boundary="{b2}"\r\n\r\n'
                    f"--{b2}\r\nContent-Type: text/plain\r\n\r\n{paragraphs(rng, 1)}\r\n"
                    f"--{b2}\r\nContent-Type: text/html\r\n\r\n{html(rng, False)}\r\n--{b2}--\r\n")
        else:
            out += f"--{b1}\r\nContent-Type: text/plain\r\n\r\n{paragraphs(rng, 2)}\r\n"
        for _ in range(rng.randint(1, 2)):
            out += attachment(rng, name, b1)
            name = rng.choice(HARMLESS)
        out += f"--{b1}--\r\n"
    elif kind == "forward":
        inner = make_message(i + 1_000_000, random.Random(rng.randrange(2**32)), when - 86400,
                             "attachment").decode()
        out = headers(i, rng, "Fwd: " + subject, when, [f'Content-Type: multipart/mixed; boundary="{b1}"'])
        out += (f"--{b1}\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
                f"--{b1}\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--{b1}--\r\n")
    elif kind == "truncated":  # harmless malformation: no closing boundary, no length
        out = headers(i, rng, subject, when, [f'Content-Type: multipart/mixed; boundary="{b1}"'])
        out += (f"--{b1}\r\nContent-Type: text/plain\r\n\r\n{paragraphs(rng, 1)}\r\n"
                f"{attachment(rng, 'report.pdf', b1)}")  # ... and the file ends
    elif kind == "poison":
        # The crafted message: the closing boundary never comes AND the unterminated
        # last part claims a Content-Length far beyond the decoder's 64 KiB buffer.
        out = headers(i, rng, rng.choice(("Re: your order", "Delivery notification", "Hi")), when,
                      [f'Content-Type: multipart/mixed; boundary="{b1}"'])
        out += (f"--{b1}\r\nContent-Type: text/plain\r\n\r\n{paragraphs(rng, 1)}\r\n"
                f"--{b1}\r\nContent-Type: application/octet-stream; name=\"document.pdf\"\r\n"
                f"Content-Transfer-Encoding: base64\r\n"
                f"Content-Length: {POISON_CLAIM}\r\n\r\n"
                f"{b64(bytes(rng.randrange(256) for _ in range(300)))}\r\n")  # no --b1--
    else:
        raise ValueError(kind)
    return out.encode("utf-8")


KINDS = (("plain", 30), ("qp", 8), ("html", 12), ("phishing", 2), ("alternative", 20),
         ("attachment", 18), ("dangerous", 3), ("forward", 5), ("truncated", 2))


def build_backlog(spool: str, messages: int, poison: int, seed: int = 2008,
                  start: float | None = None) -> tuple[list[str], list[str]]:
    """Write *messages* messages (of which *poison* are crafted) into *spool*.
    Returns (all IDs oldest first, the crafted IDs)."""
    if not 0 <= poison <= messages:
        raise ValueError("--poison must be between 0 and --messages")
    rng = random.Random(seed)
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        os.makedirs(os.path.join(spool, sub), exist_ok=True)
    os.chmod(os.path.join(spool, "quarantine"), 0o700)
    start = time.time() - messages if start is None else start
    bad = set(rng.sample(range(messages), poison))
    names = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    ids, crafted = [], []
    seen = {name for sub in ("incoming", "outgoing", "quarantine")
            for name in os.listdir(os.path.join(spool, sub))}
    for i in range(messages):
        qid = f"{rng.randrange(16**10):010X}"
        while qid in seen:
            qid = f"{rng.randrange(16**10):010X}"
        seen.add(qid)
        kind = "poison" if i in bad else rng.choices(names, weights)[0]
        when = start + i
        tmp = os.path.join(spool, "tmp", qid)
        with open(tmp, "wb") as fh:
            fh.write(make_message(i, rng, when, kind))
            fh.flush()
            os.fsync(fh.fileno())
        os.utime(tmp, (when, when))
        os.rename(tmp, os.path.join(spool, "incoming", qid))
        ids.append(qid)
        if kind == "poison":
            crafted.append(qid)
    return ids, crafted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spool", help="spool directory (created if missing)")
    parser.add_argument("--messages", type=int, default=2000, help="how many messages (default 2000)")
    parser.add_argument("--poison", type=int, default=10, help="how many crafted ones among them (default 10)")
    parser.add_argument("--seed", type=int, default=2008, help="random seed (default 2008)")
    parser.add_argument("--manifest", help="write {'ids': [...], 'poison': [...]} as JSON here")
    args = parser.parse_args(argv)
    if args.messages < 0 or not 0 <= args.poison <= args.messages:
        parser.error("need 0 <= --poison <= --messages")
    ids, crafted = build_backlog(args.spool, args.messages, args.poison, args.seed)
    if args.manifest:
        with open(args.manifest, "w") as fh:
            json.dump({"ids": ids, "poison": crafted}, fh, indent=1)
    print(f"wrote {len(ids)} messages to {os.path.join(args.spool, 'incoming')}, "
          f"{len(crafted)} of them crafted to crash scanner.py")
    if crafted:
        print("crafted: " + " ".join(crafted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
