"""A bounded look at a message's headers: never the whole body."""

from __future__ import annotations

from email.header import decode_header, make_header

HEAD_BYTES = 16384  # enough for the headers of any sane message
SHOWN = ("From", "To", "Subject", "Date", "Message-Id", "Return-Path")  # as parse() spells them


def _decode(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # malformed encoded-words are exactly what poison looks like
        return value


def parse(head: bytes, limit: int = 4096) -> dict[str, str]:
    """Unfolded headers of *head* (the first bytes of a message), first of each name.
    Values are decoded (RFC 2047), made printable and cut to a sane length."""
    text = head.decode("utf-8", "replace")
    end = len(text)
    for sep in ("\r\n\r\n", "\n\n"):
        pos = text.find(sep)
        if pos >= 0:
            end = min(end, pos)
    out: dict[str, str] = {}
    name = None
    for line in text[:end].splitlines():
        if line[:1] in (" ", "\t") and name:
            out[name] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:
            name = None
            continue
        name = key.strip().title()
        if name in out:
            name = None
            continue
        out[name] = value.strip()
    clean = {}
    for key, value in out.items():
        value = "".join(ch if ch.isprintable() else " " for ch in _decode(value))
        clean[key] = value[:limit]
    return clean


def summary(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Sender, subject and the headers ``qsup show`` prints."""
    hdrs = parse(head)
    sender = hdrs.get("From") or hdrs.get("Return-Path") or ""
    shown = {k: hdrs[k] for k in SHOWN if k in hdrs}
    return sender[:200], hdrs.get("Subject", "")[:200], shown
