"""A bare supervisor and the retry policies people run today, for comparison with qsup.

``BarePool`` is what a MailScanner-style parent does: N worker processes, batches of B
queue IDs oldest first, plain ``subprocess`` + ``selectors``. No LMDB, no in-flight
records, no fingerprints, no isolation: a batch that ends with ``end BATCH``
(persistent) or exit 0 (one-shot) is renamed into outgoing/; a worker that dies
is a crash and the policy says what to run next. Persistent workers are reused
across batches; a dead one is replaced by a fresh process (paying the start-up
again) when the next batch is handed out — the same thing qsup does.

The policies decide and the pool acts (as in quarantine/policy.py):

  retry-batch    a crashed batch is retried whole, ahead of new mail, forever
  attempt-count  every message of a crashed batch gets an attempt; the batch is
                 retried whole; a message with ``max_attempts`` (6) attempts is
                 quarantined (MailScanner's "Maximum Processing Attempts")
  solo-all       every member of a crashed batch is retried alone; a message that
                 crashes alone ``strikes`` (2, qsup's default K) times is quarantined
  oracle         knows which messages are poison: a crashed batch's innocents are
                 retried together at once, its poison alone (in a fresh process) until
                 it has crashed alone K times. No real policy can know this: it is
                 the floor for any policy that quarantines only after K solo crashes
  clean          retry-batch on the spool without its poison (nothing crashes)
"""

from __future__ import annotations

import fcntl
import math
import os
import selectors
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field

Batch = tuple[str, ...]


# ------------------------------------------------------------------ policies
class Policy:
    """Hands out batches: retries first, then fresh mail oldest first."""

    name = "base"

    def __init__(self, ids: list[str], batch_size: int):
        self.fresh: deque[str] = deque(ids)
        self.retry: deque[Batch] = deque()
        self.batch_size = batch_size

    def next_batch(self) -> Batch | None:
        if self.retry:
            return self.retry.popleft()
        if not self.fresh:
            return None
        n = min(self.batch_size, len(self.fresh))
        return tuple(self.fresh.popleft() for _ in range(n))

    def crashed(self, batch: Batch) -> list[str]:
        """A worker died with *batch*; return the IDs to quarantine now."""
        raise NotImplementedError

    def fresh_process(self, batch: Batch) -> bool:
        """Whether *batch* must not run on a worker that scanned anything before."""
        return False


class RetryBatch(Policy):
    name = "retry-batch"

    def crashed(self, batch: Batch) -> list[str]:
        self.retry.append(batch)
        return []


class AttemptCount(Policy):
    name = "attempt-count"

    def __init__(self, ids: list[str], batch_size: int, max_attempts: int = 6):
        super().__init__(ids, batch_size)
        self.max_attempts = max_attempts
        self.attempts: dict[str, int] = {}

    def crashed(self, batch: Batch) -> list[str]:
        for qid in batch:
            self.attempts[qid] = self.attempts.get(qid, 0) + 1
        out = [q for q in batch if self.attempts[q] >= self.max_attempts]
        rest = tuple(q for q in batch if self.attempts[q] < self.max_attempts)
        if rest:
            self.retry.append(rest)
        return out


class SoloAll(Policy):
    name = "solo-all"

    def __init__(self, ids: list[str], batch_size: int, strikes: int = 2):
        super().__init__(ids, batch_size)
        self.k = strikes
        self.strikes: dict[str, int] = {}

    def crashed(self, batch: Batch) -> list[str]:
        if len(batch) > 1:
            self.retry.extend((q,) for q in batch)
            return []
        qid = batch[0]
        self.strikes[qid] = self.strikes.get(qid, 0) + 1
        if self.strikes[qid] >= self.k:
            return [qid]
        self.retry.append(batch)
        return []


class Oracle(Policy):
    name = "oracle"

    def __init__(self, ids: list[str], batch_size: int, poison: list[str] = (), strikes: int = 2):
        super().__init__(ids, batch_size)
        self.poison, self.k = frozenset(poison), strikes
        self.strikes: dict[str, int] = {}

    def fresh_process(self, batch: Batch) -> bool:
        return len(batch) == 1 and batch[0] in self.poison

    def crashed(self, batch: Batch) -> list[str]:
        innocent = tuple(q for q in batch if q not in self.poison)
        if innocent:
            self.retry.appendleft(innocent)
        out = []
        for qid in batch:
            if qid not in self.poison:
                continue
            if len(batch) == 1:
                self.strikes[qid] = self.strikes.get(qid, 0) + 1
            if self.strikes.get(qid, 0) >= self.k:
                out.append(qid)
            else:
                self.retry.appendleft((qid,))
        return out


POLICIES = {"retry-batch": RetryBatch, "attempt-count": AttemptCount, "solo-all": SoloAll,
            "oracle": Oracle, "clean": RetryBatch}


# ---------------------------------------------------------------------- pool
def oldest_first(incoming: str) -> list[str]:
    """The queue IDs in incoming/, oldest first (qsup's order: mtime, then name)."""
    with os.scandir(incoming) as it:
        entries = [(e.stat(follow_symlinks=False).st_mtime, e.name) for e in it if e.is_file()]
    return [name for _, name in sorted(entries)]


