"""The chain runner: the worker of a scanner chain (quarantine/chain.py).

Run by qsup as ``python -m quarantine.chain_worker`` with the links in ``$QSUP_CHAIN``.
To qsup it is a worker of either mode (docs/reference.md §4); to each link it is qsup:
a persistent link is started once, kept warm and given one message at a time
(``batch … 1``); a one-shot link gets a process per message, the message's path its
only argument. One message at a time through every link, in order, keeps the
protocol's promise: ``begin ID`` is said before the first link touches a message, so
whatever happens in any link is pinned on that message.

A link that dies, exits non-zero or closes its pipe mid-message takes the runner
with it, the same way: the other links are killed, then the runner re-raises the
link's signal on itself (or exits with its status), so qsup records the crash kind
and signal of the link. A link that hangs is left hanging: qsup's deadline kills the
runner's process group, and the links are in it (started without a session of
their own), so none outlives the chain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TextIO

from quarantine.chain import SPEC_ENV, combine
from quarantine.worker import status_stream

PIPE_CLOSED = 70  # exit status when a link closed its pipe but did not die (EX_SOFTWARE)
CLOSE_GRACE = 5.0  # seconds a persistent link gets to exit after its stdin closes
OWN = (SPEC_ENV, "QSUP_STATUS_FD", "QSUP_PERSISTENT")  # the runner's, not the links'


class LinkCrash(Exception):
    """A link ended mid-message: *signum* it died of, or *status* it exited with."""

    def __init__(self, link: str, qid: str, signum: int = 0, status: int = 0, why: str = ""):
        super().__init__(link, qid)
        self.link, self.qid, self.signum, self.status, self.why = link, qid, signum, status, why

    def __str__(self) -> str:
        how = self.why or (f"died of {signal.Signals(self.signum).name}" if self.signum
                           else f"exited {self.status}")
        return f"chain: link {self.link} {how} on {self.qid}"


def crash_of(link: str, qid: str, returncode: int) -> LinkCrash:
    if returncode < 0:
        return LinkCrash(link, qid, signum=-returncode)
    return LinkCrash(link, qid, status=returncode or PIPE_CLOSED,
                     why="" if returncode else "closed its pipe")


def link_env(spec: dict, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OWN}
    return {**env, **spec["env"], **extra}


def verdict_of(line: str, qid: str) -> str | None:
    """The verdict of a ``done ID [VERDICT]`` line about *qid*, else None."""
    word, _, rest = line.strip().partition(" ")
    ident, _, verdict = rest.partition(" ")
    return verdict.strip() if word == "done" and ident == qid else None


class PersistentLink:
    """A link started once (``QSUP_PERSISTENT=1``), kept warm across messages."""

    def __init__(self, spec: dict):
        self.name = spec["name"]
        self.proc = subprocess.Popen(spec["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=link_env(spec, {"QSUP_PERSISTENT": "1"}), text=True,
                                     close_fds=True)
        self.sent = 0

    def wait_ready(self) -> None:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise self.ended("(start-up)")
            if line.strip() == "ready":
                return

    def scan(self, qid: str, path: str, batch_id: str) -> str:
        self.sent += 1
        mine = f"{batch_id}.{self.sent}"
        try:
            self.proc.stdin.write(f"batch {mine} 1\n{qid} {path}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self.ended(qid) from None
        verdict = ""
        for line in self.proc.stdout:
            if line.split() == ["end", mine]:
                return verdict
            found = verdict_of(line, qid)
            verdict = verdict if found is None else found
        raise self.ended(qid)

    def ended(self, qid: str) -> LinkCrash:
        """The link closed its pipe: how it ended (killed if it lives on)."""
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.kill()
            code = 0
        return crash_of(self.name, qid, code)

    def close(self) -> None:
        """No more messages: let the link exit as it would under qsup."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=CLOSE_GRACE)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class OneShotLink:
    """A link run once per message (its path the only argument), its progress lines
    on a pipe of its own."""

    def __init__(self, spec: dict):
        self.spec, self.name = spec, spec["name"]
        self.proc: subprocess.Popen | None = None

    def wait_ready(self) -> None:
        """Nothing to wait for: started per message."""

    def scan(self, qid: str, path: str, batch_id: str) -> str:
        read_fd, write_fd = os.pipe()
        env = link_env(self.spec, {"QSUP_STATUS_FD": str(write_fd), "QSUP_BATCH_ID": batch_id})
        try:
            self.proc = subprocess.Popen(self.spec["argv"] + [path], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, env=env, pass_fds=(write_fd,),
                                         close_fds=True)
        finally:
            os.close(write_fd)
        with os.fdopen(read_fd) as status:
            verdicts = [v for line in status if (v := verdict_of(line, qid)) is not None]
        code = self.proc.wait()
        if code != 0:
            raise crash_of(self.name, qid, code)
        return verdicts[-1] if verdicts else ""

    def close(self) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Chain:
    def __init__(self, specs: list[dict]):
        self.links = [PersistentLink(s) if s["mode"] == "persistent" else OneShotLink(s)
                      for s in specs]

    def start(self) -> None:
        for link in self.links:
            link.wait_ready()

    def scan(self, qid: str, path: str, batch_id: str) -> str:
        return combine([link.scan(qid, path, batch_id) for link in self.links])

    def close(self) -> None:
        for link in self.links:
            link.close()

    def die_like(self, crash: LinkCrash) -> None:
        """End the runner as the link ended, after the other links."""
        for link in self.links:
            link.kill()
        sys.stderr.write(f"{crash}\n")
        sys.stderr.flush()
        if crash.signum:
            reraise(crash.signum)
        os._exit(crash.status)


