"""Start and stop PRIVATE, throw-away instances of real mail-system daemons.

Everything here listens on 127.0.0.1 (or a Unix socket in a temp dir) only,
uses its own config/queue/log files under a temp dir, has hard timeouts, and
stops its processes on exit of the context manager, also on exceptions.

Debian 12 packages needed (see NOTES.md for the non-interactive install):
    postfix, clamav, clamav-daemon, spamassassin, spamd, spamc

Helpers:
    require(program, package)            -> path, or pytest.skip / pytest.fail (CI)
    postfix_instance(tmpdir, ...)        -> PostfixInstance (root only)
    write_clamav_signature(dir, marker)  -> signature name as reported by ClamAV
    clamscan(sigdir, path)               -> CompletedProcess (rc 0 clean, 1 found, 2 error)
    clamd_instance(tmpdir, sigdir)       -> ClamdInstance (.socket_path, .pid)
    clamd_request(socket_path, command)  -> reply text   (e.g. b"zPING\\0")
    clamd_instream(socket_path, data)    -> reply text   ("stream: NAME FOUND" / "stream: OK")
    spamd_instance(tmpdir, rules=...)    -> SpamdInstance (.port, .pid)
    spamc_check(port, msg)               -> (exit code, "score/threshold")

Why a "reaper" wrapper: on this kind of machine PID 1 is not a normal init
and orphaned processes (postfix's daemonized master and its children, spamd's
preforked children after a SIGKILL) are not reaped promptly, so they linger
as zombies that still look alive to kill(pid, 0). Every daemon is therefore
started under a tiny Python wrapper that makes itself a child subreaper
(prctl PR_SET_CHILD_SUBREAPER): all descendants, even ones that double-fork
and setsid() like postfix's master, are re-parented to the wrapper, which
reaps them and exits only when none is left. So "wrapper exited" means
"the whole process tree is gone". The wrapper also gets SIGUSR2 when the
test process dies (PR_SET_PDEATHSIG) and then kills its whole tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/lib/postfix/sbin")


# --------------------------------------------------------------------------
# skipping / failing when a program is missing
# --------------------------------------------------------------------------

def _find_program(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    # /usr/sbin is often not on PATH for non-login shells or non-root users.
    for d in SBIN_DIRS:
        p = os.path.join(d, program)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _skip_or_fail(msg: str):
    import pytest

    if os.environ.get("CI"):
        pytest.fail(msg + " (CI is set: failing instead of skipping)", pytrace=False)
    pytest.skip(msg)


def require(program: str, package: str) -> str:
    """Return the full path of `program`; skip the test (fail if $CI is set)
    with a message naming the Debian package to install when it's missing."""
    path = _find_program(program)
    if path is None:
        _skip_or_fail(
            f"{program!r} not found: install the Debian package {package!r} "
            f"(DEBIAN_FRONTEND=noninteractive apt-get install -y {package})"
        )
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        _skip_or_fail(f"{what} needs to run as root")


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------

def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll pred() until it returns a truthy value; TimeoutError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _world_traversable(path: Path) -> bool:
    """True if every ancestor directory of path is o+x (so that unprivileged
    daemon users like 'postfix' can reach it)."""
    p = path.resolve()
    for d in [p, *p.parents]:
        try:
            if not (os.stat(d).st_mode & 0o001):
                return False
        except FileNotFoundError:
            continue
    return True


def _run(argv, timeout: float = 30, check: bool = True, input: bytes | None = None):
    cp = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(
            f"{argv} exited {cp.returncode}\nstdout: {cp.stdout.decode(errors='replace')}"
            f"\nstderr: {cp.stderr.decode(errors='replace')}")
    return cp


def _is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------
# the reaper wrapper
# --------------------------------------------------------------------------