@dataclass
class PoolWorker:
    popen: subprocess.Popen
    fd: int  # stdout: status lines (persistent) / EOF at exit (one-shot)
    buf: bytes = b""
    batch: Batch | None = None
    batch_id: str = ""
    ok: bool = False


@dataclass
class PoolResult:
    t0: float  # wall clock when the pool started
    delivered: dict[str, float] = field(default_factory=dict)  # qid -> wall time
    quarantined: dict[str, float] = field(default_factory=dict)
    first_crash: dict[str, float] = field(default_factory=dict)  # qid -> wall time of its first crash
    crashes: int = 0
    batches: int = 0
    spawns: int = 0
    stopped_at_limit: bool = False
    elapsed: float = 0.0


class BarePool:
    def __init__(self, *, spool: str, argv: list[str], workers: int, policy: Policy,
                 persistent: bool = True, time_limit: float = math.inf):
        self.spool, self.argv, self.workers = spool, argv, workers
        self.policy, self.persistent, self.time_limit = policy, persistent, time_limit
        self.sel = selectors.DefaultSelector()
        self.idle: list[PoolWorker] = []
        self.busy: dict[int, PoolWorker] = {}  # fd -> worker with a batch
        self._n = 0

    # ---------------------------------------------------------------- process
    def _spawn(self, batch: Batch) -> PoolWorker:
        env = dict(os.environ)
        args = list(self.argv)
        if self.persistent:
            env["QSUP_PERSISTENT"] = "1"
        else:
            args += [os.path.join(self.spool, "incoming", q) for q in batch]
        popen = subprocess.Popen(args, stdin=subprocess.PIPE if self.persistent else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                 start_new_session=True, close_fds=True)
        fd = popen.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.result.spawns += 1
        return PoolWorker(popen=popen, fd=fd)

    def _send(self, w: PoolWorker, batch: Batch) -> None:
        self._n += 1
        w.batch, w.batch_id, w.ok = batch, f"b{self._n}", False
        self.result.batches += 1
        if self.persistent:
            inc = os.path.join(self.spool, "incoming")
            text = f"batch {w.batch_id} {len(batch)}\n" + "".join(f"{q} {inc}/{q}\n" for q in batch)
            try:
                w.popen.stdin.write(text.encode())
                w.popen.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # shows up as EOF on stdout
        self.busy[w.fd] = w
        self.sel.register(w.fd, selectors.EVENT_READ)

    def _close(self, w: PoolWorker) -> int:
        try:
            os.killpg(w.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = w.popen.wait()
        for stream in (w.popen.stdin, w.popen.stdout):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass
        return code

    # ------------------------------------------------------------------ moves
    def _move(self, batch, dest: str, record: dict[str, float]) -> None:
        inc, out = os.path.join(self.spool, "incoming"), os.path.join(self.spool, dest)
        for qid in batch:
            os.rename(os.path.join(inc, qid), os.path.join(out, qid))
        now = time.time()
        for qid in batch:
            record[qid] = now

    def _finished(self, w: PoolWorker) -> None:
        """The batch of *w* ended; deliver it or let the policy handle the crash."""
        self.sel.unregister(w.fd)
        del self.busy[w.fd]
        batch, w.batch = w.batch, None
        if self.persistent:
            ok = w.ok
            if ok:
                self.idle.append(w)  # reused for the next batch
            else:
                self._close(w)
        else:
            ok = w.popen.wait() == 0
            w.popen.stdout.close()
        if ok:
            self._move(batch, "outgoing", self.result.delivered)
            return
        self.result.crashes += 1
        now = time.time()
        for qid in batch:
            self.result.first_crash.setdefault(qid, now)
        doomed = self.policy.crashed(batch)
        if doomed:
            self._move(doomed, "quarantine", self.result.quarantined)

    def _readable(self, w: PoolWorker) -> None:
        try:
            data = os.read(w.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF: the process is gone
            self._finished(w)
            return
        w.buf += data
        if self.persistent and f"end {w.batch_id}\n".encode() in w.buf:
            w.ok, w.buf = True, b""
            self._finished(w)
        elif len(w.buf) > 65536:
            w.buf = w.buf[-4096:]

    # ------------------------------------------------------------------- loop
    def run(self) -> PoolResult:
        self.result = PoolResult(t0=time.time())
        start = time.monotonic()
        try:
            while True:
                if time.monotonic() - start > self.time_limit:
                    self.result.stopped_at_limit = True
                    break
                while len(self.busy) < self.workers:
                    batch = self.policy.next_batch()
                    if batch is None:
                        break
                    warm = self.persistent and self.idle and not self.policy.fresh_process(batch)
                    w = self.idle.pop() if warm else self._spawn(batch)
                    self._send(w, batch)
                if not self.busy:
                    break
                for key, _ in self.sel.select(0.05):
                    w = self.busy.get(key.fd)
                    if w is not None:
                        self._readable(w)
        finally:
            self.result.elapsed = time.monotonic() - start
            for w in list(self.busy.values()) + self.idle:
                self._close(w)
            self.sel.close()
        return self.result
