"""A look at LMDB's data.mdb before LMDB maps it (docs/reference.md §5.10).

LMDB reads its pages through a memory map: a page past the end of a truncated file
is a SIGBUS, which no Python code can catch, on every command. So before the store
opens the file, this module reads it with pread() (never a map) and says what is
wrong with it, if anything.

The layout is LMDB 0.9's (data version 1) on a 64-bit host, as in mdb.c: two meta
pages at the start, the one with the higher transaction ID in use; each names the
page size (``mm_psize``, aliasing the free DB's ``md_pad``), the free DB's root and
the last page in use (``mm_last_pg``). Every page up to that one must be in the
file, except free ones: LMDB never writes a page freed in the transaction that
allocated it, so a healthy file may end a few free pages short. Only then is the
free DB walked (it is small) to check that each missing page is free.
"""

from __future__ import annotations

import os
import struct
import sys

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGEHDRSZ = 16  # mp_pgno (8), mp_pad (2), mp_flags (2), mp_lower (2), mp_upper (2)
P_BRANCH, P_LEAF, P_META = 0x01, 0x02, 0x08
F_BIGDATA = 0x01  # node flag: the value is on overflow pages
NODESIZE = 8  # mn_lo, mn_hi, mn_flags, mn_ksize (2 each), then the key, then the value
P_INVALID = (1 << 64) - 1  # an empty tree's root

_E = "<" if sys.byteorder == "little" else ">"
_META = struct.Struct(_E + "II8x8xIHHQQQQQ48xQQ")  # from offset PAGEHDRSZ of a meta page
_HEADER = struct.Struct(_E + "Q2xHHH")  # pgno, flags, lower, upper
_NODE = struct.Struct(_E + "HHHH")
_PGNO = struct.Struct(_E + "Q")
SUPPORTED = struct.calcsize("P") == 8  # the layout above is the 64-bit one


class _Damaged(Exception):
    pass


def problem(path: str) -> str | None:
    """What is wrong with the LMDB data file *path*, in a few words; None if LMDB
    can map it without reading past its end (or it does not exist: a new state)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # LMDB itself says why it cannot open it
    try:
        txnid, why = _look(fd)
        if why is not None and _look(fd)[0] != txnid:
            # a writer committed meanwhile and may have reused the free pages read:
            # judge the state it left
            why = _look(fd)[1]
        return why
    finally:
        os.close(fd)


def _look(fd: int) -> tuple[int, str | None]:
    """(the transaction ID in use, what is wrong)."""
    try:
        meta = _meta(fd)
        size = os.fstat(fd).st_size  # after the meta pages: the file only grows
        psize, last = meta["psize"], meta["last_pg"]
        have = size // psize  # whole pages in the file
        if have > last:
            return meta["txnid"], None
        free = _free_pages(fd, psize, meta["free_root"], have)
        missing = next((p for p in range(have, last + 1) if p not in free), None)
    except _Damaged as exc:
        return -1, str(exc)
    if missing is None:
        return meta["txnid"], None
    return meta["txnid"], (f"truncated: {size} bytes, but page {missing} is in use "
                           f"(its last transaction needs {(last + 1) * psize} bytes)")


def _meta(fd: int) -> dict:
    """The meta page in use (mdb_env_read_header, mdb_env_pick_meta)."""
    metas, psize = [], 0
    for n in range(2):
        raw = os.pread(fd, PAGEHDRSZ + _META.size, n * psize)
        if len(raw) < PAGEHDRSZ + _META.size:
            raise _Damaged(f"truncated: {'no' if n == 0 else 'no second'} meta page "
                           f"({os.fstat(fd).st_size} bytes)")
        flags = _HEADER.unpack_from(raw)[1]
        (magic, version, pad, _fflags, _depth, _b, _l, _o, _e, free_root,
         last_pg, txnid) = _META.unpack_from(raw, PAGEHDRSZ)
        if not flags & P_META or magic != MAGIC:
            raise _Damaged(f"not an LMDB data file (meta page {n} is damaged)")
        if version != DATA_VERSION:
            raise _Damaged(f"an LMDB data file of version {version}, not {DATA_VERSION}")
        if n == 0:
            psize = pad
            if psize < 512 or psize & (psize - 1) or psize > 1 << 16:
                raise _Damaged(f"meta page 0 names a page size of {psize}")
        metas.append({"psize": psize, "free_root": free_root, "last_pg": last_pg, "txnid": txnid})
    return max(metas, key=lambda m: m["txnid"])


def _free_pages(fd: int, psize: int, root: int, have: int) -> set[int]:
    """Page numbers on LMDB's free list: the values of the free DB (txnid -> a list
    of page numbers, its length first), walked from *root* with pread()."""
    free: set[int] = set()
    todo = [] if root == P_INVALID else [root]
    visited = 0
    while todo:
        pgno = todo.pop()
        visited += 1
        if visited > have:
            raise _Damaged("its free list loops")
        page = _page(fd, psize, pgno, have, "the free list")
        _, flags, lower, _ = _HEADER.unpack_from(page)
        for i in range((lower - PAGEHDRSZ) // 2):
            (at,) = struct.unpack_from(_E + "H", page, PAGEHDRSZ + 2 * i)
            if at + NODESIZE > psize:
                raise _Damaged(f"free list page {pgno} is damaged")
            lo, hi, nflags, ksize = _NODE.unpack_from(page, at)
            if flags & P_BRANCH:
                todo.append(lo | hi << 16 | nflags << 32)
            elif flags & P_LEAF:
                free.update(_id_list(fd, psize, page, at + NODESIZE + ksize, lo | hi << 16,
                                     nflags, have))
            else:
                raise _Damaged(f"free list page {pgno} is neither a branch nor a leaf")
    return free


def _id_list(fd: int, psize: int, page: bytes, at: int, size: int, nflags: int, have: int) -> list[int]:
    if nflags & F_BIGDATA:  # the value is on overflow pages
        first = _PGNO.unpack_from(page, at)[0]
        raw = _page(fd, psize, first, have, "the free list")
        pages = struct.unpack_from(_E + "I", raw, 12)[0]  # mp_pages
        if first + pages > have:
            raise _Damaged(f"truncated: free list page {first + pages - 1} is past its end")
        raw = os.pread(fd, PAGEHDRSZ + size, first * psize)
        data, at = raw, PAGEHDRSZ
    else:
        data = page
    if at + size > len(data) or size < 8:
        raise _Damaged("its free list is damaged")
    count = _PGNO.unpack_from(data, at)[0]
    if count * 8 + 8 > size:
        raise _Damaged("its free list is damaged")
    return list(struct.unpack_from(f"{_E}{count}Q", data, at + 8))


def _page(fd: int, psize: int, pgno: int, have: int, what: str) -> bytes:
    if pgno >= have:
        raise _Damaged(f"truncated: page {pgno} of {what} is past its end")
    raw = os.pread(fd, psize, pgno * psize)
    if len(raw) < psize:
        raise _Damaged(f"truncated: page {pgno} of {what} is past its end")
    return raw