_REAPER_SRC = r'''
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)                   # PR_SET_CHILD_SUBREAPER
libc.prctl(1, int(signal.SIGUSR2), 0, 0, 0)  # PR_SET_PDEATHSIG: parent died -> SIGUSR2
log_path, harness_pid, argv = sys.argv[1], int(sys.argv[2]), sys.argv[4:]  # [3] == "--"
me = os.getpid()

def children():
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        if int(fields[1]) == me and fields[0] not in ("Z", "X"):
            out.append(int(d))
    return out

def send_all(sig):
    for p in children():
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass

def say(text):                       # status line to the harness; never fatal
    try:
        os.write(1, (text + "\n").encode())
    except OSError:
        pass

state = {"kill": False}
def on_term(signum, frame):          # graceful: SIGTERM to every direct child
    send_all(signal.SIGTERM)
def on_kill(signum, frame):          # hard: SIGKILL the whole tree, repeatedly
    state["kill"] = True
    send_all(signal.SIGKILL)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
signal.signal(signal.SIGUSR1, on_kill)
signal.signal(signal.SIGUSR2, on_kill)
if os.getppid() != harness_pid:      # harness died before prctl took effect
    state["kill"] = True

logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
pid = os.fork()
if pid == 0:
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
os.close(logfd)
say("PID %d" % pid)
while True:
    try:
        p, st = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if p == pid:
        say("EXIT %d" % os.waitstatus_to_exitcode(st))
    if p == 0:
        if state["kill"]:
            send_all(signal.SIGKILL)
        time.sleep(0.05)
say("DONE")
'''