def reraise(signum: int) -> None:
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL, SIGSTOP: their action is the default already
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # delivery is asynchronous; a signal whose default is not death falls through
    os._exit(128 + signum)


def say(out: TextIO | None, line: str) -> None:
    if out is not None:
        out.write(line + "\n")
        out.flush()


def run_batch(chain: Chain, out: TextIO | None, batch_id: str, items: list[tuple[str, str]]) -> None:
    for qid, path in items:
        say(out, f"begin {qid}")
        verdict = chain.scan(qid, path, batch_id)
        say(out, f"done {qid} {verdict}".rstrip())


def read_batch(stdin: TextIO) -> tuple[str, list[tuple[str, str]]] | None:
    """The next ``batch ID N`` and its N ``ID PATH`` lines, or None at the end."""
    while True:
        header = stdin.readline()
        if not header:
            return None
        parts = header.split()
        if len(parts) == 3 and parts[0] == "batch" and parts[2].isdigit():
            break
    items = []
    for _ in range(int(parts[2])):
        qid, _, path = stdin.readline().rstrip("\n").partition(" ")
        items.append((qid, path))
    return parts[1], items


def serve_persistent(chain: Chain) -> None:
    chain.start()
    say(sys.stdout, "ready")
    while (batch := read_batch(sys.stdin)) is not None:
        run_batch(chain, sys.stdout, *batch)
        say(sys.stdout, f"end {batch[0]}")


def serve_oneshot(chain: Chain, paths: list[str]) -> None:
    chain.start()
    batch_id = os.environ.get("QSUP_BATCH_ID", "chain")
    run_batch(chain, status_stream(), batch_id, [(os.path.basename(p), p) for p in paths])


def main(argv: list[str]) -> int:
    try:
        chain = Chain(json.loads(os.environ[SPEC_ENV]))
    except OSError as exc:  # a link's program is missing: the environment, not a message
        sys.stderr.write(f"chain: cannot start a link: {exc}\n")
        return 127
    try:
        if os.environ.get("QSUP_PERSISTENT") == "1":
            serve_persistent(chain)
        else:
            serve_oneshot(chain, argv)
    except LinkCrash as crash:
        chain.die_like(crash)
    chain.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
