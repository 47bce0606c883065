"""Worker processes: the only module that imports subprocess and psutil.

Every worker leads its own process group (its own session); qsup kills the whole
group, plus every descendant it has seen, so grandchildren die too. ESRCH means
"already dead", never an error.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import signal
import subprocess
from dataclasses import dataclass, field

import psutil

from quarantine.lines import LineReader

STDERR_TAIL = 2048
_PR_SET_CHILD_SUBREAPER = 36


class SpawnError(Exception):
    """The worker could not be started (missing binary, not executable, fork failed)."""


def become_subreaper() -> bool:
    """Orphans of our workers (daemonised grandchildren) are re-parented to qsup,
    which then can find, kill and reap them instead of leaking them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"


def _nonblock(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Exit:
    code: int | None  # exit status, or None if killed by a signal
    signal: int | None


@dataclass
class WorkerProcess:
    """One running worker. ``fds`` are what the supervisor's selector watches."""

    popen: subprocess.Popen
    started: float
    persistent: bool
    status_fd: int | None = None  # read end of QSUP_STATUS_FD, or stdout in persistent mode
    stderr_fd: int | None = None
    stdin_fd: int | None = None  # persistent: where batches are written (non-blocking)
    outbuf: bytearray = field(default_factory=bytearray)  # written when the pipe has room
    lines: LineReader = field(default_factory=LineReader)
    stderr_tail: bytes = b""
    peak_rss: int = 0
    seen: set[int] = field(default_factory=set)  # descendants ever observed
    exit: Exit | None = None
    killed_by_us: str | None = None  # "timeout" | "memory" | "stopped" when qsup killed it
    ready: bool = False  # persistent: said `ready` (it is set up and reads batches)
    ready_at: float | None = None  # when qsup saw `ready`
    batches: int = 0  # batches served (persistent workers are recycled after some)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def piped(self) -> bool:
        """Some pipe from the worker is still open (once none is, it has exited)."""
        return self.status_fd is not None or self.stderr_fd is not None

    @property
    def fds(self) -> list[int]:
        return [fd for fd in (self.status_fd, self.stderr_fd) if fd is not None]

    def read(self, fd: int) -> list[bytes]:
        """Read what is available on *fd*; return complete status lines."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self._close_fd(fd)
            return []
        if fd == self.stderr_fd:
            self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL:]
            return []
        return self.lines.feed(data)

    def _close_fd(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass
        if fd == self.status_fd:
            self.status_fd = None
        if fd == self.stderr_fd:
            self.stderr_fd = None

    def send(self, text: str) -> None:
        """Queue *text* for a persistent worker's stdin and write what the pipe takes
        now; the rest goes with :meth:`flush` when it has room. Never blocks: a worker
        that stops reading is a hang, caught by its deadline."""
        self.outbuf += text.encode()
        self.flush()

    def flush(self) -> bool:
        """Write as much of the queued input as the pipe takes; True once all is sent
        (or the worker is gone: what it did not read shows in how it ends)."""
        while self.outbuf and self.stdin_fd is not None:
            try:
                n = os.write(self.stdin_fd, self.outbuf)
            except BlockingIOError:
                return False
            except OSError:  # EPIPE: it exited or closed its stdin
                self.outbuf.clear()
                break
            del self.outbuf[:n]
        return True

    def sample(self) -> int:
        """RSS of the whole process tree, in bytes; remembers descendants."""
        return sample_all([self]).get(self.pid, 0)

    def _account(self, tree: list[psutil.Process]) -> int:
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
                self.seen.add(p.pid)
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, total)
        return total

    def kill(self, why: str | None = None) -> None:
        """Kill the process group and every descendant seen. *why* marks the kill as
        qsup's own, so the ending is classified by it and not as a crash."""
        if why and self.killed_by_us is None and self.exit is None:
            self.killed_by_us = why
        _killpg(self.pid)
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                self.seen.add(child.pid)
        except psutil.Error:
            pass
        for pid in self.seen - {self.pid}:
            _kill(pid)
        if self.exit is None:
            _kill(self.pid)

    def terminate(self) -> None:
        """Ask politely (warm stop of a persistent worker)."""
        _killpg(self.pid, signal.SIGTERM)

    def poll(self) -> Exit | None:
        """Reap the worker if it has exited."""
        if self.exit is not None:
            return self.exit
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, usage = self.pid, 0, None
        if pid == 0:
            return None
        if usage is not None:  # the kernel's own peak for the worker process
            self.peak_rss = max(self.peak_rss, usage.ru_maxrss * 1024)
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        if os.WIFSIGNALED(status):
            self.exit = Exit(code=None, signal=os.WTERMSIG(status))
        else:
            self.exit = Exit(code=os.WEXITSTATUS(status), signal=None)
        return self.exit

    def close(self) -> list[bytes]:
        """After exit: kill leftovers of the group, drain and close the pipes.
        Returns the status lines still in the pipe."""
        self.kill()
        lines: list[bytes] = []
        for fd in self.fds:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                if fd == self.stderr_fd:
                    self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL:]
                else:
                    lines += self.lines.feed(data)
            self._close_fd(fd)
        if self.stdin_fd is not None:
            try:
                os.close(self.stdin_fd)
            except OSError:
                pass
            self.stdin_fd = None
            self.outbuf.clear()
        return lines


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    now: float,
    persistent: bool,
    rlimit_as_mb: int | None = None,
) -> WorkerProcess:
    """Start a worker in its own session. Raises SpawnError if it cannot start."""
    err_r, err_w = os.pipe()
    status_r = status_w = None
    env = dict(env)
    if not persistent:
        status_r, status_w = os.pipe()
        env["QSUP_STATUS_FD"] = str(status_w)
    limit = rlimit_as_mb * 1024 * 1024 if rlimit_as_mb else None

    def preexec() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # A preexec function forces a full fork(); without one Popen uses vfork/posix_spawn,
    # which is ~20x cheaper in a large parent. restore_signals resets SIGPIPE anyway.

    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if persistent else subprocess.DEVNULL,
            stdout=subprocess.PIPE if persistent else subprocess.DEVNULL,
            stderr=err_w,
            env=env,
            pass_fds=() if persistent else (status_w,),
            start_new_session=True,
            preexec_fn=preexec if limit else None,
            close_fds=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in (err_r, err_w, status_r, status_w):
            if fd is not None:
                os.close(fd)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpawnError(f"cannot start {argv[0]!r}: {reason}") from None
    os.close(err_w)
    if status_w is not None:
        os.close(status_w)
    if persistent:
        # Own the fd outright: closing it while Popen's file object still holds the
        # number would let a later garbage collection close some other worker's pipe.
        out_fd, in_fd = os.dup(popen.stdout.fileno()), os.dup(popen.stdin.fileno())
        popen.stdout.close()
        popen.stdin.close()
        for fd in (out_fd, in_fd):
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        _nonblock(in_fd)
    else:
        out_fd, in_fd = status_r, None
    _nonblock(err_r)
    _nonblock(out_fd)
    return WorkerProcess(popen=popen, started=now, persistent=persistent, status_fd=out_fd,
                         stderr_fd=err_r, stdin_fd=in_fd)