class ReapedProcess:
    """Runs argv under the reaper wrapper; child's stdout/stderr go to log_path."""

    def __init__(self, argv, log_path, env=None, cwd=None, start_timeout=10.0):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self._lines: queue.Queue[str] = queue.Queue()
        self.child_exit: int | None = None
        self.wrapper = subprocess.Popen(
            [sys.executable, "-c", _REAPER_SRC, str(self.log_path), str(os.getpid()), "--",
             *self.argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None,
            env=env, cwd=cwd, start_new_session=True)
        threading.Thread(target=self._reader, daemon=True).start()
        first = self._next_line(start_timeout)
        if not first or not first.startswith("PID "):
            self.kill()
            raise RuntimeError(f"reaper wrapper did not start {self.argv}: {first!r}")
        self.pid = int(first.split()[1])

    def _reader(self):
        for raw in self.wrapper.stdout:
            self._lines.put(raw.decode().strip())
        self._lines.put("")  # EOF marker

    def _next_line(self, timeout):
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def _drain(self, timeout=0.0):
        """Process wrapper status lines: waits up to timeout for the first one,
        then takes whatever else is queued. True once the wrapper said DONE/EOF."""
        line = self._next_line(timeout)
        while line is not None:
            if line.startswith("EXIT "):
                self.child_exit = int(line.split()[1])
            elif line in ("DONE", ""):
                self._lines.put(line)  # sticky
                return True
            line = self._next_line(0)
        return False

    def wait_child(self, timeout: float) -> int:
        """Wait for the direct child to exit; returns its exit code."""
        deadline = time.monotonic() + timeout
        while self.child_exit is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.argv[0]} still running after {timeout}s")
            if self._drain(min(left, 0.2)) and self.child_exit is None:
                raise RuntimeError("wrapper ended without reporting the child's exit")
        return self.child_exit

    def child_running(self) -> bool:
        self._drain(0)
        return self.child_exit is None and _is_running(self.pid)

    def tree_done(self) -> bool:
        return self.wrapper.poll() is not None

    def wait_tree(self, timeout: float) -> bool:
        try:
            self.wrapper.wait(timeout=timeout)
            self._drain(0.5)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _signal_wrapper(self, sig):
        if self.wrapper.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.wrapper.send_signal(sig)

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM the tree, then SIGKILL it; never leaves anything behind."""
        self._signal_wrapper(signal.SIGTERM)
        if self.wait_tree(timeout):
            return
        self.kill()

    def kill(self, timeout: float = 5.0) -> None:
        self._signal_wrapper(signal.SIGUSR1)
        if self.wait_tree(timeout):
            return
        # Last resort: the wrapper itself is stuck; kill it and its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.wrapper.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wrapper.wait(timeout=timeout)


# --------------------------------------------------------------------------
# Postfix
# --------------------------------------------------------------------------

_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The re-injection service of examples/mailscanner/POSTFIX.md: tagged copies come
# back here, skip header_checks and are put on hold by smtpd itself.
REINJECT_MASTER_CF = """\
{listen} inet n - n - - smtpd
  -o syslog_name=postfix/qsup-reinject
  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters
  -o smtpd_data_restrictions=check_client_access,static:HOLD
  -o mynetworks=127.0.0.0/8
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
smtp      unix  -       -       n       -       -       smtp
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue_dir}
data_directory = {data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = qsup-test.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
relayhost =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
default_transport = discard:qsup-test-discarded
local_transport = discard:qsup-test-discarded
relay_transport = discard:qsup-test-discarded
virtual_transport = discard:qsup-test-discarded
header_checks = regexp:{config_dir}/header_checks
maillog_file = {log_path}
maillog_file_prefixes = {base_dir}
enable_long_queue_ids = yes
smtputf8_enable = no
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_banner = $myhostname ESMTP qsup-test
queue_run_delay = 300s
minimal_backoff_time = 300s
"""


class PostfixInstance:
    def __init__(self, base_dir: Path, port: int, hold_regexp: str, extra_main_cf: str,
                 owns_base_dir: bool, reinject: bool = False):
        self.base_dir = base_dir
        self.config_dir = base_dir / "etc"
        self.queue_dir = base_dir / "spool"
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "maillog"
        self.port = port
        self.host = LOOPBACK
        self.hold_regexp = hold_regexp
        self.extra_main_cf = extra_main_cf
        self.reinject_port = free_port() if reinject else None
        self._owns_base_dir = owns_base_dir
        self._proc: ReapedProcess | None = None
        self.startup_seconds: float | None = None

    # -- commands -----------------------------------------------------------
    def cmd(self, program: str, *args) -> list[str]:
        return [_find_program(program) or program, "-c", str(self.config_dir), *map(str, args)]

    def run(self, program: str, *args, check=True, timeout=30) -> subprocess.CompletedProcess:
        return _run(self.cmd(program, *args), check=check, timeout=timeout)

    # -- setup / lifecycle --------------------------------------------------
    def _write_config(self):
        self.config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        os.chmod(self.config_dir, 0o755)
        # queue_directory must be root-owned (postfix creates the subdirs);
        # data_directory must NOT be pre-created by root (or must be chowned
        # to mail_owner): master's lock file lives there.
        self.queue_dir.mkdir(exist_ok=True)
        os.chmod(self.queue_dir, 0o755)
        (self.config_dir / "main.cf").write_text(_MAIN_CF.format(
            queue_dir=self.queue_dir, data_dir=self.data_dir, config_dir=self.config_dir,
            log_path=self.log_path, base_dir=self.base_dir) + self.extra_main_cf)
        reinject = (REINJECT_MASTER_CF.format(listen=f"{LOOPBACK}:{self.reinject_port}")
                    if self.reinject_port else "")
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(listen=f"{LOOPBACK}:{self.port}") + reinject)
        (self.config_dir / "header_checks").write_text(
            f"{self.hold_regexp} HOLD qsup-test-hold\n")
        self.log_path.touch()

    def start(self, timeout: float = 30.0):
        self._write_config()
        t0 = time.monotonic()
        self._proc = ReapedProcess(self.cmd("postfix", "start"),
                                   self.base_dir / "postfix-start.out")
        rc = self._proc.wait_child(timeout)
        if rc != 0:
            out = (self.base_dir / "postfix-start.out").read_text(errors="replace")
            raise RuntimeError(f"postfix start failed (rc={rc}): {out}\nlog:\n{self.log_text()}")
        # master -w already waited for the master to initialize, so the SMTP
        # socket is bound; wait until it actually answers to be sure.
        wait_until(self._smtp_ready, timeout, what="postfix smtpd banner")
        self.startup_seconds = time.monotonic() - t0

    def _smtp_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.settimeout(5)
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 15.0):
        if self._proc is None:
            return
        try:
            if not self._proc.tree_done():
                with contextlib.suppress(Exception):
                    self.run("postfix", "stop", check=False, timeout=timeout)
                if not self._proc.wait_tree(timeout):
                    self._proc.kill()
        finally:
            self._proc = None

    def cleanup(self):
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- mail -----------------------------------------------------------------
    def submit(self, msg_bytes: bytes, sender: str = "sender@example.org",
               rcpt="rcpt@example.net", timeout: float = 30.0) -> str:
        """Submit over SMTP; returns the queue id from the '250 ... queued as ID' reply."""
        rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        with smtplib.SMTP(self.host, self.port, timeout=timeout) as s:
            s.ehlo("qsup-test-client")
            code, resp = s.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, resp, sender)
            for r in rcpts:
                code, resp = s.rcpt(r)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({r: (code, resp)})
            code, resp = s.data(msg_bytes)
            if code != 250:
                raise smtplib.SMTPDataError(code, resp)
        m = re.search(rb"queued as ([0-9A-Za-z]+)", resp)
        if not m:
            raise RuntimeError(f"no queue id in DATA reply {resp!r}")
        return m.group(1).decode()

    def queue(self) -> list[dict]:
        """postqueue -j: one JSON object per message (queue_name, queue_id, ...)."""
        out = self.run("postqueue", "-j").stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def hold_ids(self) -> list[str]:
        return sorted(m["queue_id"] for m in self.queue() if m.get("queue_name") == "hold")

    def wait_hold_count(self, n: int, timeout: float = 15.0) -> list[str]:
        def check():
            ids = self.hold_ids()
            return ids if len(ids) == n else None
        return wait_until(check, timeout, interval=0.1, what=f"{n} messages in hold")

    def postcat(self, queue_id: str) -> bytes:
        """Headers + body of a queued message (postcat -bh -q ID)."""
        return self.run("postcat", "-bh", "-q", queue_id).stdout

    def release(self, queue_id: str) -> str:
        """postsuper -H ID (release from hold) then postqueue -i ID (deliver now).
        Returns postsuper's stderr ('postsuper: Released from hold: 1 message')."""
        cp = self.run("postsuper", "-H", queue_id)
        self.run("postqueue", "-i", queue_id)
        return cp.stderr.decode()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern, timeout: float = 15.0) -> re.Match:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            return wait_until(lambda: rx.search(self.log_text()), timeout, interval=0.1,
                              what=f"postfix log line matching {rx.pattern!r}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- {self.log_path} ---\n{self.log_text()}") from None


