"""The fleet fingerprint (docs/reference.md §10): a hash of a message's body
(everything after the header block) with whitespace runs made one space, and that
body's length, so the same message relayed through other gateways (other Received
lines, queue IDs, CRLF or LF) matches. A body under ``MIN_BODY`` bytes is never
matched: empty bodies and one-liners are shared by many unrelated messages
(Pyzor's empty-digest trap). Pure but for reading the file; no Redis here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MIN_BODY = 64  # normalised body bytes under which a message is never matched
HEAD_MAX = 256 * 1024  # a header block longer than this: no body found, never matched
CHUNK = 64 * 1024  # the body is hashed in chunks: memory does not grow with it


def body_fingerprint(path: str) -> str | None:
    """The fleet fingerprint of the message in the file *path*, or None when it has
    no body long enough to tell it apart (or cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return _digest(_body_chunks(fh))
    except OSError:
        return None


def _body_chunks(fh) -> Iterable[bytes]:
    """The bytes after the header block (the first empty line, CRLF or LF)."""
    head = b""
    while len(head) < HEAD_MAX:
        data = fh.read(CHUNK)
        if not data:
            return  # headers only: no body
        head += data
        end = _header_end(head)
        if end is not None:
            yield head[end:]
            break
    else:
        return
    while data := fh.read(CHUNK):
        yield data


def _header_end(data: bytes) -> int | None:
    """Where the body starts: after the first empty line, or at 0 if the message
    starts with one."""
    if data.startswith((b"\n", b"\r\n")):
        return data.index(b"\n") + 1
    ends = [i + len(sep) for sep in (b"\n\n", b"\n\r\n") if (i := data.find(sep)) >= 0]
    return min(ends) if ends else None


def _digest(chunks: Iterable[bytes]) -> str | None:
    """Hash the words of *chunks* joined by single spaces (whitespace normalised,
    so line endings and re-wrapped trailing blanks do not matter): a chunk's words
    are joined in C, one update each, not one per word."""
    h, length, carry = hashlib.blake2b(digest_size=16), 0, b""
    for chunk in chunks:
        words = (carry + chunk).split()
        carry = b""
        if words and not chunk[-1:].isspace():
            carry = words.pop()  # a word cut by the chunk's end
        if words:
            length += _feed(h, b" ".join(words), length)
    if carry:
        length += _feed(h, carry, length)
    if length < MIN_BODY:
        return None
    return f"{length:x}-{h.hexdigest()}"


def _feed(h, words: bytes, length: int) -> int:
    """Add *words* (one or more, space-separated) after what *length* bytes hold."""
    if length:
        h.update(b" ")
    h.update(words)
    return len(words) + (1 if length else 0)
