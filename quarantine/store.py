"""The LMDB state store: the only module that imports lmdb.

Named databases, values are compact JSON:

  meta        schema, breaker, recovery report, counters
  batches     batch ID -> a batch in flight: its IDs, their fingerprints, when it
              started, lane and path (written durably before its worker starts)
  pending     batch ID -> a suspect batch waiting for a worker (survives restarts)
  history     message key -> strikes and the last attempts (bounded)
  quarantine  message key -> the quarantine record
  done        group key -> completion record of a group of deliveries (when, names)
  intents     group key -> moves about to happen (write-ahead, see moves.py)
  journal     time:tag -> what happened to messages (the audit trail, journal.py)
  outbox      events waiting for the operator's digest mail (outbox.py)
  fleet       fingerprint -> a publication waiting for the fleet's Redis (fleet.py)

A message key is ``ID:fingerprint`` so a reused queue ID starts with a clean record.
Only the supervisor holding ``lock`` writes; other commands read, or ask it.

A damaged state is a StateError (exit 4), never a traceback or a signal: data.mdb
is looked at before LMDB maps it (:mod:`quarantine.datafile`; an empty one is not
taken for a new state), a value that is not JSON names its database and key, and a
full disk says so.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

from quarantine import datafile
from quarantine.errors import StateError, StateFull
from quarantine.lock import PidLock

SCHEMA = 1
DBS = ("meta", "batches", "pending", "history", "quarantine", "done", "intents", "journal", "outbox", "fleet")
LATER = ("journal", "outbox", "fleet")  # added since SCHEMA 1: a state from before has none until a write open
DEFAULT_MAP_MB = 1024
LOCK_FILE = "lock"  # in the state directory, held by the one qsup writing it
DATA_FILE = "data.mdb"
LOW_SPACE = 1 << 20  # free bytes under which an I/O error writing the state is a full disk
_CORRUPT = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError)


def _enc(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def failure(path: str, exc: Exception, doing: str = "write") -> StateError:
    """The StateError for *exc*, met while *doing* in the state directory *path*.
    A full disk says so: LMDB reports a short write to a full disk as EIO."""
    if isinstance(exc, lmdb.MapFullError):
        return StateFull(f"state map in {path} is full: raise map_size_mb and restart")
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    full = isinstance(exc, lmdb.DiskError) or code in (errno.ENOSPC, errno.EDQUOT) or any(
        os.strerror(e) in text for e in (errno.ENOSPC, errno.EDQUOT))
    if full or ((code == errno.EIO or os.strerror(errno.EIO) in text) and _low_space(path)):
        return StateFull(f"state disk is full: cannot {doing} the state in {path} ({text})")
    if isinstance(exc, _CORRUPT):
        return StateError(f"state corrupt in {path}: {text}")
    if isinstance(exc, PermissionError):
        return StateError(f"state directory {path} is not writable: {text}")
    return StateError(f"state directory {path}: cannot {doing}: {text}")


def _low_space(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE


def check_data_file(path: str) -> None:
    """Refuse a data.mdb that LMDB would read past the end of (a SIGBUS, on every
    command) or would silently start afresh over (an empty one). No data.mdb at all
    is a new state."""
    data = os.path.join(path, DATA_FILE)
    try:
        size = os.stat(data).st_size
    except OSError:
        return  # none (a new state), or LMDB says why it cannot open it
    if size == 0:
        raise StateError(f"state directory {path} has an empty {DATA_FILE} (a lost or reset state?)")
    if datafile.SUPPORTED and lmdb.version()[:2] == (0, 9):  # the layout datafile knows
        why = datafile.problem(data)
        if why:
            raise StateError(f"state corrupt: {data} is {why}")


class Txn:
    """A transaction over the named databases with JSON values. A value that does
    not decode is a StateError naming its database and key."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict, path: str = ""):
        self._txn, self._dbs, self._path = txn, dbs, path

    def _dec(self, db: str, key: str, raw: bytes | None) -> Any:
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise StateError(f"state corrupt: {db}/{key} is not valid JSON (in {self._path})") from None

    def _key(self, db: str, raw: bytes) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise StateError(f"state corrupt: {db} has a key that is not UTF-8, "
                             f"{ascii(raw[:80])[2:-1]} (in {self._path})") from None

    def get(self, db: str, key: str) -> Any:
        if db not in self._dbs:
            return None  # a database added since (LATER) that an older state lacks
        return self._dec(db, key, self._txn.get(key.encode(), db=self._dbs[db]))

    def put(self, db: str, key: str, value: Any) -> None:
        self._txn.put(key.encode(), _enc(value), db=self._dbs[db])

    def delete(self, db: str, key: str) -> None:
        self._txn.delete(key.encode(), db=self._dbs[db])

    def items(self, db: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
        if db not in self._dbs:
            return
        with self._txn.cursor(db=self._dbs[db]) as cur:
            if prefix and not cur.set_range(prefix.encode()):
                return
            for k, v in cur if prefix else cur.iternext():
                key = self._key(db, k)
                if prefix and not key.startswith(prefix):
                    return
                yield key, self._dec(db, key, v)

    def range(self, db: str, start: str, stop: str = "") -> Iterator[tuple[str, Any]]:
        """Items with ``start <= key < stop`` (no *stop*: to the end), in key order."""
        if db not in self._dbs:
            return
        with self._txn.cursor(db=self._dbs[db]) as cur:
            if not cur.set_range(start.encode()):
                return
            end = stop.encode() if stop else None
            for k, v in cur:
                if end is not None and k >= end:
                    return
                key = self._key(db, k)
                yield key, self._dec(db, key, v)

    def count(self, db: str) -> int:
        return self._txn.stat(self._dbs[db])["entries"] if db in self._dbs else 0


class Store:
    def __init__(self, path: str, *, readonly: bool = False, map_mb: int = DEFAULT_MAP_MB):
        self.path = path
        self.readonly = readonly
        self._lock = PidLock(os.path.join(path, LOCK_FILE))
        try:
            if not readonly:
                os.makedirs(path, mode=0o700, exist_ok=True)
                self._lock.acquire(f"state directory {path}")
            elif not os.path.exists(os.path.join(path, DATA_FILE)):
                raise StateError(f"no qsup state in {path} (run qsup drain or qsup run first)")
            check_data_file(path)
            self.env = lmdb.open(
                path,
                max_dbs=len(DBS),
                map_size=map_mb * 1024 * 1024,
                readonly=readonly,
                lock=True,
                subdir=True,
                mode=0o600,
                max_readers=64,
            )
            self.dbs = {}
            for name in DBS:
                try:
                    self.dbs[name] = self.env.open_db(name.encode(), create=not readonly)
                except lmdb.NotFoundError:
                    if name not in LATER:  # read-only, of a state older than the database
                        raise
        except StateError:
            self.close()
            raise
        except (lmdb.Error, OSError) as exc:
            self.close()
            raise failure(path, exc, "open") from None
        if not readonly:
            with self.write() as w:
                schema = w.get("meta", "schema")
                if schema not in (None, SCHEMA):
                    raise StateError(f"state in {path} has schema {schema}, expected {SCHEMA}")
                w.put("meta", "schema", SCHEMA)

    @staticmethod
    def holder(path: str) -> int | None:
        """The pid of the qsup holding the state directory *path*, or None if nobody does."""
        return PidLock.holder(os.path.join(path, LOCK_FILE))

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """A durable write transaction: on return the data is on disk."""
        if self.readonly:
            raise StateError("state opened read-only")
        try:
            with self.env.begin(write=True) as txn:
                yield Txn(txn, self.dbs, self.path)
        except lmdb.Error as exc:
            raise failure(self.path, exc) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise failure(self.path, exc) from None
            raise

    @contextmanager
    def read(self) -> Iterator[Txn]:
        try:
            with self.env.begin(write=False) as txn:
                yield Txn(txn, self.dbs, self.path)
        except lmdb.Error as exc:
            raise failure(self.path, exc, "read") from None

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
        self._lock.release()
