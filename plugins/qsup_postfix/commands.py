"""Postfix's own commands, run for one Postfix instance: postconf, postcat, postsuper,
postqueue, postkick. Always an argv list, never a shell; every queue ID is checked
first (also those written to a command's stdin, one a line).

Postfix's commands say less with their exit status than one would hope:
``postsuper -H ID`` and ``postsuper -d ID`` exit 0 for an unknown ID, so the count
they print on stderr ("Released from hold: 1 message") is what is checked.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess

from quarantine.errors import ConfigError, StateError
from quarantine.ids import is_queue_id

log = logging.getLogger("qsup.postfix")

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/lib/postfix/sbin")
_RELEASED = re.compile(rb"Released from hold: (\d+) messages?")
_RELEASED_ONE = re.compile(rb"^postsuper: ([A-Za-z0-9]+): released from hold$", re.M)
_DELETED = re.compile(rb"Deleted: (\d+) messages?")
_NO_QUEUE_FILE = b"open queue file"  # postcat: "fatal: open queue file ID: No such file …"


class PostfixError(StateError):
    """A Postfix command failed: qsup stops safely (exit 4); the move it was making is
    recorded and finished on the next start."""


def find_command_directory() -> str | None:
    """Where postconf lives (PATH first, then the usual sbin directories)."""
    found = shutil.which("postconf")
    if found:
        return os.path.dirname(found)
    for folder in SBIN:
        if os.access(os.path.join(folder, "postconf"), os.X_OK):
            return folder
    return None


def _one_line(data: bytes) -> str:
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


class Postfix:
    """One Postfix instance: ``-c CONFIG_DIR`` on every command when it is not the
    default instance."""

    def __init__(self, config_directory: str = "", command_directory: str = "", timeout: float = 60.0):
        self.config_directory = config_directory
        self.bindir = command_directory or find_command_directory()
        self.timeout = timeout
        if not self.bindir or not os.access(os.path.join(self.bindir, "postconf"), os.X_OK):
            raise ConfigError("[plugin.postfix] command_directory: Postfix's postconf not found "
                              "(install the Debian package 'postfix', or set command_directory)")

    def argv(self, program: str, *args: str) -> list[str]:
        conf = ["-c", self.config_directory] if self.config_directory else []
        return [os.path.join(self.bindir, program), *conf, *args]

    def _run(self, program: str, *args: str, stdout=subprocess.PIPE,
             feed: bytes | None = None) -> subprocess.CompletedProcess:
        argv = self.argv(program, *args)
        stdin = {"input": feed} if feed is not None else {"stdin": subprocess.DEVNULL}
        try:
            return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, timeout=self.timeout,
                                  check=False, **stdin)
        except subprocess.TimeoutExpired:
            raise PostfixError(f"{program} {' '.join(args)}: no answer within {self.timeout:.0f}s") from None
        except OSError as exc:
            raise PostfixError(f"{program}: cannot run {argv[0]}: {exc.strerror}") from None

    def params(self, *names: str) -> dict[str, str]:
        """Parameter values, $variables expanded (``postconf -hx``)."""
        cp = self._run("postconf", "-hx", *names)
        values = cp.stdout.decode("utf-8", "replace").splitlines()
        if cp.returncode != 0 or len(values) != len(names):
            where = self.config_directory or "the default instance"
            raise ConfigError(f"[plugin.postfix] config_directory: postconf for {where} failed: "
                              f"{_one_line(cp.stderr)}")
        return dict(zip(names, (v.strip() for v in values)))

    def cat(self, qid: str, fd: int) -> bool:
        """Write the message (headers and body, ``postcat -bh -q ID``) to *fd*.
        False if Postfix has no queue file by that ID."""
        _check(qid)
        cp = self._run("postcat", "-bh", "-q", qid, stdout=fd)
        if cp.returncode == 0:
            return True
        if _NO_QUEUE_FILE in cp.stderr:
            return False
        raise PostfixError(f"postcat -bh -q {qid}: {_one_line(cp.stderr)}")

    def envelope(self, qid: str) -> tuple[str, list[str]] | None:
        """The envelope sender ("" for the null sender) and the recipients still to
        deliver to (``postcat -e -q ID``); None if Postfix has no queue file by that
        ID. Each record is a line of its own, so no address can forge another."""
        _check(qid)
        cp = self._run("postcat", "-e", "-q", qid)
        if cp.returncode != 0:
            if _NO_QUEUE_FILE in cp.stderr:
                return None
            raise PostfixError(f"postcat -e -q {qid}: {_one_line(cp.stderr)}")
        senders, recipients = [], []
        for line in cp.stdout.decode("utf-8", "surrogateescape").split("\n"):
            field, sep, value = line.partition(": ")
            if sep and field == "sender":
                senders.append(value)
            elif sep and field == "recipient":
                recipients.append(value)
        if len(senders) != 1 or not recipients:
            raise PostfixError(f"postcat -e -q {qid}: {len(senders)} senders and {len(recipients)} "
                               f"recipients: not an envelope qsup can re-inject")
        return senders[0], recipients

    def headers(self, qid: str, limit: int) -> bytes:
        """The message's header section (``postcat -h -q ID``), at most *limit* bytes."""
        _check(qid)
        cp = self._run("postcat", "-h", "-q", qid)
        return cp.stdout[:limit] if cp.returncode == 0 else b""

    def release(self, qid: str) -> int:
        """``postsuper -H ID hold``: how many messages it says it released (0 or 1)."""
        _check(qid)
        return self._counted("Released from hold", _RELEASED, "-H", qid, "hold")

    def release_many(self, qids: list[str]) -> set[str]:
        """``postsuper -H - hold``, the IDs on stdin: the IDs it says it released. Its
        count must agree with the lines naming them, or its answer is not understood."""
        for qid in qids:
            _check(qid)
        feed = "".join(f"{qid}\n" for qid in qids).encode()
        cp = self._run("postsuper", "-H", "-", "hold", feed=feed)
        found = _RELEASED.search(cp.stderr)
        released = {m.decode() for m in _RELEASED_ONE.findall(cp.stderr)}
        if cp.returncode != 0 or found is None or int(found.group(1)) != len(released):
            raise PostfixError(f"postsuper -H - hold ({len(qids)} IDs): exit {cp.returncode}, "
                               f"no 'Released from hold' count that agrees: {_one_line(cp.stderr)}")
        if not released <= set(qids):
            raise PostfixError(f"postsuper -H - hold released IDs it was not given: "
                               f"{', '.join(sorted(released - set(qids))[:5])}")
        return released

    def delete(self, qid: str) -> int:
        """``postsuper -d ID hold``: how many messages it says it deleted (0 or 1)."""
        _check(qid)
        return self._counted("Deleted", _DELETED, "-d", qid, "hold")

    def _counted(self, what: str, pattern: re.Pattern, *args: str) -> int:
        cp = self._run("postsuper", *args)
        found = pattern.search(cp.stderr)
        if cp.returncode != 0 or found is None:
            raise PostfixError(f"postsuper {' '.join(args)}: exit {cp.returncode}, no '{what}' count: "
                               f"{_one_line(cp.stderr)}")
        return int(found.group(1))

    def deliver_now(self, qid: str) -> None:
        """``postqueue -i ID``: deliver a released message now, not at the next queue
        run. Only a nudge: the message is out of hold already, so a failure is logged."""
        _check(qid)
        cp = self._run("postqueue", "-i", qid)
        if cp.returncode != 0:
            log.warning("postqueue -i %s failed (%s); Postfix delivers it at its next queue run",
                        qid, _one_line(cp.stderr), extra={"qid": qid})

    def kick(self) -> None:
        """Have the queue manager look at the deferred queue now (``postkick public qmgr
        D``), where ``postsuper -H`` puts released mail: it leaves now, not at the next
        queue run. One request for any number of messages, and unlike ``postqueue -f``
        it neither retries deferred mail before its time nor forgets dead destinations.
        Only a nudge: if it fails, ``postqueue -f``; if that fails too, it is logged."""
        cp = self._run("postkick", "public", "qmgr", "D")
        if cp.returncode == 0:
            return
        flush = self._run("postqueue", "-f")
        if flush.returncode != 0:
            log.warning("postkick public qmgr D failed (%s), and postqueue -f (%s): Postfix delivers "
                        "released mail at its next queue run", _one_line(cp.stderr), _one_line(flush.stderr))


def _check(qid: str) -> None:
    if not is_queue_id(qid):  # also never starts with "-", so never an option
        raise ValueError(f"not a queue ID: {qid!r}")