@contextlib.contextmanager
def postfix_instance(tmpdir, hold_regexp: str = "/^Received:/", extra_main_cf: str = "",
                     start_timeout: float = 30.0, reinject: bool = False):
    """A private Postfix on 127.0.0.1:<free port>; every message received over
    SMTP is put on hold (header_checks HOLD; Postfix's own Received: header
    matches the default regexp); released mail goes to the discard transport.
    With *reinject*: also the re-injection smtpd on 127.0.0.1:<reinject_port> and
    the smtp transport (for ``default_transport = smtp:[127.0.0.1]:PORT``)."""
    require_root("a private postfix instance")
    for prog in ("postfix", "postqueue", "postsuper", "postcat"):
        require(prog, "postfix")
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    if _world_traversable(tmpdir):
        base, owns = Path(tempfile.mkdtemp(prefix="postfix-", dir=tmpdir)), False
    else:
        # The postfix user must be able to chdir into queue_directory; pytest's
        # tmp_path lives under a 0700 dir, so use a 0755 dir in /tmp instead.
        base, owns = Path(tempfile.mkdtemp(prefix="qsup-postfix-", dir="/tmp")), True
    inst = None
    try:
        last_err = None
        for _attempt in range(3):  # the free port can be taken in between: retry
            inst = PostfixInstance(base, free_port(), hold_regexp, extra_main_cf, owns, reinject)
            try:
                inst.start(start_timeout)
                break
            except Exception as e:
                last_err = e
                inst.stop()
                if "Address already in use" not in str(e):
                    raise
        else:
            raise last_err
        yield inst
    finally:
        if inst is not None:
            inst.stop()
            inst.cleanup()
        elif owns:
            shutil.rmtree(base, ignore_errors=True)


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1:PORT, every mail transaction dumped to a file
    of its own under DUMP_DIR (``-d``): the headers it starts with (X-Mail-Args,
    X-Rcpt-Args: the envelope) and then the message as delivered."""

    def __init__(self, dump_dir: Path):
        self.dump_dir = dump_dir
        self.port = free_port()
        self.host = LOOPBACK
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0):
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dump_dir, 0o777)  # smtp-sink writes as nobody
        argv = [require("smtp-sink", "postfix"), "-u", "nobody", "-d", f"{self.dump_dir}/%H/%M.",
                f"{self.host}:{self.port}", "256"]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        wait_until(self._ready, timeout, what="smtp-sink banner")

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                return s.recv(64).startswith(b"220")
        except OSError:
            return False

    def dumps(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dump_dir.rglob("*.*")) if p.is_file()]

    def stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None


@contextlib.contextmanager
def smtp_sink():
    """An smtp-sink dumping into a fresh /tmp/qsup-sink-* (nobody must reach it),
    deleted at exit."""
    require_root("smtp-sink as nobody")
    base = Path(tempfile.mkdtemp(prefix="qsup-sink-", dir="/tmp"))
    os.chmod(base, 0o755)
    sink = SmtpSink(base / "dump")
    try:
        sink.start()
        yield sink
    finally:
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------
# ClamAV
# --------------------------------------------------------------------------

def write_clamav_signature(directory, marker_bytes: bytes, name: str = "Qsup.Test.Marker") -> str:
    """Write DIR/qsup-test.ndb: a body signature matching marker_bytes anywhere
    in any file type. Returns the name ClamAV reports: custom signatures get
    '.UNOFFICIAL' appended (e.g. 'Qsup.Test.Marker.UNOFFICIAL')."""
    if len(marker_bytes) < 4:
        raise ValueError("use a marker of at least 4 bytes")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # .ndb format: Name:TargetType:Offset:HexSignature  (0 = any file, * = anywhere)
    (d / "qsup-test.ndb").write_text(f"{name}:0:*:{marker_bytes.hex()}\n")
    return f"{name}.UNOFFICIAL"


def clamscan(sigdir, *paths, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """clamscan with ONLY the signatures in sigdir; rc 0 clean, 1 found, 2 error."""
    exe = require("clamscan", "clamav")
    return subprocess.run([exe, "--no-summary", "--stdout", "-d", str(sigdir), *map(str, paths)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def _short_dir(tmpdir: Path, prefix: str) -> tuple[Path, bool]:
    """Unix socket paths are limited to 107 bytes: use tmpdir if short enough."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    if len(str(d / "clamd.sock")) < 100:
        return d, False
    shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")), True