def sample_all(workers: list[WorkerProcess]) -> dict[int, int]:
    """RSS of each worker's whole process tree (bytes), from one walk of the process
    table for all of them — not one walk per worker."""
    if not workers:
        return {}
    kids: dict[int, list[psutil.Process]] = {}
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["ppid"]):
        procs[p.pid] = p
        kids.setdefault(p.info["ppid"], []).append(p)
    out = {}
    for worker in workers:
        root = procs.get(worker.pid)
        if root is None:
            continue
        tree, stack = [], [root]
        while stack:
            node = stack.pop()
            tree.append(node)
            stack.extend(kids.get(node.pid, ()))
        out[worker.pid] = worker._account(tree)
    return out


def reap_orphans(known: set[int]) -> int:
    """Kill and reap processes re-parented to qsup (see :func:`become_subreaper`)
    that are not live workers. Returns how many were found."""
    found = 0
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return 0
    for child in children:
        if child.pid in known:
            continue
        found += 1
        _kill(child.pid)
        try:
            os.waitpid(child.pid, 0)
        except ChildProcessError:
            pass
    return found


def kill_stale_workers(owner: str) -> int:
    """Kill workers a dead qsup of this state directory left running (they carry
    ``QSUP_OWNER``); they would otherwise go on scanning messages qsup re-dispatches."""
    killed = 0
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get("QSUP_OWNER") != owner:
                continue
            _killpg(os.getpgid(proc.pid))
            _kill(proc.pid)
            killed += 1
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return killed


def pipe_to(argv: list[str], data: bytes, timeout: float) -> tuple[int | None, str]:
    """Run *argv* with *data* on its stdin (a sendmail program): its exit status (None
    if it could not start or was killed at *timeout*) and the tail of what it said."""
    try:
        done = subprocess.run(argv, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout, close_fds=True)
    except subprocess.TimeoutExpired:
        return None, f"still running after {timeout:g}s: killed"
    except OSError as exc:
        return None, exc.strerror or str(exc)
    return done.returncode, done.stderr[-STDERR_TAIL:].decode("utf-8", "replace").strip()


def peak_rss_of_self() -> int:
    """qsup's own peak RSS in bytes (workers not included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


__all__ = [
    "Exit",
    "SpawnError",
    "WorkerProcess",
    "become_subreaper",
    "kill_stale_workers",
    "peak_rss_of_self",
    "pipe_to",
    "reap_orphans",
    "sample_all",
    "signal_name",
    "spawn",
]
