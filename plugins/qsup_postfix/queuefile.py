"""A Postfix queue file's message content, read directly: what ``postcat -bh`` prints,
without a postcat process per message.

A queue file is a sequence of records: a type byte, a length (7 bits a byte, low bits
first, the high bit set on every byte but the last) and that many bytes. The size
record (``C``, first) gives the offset of the content; from there, ``N`` is a line,
``L`` a part of a line that goes on in the next record, ``p`` a pointer to the next
record to read (cleanup's header edits; offset 0 is a placeholder), ``w`` padding,
and ``X`` ends the content. postcat prints an ``N`` with a newline, an ``L`` without.

Anything else (another record type in the content, a pointer loop, a short file) is
"not understood": the caller asks postcat, which knows every queue file format. A
file is read record by record, so memory does not grow with the message.
"""

from __future__ import annotations

import io
import os

SIZE, NORM, CONT, PTR, PAD, XTRA = b"C", b"N", b"L", b"p", b"w", b"X"
_MAX_RECORD = 1 << 20  # Postfix's records are a line_length_limit (2,048) at most
_MAX_JUMPS = 10_000  # postcat's own limit on pointer jumps (REVERSE_JUMP_LIMIT)
_FLUSH = 64 * 1024


class NotUnderstood(Exception):
    """The file is not laid out as this reader expects: ask postcat."""


def _record(fh: io.BufferedReader) -> tuple[bytes, bytes]:
    kind = fh.read(1)
    if not kind:
        raise NotUnderstood("end of file inside the content")
    length, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte or shift > 28:
            raise NotUnderstood("bad record length")
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
    if length > _MAX_RECORD:
        raise NotUnderstood("record too long")
    data = fh.read(length)
    if len(data) != length:
        raise NotUnderstood("end of file inside a record")
    return kind, data


def _offset(data: bytes) -> int:
    text = data.strip()
    if not text.isdigit():
        raise NotUnderstood(f"bad offset {text[:20]!r}")
    return int(text)


def _content_offset(fh: io.BufferedReader) -> int:
    kind, data = _record(fh)
    fields = data.split()
    if kind != SIZE or len(fields) < 2:
        raise NotUnderstood("no size record first")
    return _offset(fields[1])


def _lines(fh: io.BufferedReader):
    """The content's text, record by record, as postcat -bh prints it."""
    fh.seek(_content_offset(fh))
    jumps, last = 0, NORM
    while True:
        kind, data = _record(fh)
        if kind == NORM:
            yield data + b"\n"
        elif kind == CONT:
            yield data
        elif kind == XTRA:
            if last == CONT:
                yield b"\n"
            return
        elif kind == PTR:
            target = _offset(data)
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise NotUnderstood("too many pointer records")
            if target:
                fh.seek(target)
            continue
        elif kind != PAD:
            raise NotUnderstood(f"record type {kind!r} inside the content")
        if kind != PAD:
            last = kind


def copy_content(path: str, fd: int) -> bool:
    """Write the message content of the queue file *path* to *fd*. False if the
    file is not there (any more); NotUnderstood if postcat should be asked (then
    *fd* may hold part of the message: the caller starts over). Never follows a
    symlink."""
    try:
        raw = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise NotUnderstood(f"cannot open: {exc.strerror}") from None
    with open(raw, "rb", buffering=_FLUSH) as fh:
        pending: list[bytes] = []
        size = 0
        for text in _lines(fh):
            pending.append(text)
            size += len(text)
            if size >= _FLUSH:
                _write_all(fd, b"".join(pending))
                pending, size = [], 0
        _write_all(fd, b"".join(pending))
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