class ClamdInstance:
    def __init__(self, run_dir: Path, sigdir: Path):
        self.run_dir = run_dir
        self.sigdir = Path(sigdir)
        self.socket_path = str(run_dir / "clamd.sock")
        self.config_path = run_dir / "clamd.conf"
        self.log_path = run_dir / "clamd.log"
        self.stdout_path = run_dir / "clamd.out"
        self._proc: ReapedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def start(self, timeout: float = 60.0):
        exe = require("clamd", "clamav-daemon")
        (self.run_dir / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text("\n".join([
            f"LocalSocket {self.socket_path}",
            "LocalSocketMode 600",
            "FixStaleSocket yes",
            f"DatabaseDirectory {self.sigdir}",
            f"TemporaryDirectory {self.run_dir / 'tmp'}",
            f"LogFile {self.log_path}",
            "LogTime yes",
            "LogVerbose no",
            "Foreground yes",
            "SelfCheck 0",            # no periodic DB reload checks
            "MaxThreads 4",
            "ReadTimeout 30",
            "CommandReadTimeout 10",
            "IdleTimeout 30",
            "StreamMaxLength 25M",
            "ExtendedDetectionInfo no",
            "",                      # no 'User': stays root in a test (no clamav user needed)
        ]))
        t0 = time.monotonic()
        self._proc = ReapedProcess([exe, f"--config-file={self.config_path}"], self.stdout_path)
        try:
            wait_until(self._ping, timeout, interval=0.05, what="clamd PONG")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.diagnostics()}") from None
        self.startup_seconds = time.monotonic() - t0

    def _ping(self) -> bool:
        if not self._proc.child_running():
            raise RuntimeError(f"clamd exited during startup\n{self.diagnostics()}")
        try:
            return clamd_request(self.socket_path, b"zPING\0", timeout=2) == "PONG"
        except OSError:
            return False

    def diagnostics(self) -> str:
        out = []
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                out.append(f"--- {p} ---\n{p.read_text(errors='replace')}")
        return "\n".join(out)

    def running(self) -> bool:
        return self._proc is not None and self._proc.child_running()

    def kill(self, sig=signal.SIGKILL):
        """Kill clamd itself (e.g. mid-request); the harness still cleans up."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0):
        if self._proc is not None:
            self._proc.terminate(timeout)
            self._proc = None


@contextlib.contextmanager
def clamd_instance(tmpdir, sigdir, start_timeout: float = 60.0):
    """A private clamd (Foreground, own config) on a Unix socket in tmpdir,
    loading only the signatures in sigdir."""
    run_dir, owns = _short_dir(Path(tmpdir), "clamd-")
    inst = ClamdInstance(run_dir, Path(sigdir))
    try:
        inst.start(start_timeout)
        yield inst
    finally:
        inst.stop()
        if owns:
            shutil.rmtree(run_dir, ignore_errors=True)


def _recv_until_nul(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\0"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def clamd_request(socket_path: str, command: bytes, timeout: float = 30.0) -> str:
    """Send one z-command (e.g. b'zPING\\0', b'zVERSION\\0', b'zSCAN /path\\0')
    and return the NUL-terminated reply as text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command)
        return _recv_until_nul(s).rstrip(b"\0").decode(errors="replace")


