"""One batch on one worker: its progress lines, its deadline, how it ended.

A Run turns what a worker process did into a policy Outcome; it decides nothing
about messages. Time is passed in.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field

from quarantine.policy import Batch, Ending, Outcome
from quarantine.process import WorkerProcess, signal_name

# exit statuses with which shells and env(1) say "could not run the command"
_EXEC_FAILED = (126, 127)


@dataclass
class Run:
    batch_id: str
    batch: Batch
    proc: WorkerProcess
    started: float  # monotonic
    deadline: float
    fps: dict[str, str]  # queue ID -> fingerprint
    sizes: dict[str, int]
    timeout: float
    canary: bool = False
    first: bool = False  # the first batch its worker was given
    max_rss: int | None = None  # bytes; the memory guard
    begun: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    verdicts: dict[str, str] = field(default_factory=dict)
    ignored: int = 0  # garbage, foreign IDs, over-long lines
    ended_batch: bool = False  # persistent: the end line arrived

    def line(self, raw: bytes, now: float) -> None:
        """Take one status line; anything not about this batch is counted and dropped."""
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            self.ignored += 1
            return
        if not words:
            return
        verb, args = words[0], words[1:]
        if verb == "ready" and not args and self.proc.persistent:
            self.proc.ready = True
            return
        if verb == "end" and args == [self.batch_id] and self.proc.persistent:
            self.ended_batch = True
            return
        if verb not in ("begin", "done") or not args or args[0] not in self.fps:
            self.ignored += 1
            return
        qid = args[0]
        self.deadline = now + self.timeout
        if verb == "begin":
            self.begun.append(qid)
        else:
            self.done.add(qid)
            if len(args) > 1:
                self.verdicts[qid] = " ".join(args[1:])[:200]

    def ending(self) -> tuple[Ending, dict]:
        """Classify how the run ended, with the details ``qsup show`` prints."""
        proc = self.proc
        detail = {"pid": proc.pid, "peak_rss": proc.peak_rss}
        if self.ended_batch:
            return Ending.OK, detail
        if proc.killed_by_us in ("timeout", "memory", "stopped"):
            return Ending(proc.killed_by_us), detail
        ex = proc.exit
        if ex is None:
            return Ending.STOPPED, detail
        if self.max_rss and proc.peak_rss > self.max_rss:
            # Over the limit between two samples: the kernel's own peak (wait4) tells,
            # so the guard does not depend on sampling luck.
            return Ending.MEMORY, detail
        if ex.signal is not None:
            detail["signal"] = signal_name(ex.signal)
            if ex.signal == signal.SIGKILL:
                return Ending.KILLED, detail  # not ours: most likely the OOM killer
            return Ending.SIGNAL, detail
        detail["exit_code"] = ex.code
        if ex.code == 0:
            if proc.persistent:
                return Ending.EXIT, detail  # a persistent worker must not just leave
            return Ending.OK, detail
        if ex.code in _EXEC_FAILED and not self.begun and not self.done:
            return Ending.SPAWN, detail
        if proc.persistent and not proc.ready and not self.begun:
            return Ending.SPAWN, detail  # died before reading anything
        return Ending.EXIT, detail

    def outcome(self) -> Outcome:
        ending, _ = self.ending()
        return Outcome(ending=ending, begun=tuple(self.begun), done=frozenset(self.done), fresh=self.first)

    def ended(self, now: float) -> Ended:
        """What the policy needs to judge this run, once it is over."""
        _, detail = self.ending()
        return Ended(self.batch_id, self.batch, self.fps, self.sizes, self.outcome(), detail,
                     duration=now - self.started, stderr=self.proc.stderr_tail,
                     verdicts=self.verdicts, fresh_start=self.started if self.first else -math.inf)


@dataclass
class Ended:
    """A batch that ended, with what the policy needs to judge it."""

    batch_id: str
    batch: Batch
    fps: dict[str, str]
    sizes: dict[str, int]
    outcome: Outcome
    detail: dict
    duration: float = 0.0
    stderr: bytes = b""
    verdicts: dict = field(default_factory=dict)
    fresh_start: float = -math.inf  # when it started, if it was its worker's first batch


def detail_text(detail: dict) -> str:
    """A crash's details for a log line: signal, exit code, peak RSS, error."""
    parts = []
    if detail.get("signal"):
        parts.append(detail["signal"])
    if detail.get("exit_code") is not None:
        parts.append(f"exit {detail['exit_code']}")
    if detail.get("peak_rss"):
        parts.append(f"peak RSS {detail['peak_rss'] // (1024 * 1024)} MB")
    if detail.get("error"):
        parts.append(detail["error"])
    return f" ({', '.join(parts)})" if parts else ""