def clamd_instream(socket_path: str, data: bytes, chunk_size: int = 8192,
                   timeout: float = 30.0) -> str:
    """zINSTREAM: <4-byte big-endian length><chunk>... then a zero length.
    Reply: 'stream: OK' or 'stream: NAME FOUND' (or '... ERROR')."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(b"zINSTREAM\0")
        for i in range(0, len(data), chunk_size):
            chunk = data[i:i + chunk_size]
            s.sendall(struct.pack("!L", len(chunk)) + chunk)
        s.sendall(struct.pack("!L", 0))
        return _recv_until_nul(s).rstrip(b"\0").decode(errors="replace")


# --------------------------------------------------------------------------
# SpamAssassin
# --------------------------------------------------------------------------

TINY_PRE = """\
loadplugin Mail::SpamAssassin::Plugin::Check
"""

TINY_RULES = """\
# Minimal rule set for tests: no network, no bayes, no auto-learn.
required_score 5.0
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
util_rb_tld com net org
header   QSUP_TEST_SPAM  Subject =~ /qsup-spam-marker/i
describe QSUP_TEST_SPAM  Subject carries the qsup test spam marker
score    QSUP_TEST_SPAM  10.0
body     QSUP_TEST_BODY  /qsup-body-marker/
score    QSUP_TEST_BODY  1.5
"""

NO_NETWORK_SITE_CF = """\
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""


class SpamdInstance:
    def __init__(self, run_dir: Path, port: int, rules: str):
        self.run_dir = run_dir
        self.port = port
        self.host = LOOPBACK
        self.rules = rules
        self.log_path = run_dir / "spamd.log"
        self.stdout_path = run_dir / "spamd.out"
        self.pid_path = run_dir / "spamd.pid"
        self._proc: ReapedProcess | None = None
        self.startup_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def start(self, timeout: float = 120.0):
        exe = require("spamd", "spamd")
        site = self.run_dir / "site"
        home = self.run_dir / "home"
        site.mkdir(exist_ok=True)
        home.mkdir(exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        os.chmod(home, 0o777)
        args = [exe,
                f"--listen={self.host}:{self.port}",
                f"--pidfile={self.pid_path}",
                f"--syslog={self.log_path}",    # contains '/', so it is a log FILE
                f"--siteconfigpath={site}",     # instead of /etc/spamassassin
                "--nouser-config",
                f"--helper-home-dir={home}",
                "--local",                       # no DNS/network tests
                "--max-children=2", "--min-children=1",
                "--timeout-child=60"]
        if os.geteuid() == 0:
            # spamd refuses --username=root; as root it must drop to some user.
            args.append("--username=nobody")
        if self.rules == "tiny":
            # The Check plugin is mandatory ("no loaded plugin implements
            # 'check_main': cannot scan!"); Debian loads it from
            # /etc/spamassassin/v320.pre, which --siteconfigpath replaces.
            (site / "init.pre").write_text(TINY_PRE)
            rules_dir = self.run_dir / "rules"
            rules_dir.mkdir(exist_ok=True)
            (rules_dir / "10_qsup_test.cf").write_text(TINY_RULES)
            args.append(f"--configpath={rules_dir}")  # instead of /usr/share/spamassassin
        elif self.rules == "debian":
            # Full rule set shipped by the package in /usr/share/spamassassin
            # (used when sa-update never ran, i.e. no /var/lib/spamassassin/<ver>).
            # Its eval rules need the plugins that /etc/spamassassin/*.pre load.
            for pre in Path("/etc/spamassassin").glob("*.pre"):
                shutil.copy(pre, site / pre.name)
            (site / "local.cf").write_text(NO_NETWORK_SITE_CF + TINY_RULES.split("\n", 1)[1])
        else:
            raise ValueError("rules must be 'tiny' or 'debian'")
        t0 = time.monotonic()
        self._proc = ReapedProcess(args, self.stdout_path)
        try:
            wait_until(self._ping, timeout, interval=0.1, what="spamd PONG")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.diagnostics()}") from None
        self.startup_seconds = time.monotonic() - t0

    def _ping(self) -> bool:
        if not self._proc.child_running():
            raise RuntimeError(f"spamd exited during startup\n{self.diagnostics()}")
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.settimeout(10)
                s.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in s.recv(256)
        except OSError:
            return False

    def diagnostics(self) -> str:
        out = []
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                out.append(f"--- {p} ---\n{p.read_text(errors='replace')[-5000:]}")
        return "\n".join(out)

    def stop(self, timeout: float = 15.0):
        if self._proc is not None:
            self._proc.terminate(timeout)
            self._proc = None


@contextlib.contextmanager
def spamd_instance(tmpdir, rules: str = "tiny", start_timeout: float = 120.0):
    """A private spamd on 127.0.0.1:<free port>. rules='tiny' loads only
    TINY_RULES (fast start); rules='debian' loads the package's full rule set
    from /usr/share/spamassassin (slow start) plus the tiny test rules."""
    tmpdir = Path(tmpdir)
    owns = not _world_traversable(tmpdir)
    # spamd children run as 'nobody' when started as root: keep files reachable.
    run_dir = Path(tempfile.mkdtemp(prefix="qsup-spamd-" if owns else "spamd-",
                                    dir="/tmp" if owns else tmpdir))
    inst = None
    try:
        last_err = None
        for _attempt in range(3):
            inst = SpamdInstance(run_dir, free_port(), rules)
            try:
                inst.start(start_timeout)
                break
            except Exception as e:
                last_err = e
                inst.stop()
                if "Address already in use" not in str(e):
                    raise
        else:
            raise last_err
        yield inst
    finally:
        if inst is not None:
            inst.stop()
        if owns:
            shutil.rmtree(run_dir, ignore_errors=True)


def spamc_check(port: int, msg: bytes, timeout: float = 60.0) -> tuple[int, str]:
    """spamc -c: prints 'score/threshold'; exit 1 = spam, 0 = ham."""
    exe = require("spamc", "spamc")
    # -x: without it spamc "fails safe": prints 0/0 and exits 0 when spamd is
    # unreachable; with -x it exits 69 (EX_UNAVAILABLE) / 74 instead.
    cp = subprocess.run([exe, "-d", LOOPBACK, "-p", str(port), "-c", "-x", "-t", str(int(timeout))],
                        input=msg, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=timeout + 5)
    return cp.returncode, cp.stdout.decode().strip()
