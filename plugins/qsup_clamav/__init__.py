"""qsup plugin: ClamAV scanners (scanner kinds ``clamscan`` and ``clamd``).

``clamscan``
    One-shot: one ``clamscan`` process per batch (the signature database is loaded for
    every batch: fine with a small database, slow with the official one — use clamd).
    Options ``[plugin.clamscan]``: ``clamscan`` (path), ``database`` (file or
    directory, ``-d``; empty: clamscan's default), ``args`` (extra arguments, split
    like a shell would).
``clamd``
    Persistent workers that hand each message to a running clamd over its Unix
    socket: the open file (``zFILDES``, so clamd needs no access to qsup's files), or
    with ``stream`` its bytes (``zINSTREAM``). Options
    ``[plugin.clamd]``: ``socket`` (default: ``LocalSocket`` of
    /etc/clamav/clamd.conf, else /var/run/clamav/clamd.ctl), ``timeout`` (seconds
    clamd may take per message), ``connect_wait`` (seconds to keep trying to connect
    while clamd restarts), ``chunk_size``, ``stream``, ``conf``.

Verdicts are ``clean`` and ``infected NAME``. An infected message is not poison: it
is the scanner's answer, passed to the ``qsup_verdict`` hook (this plugin logs it,
rate-capped) and acted on as ``on_infected`` says (quarantined, kind infected, by
default). The scanner's identity (docs/reference.md §9) is clamd's ``VERSION``
answer, or ``clamscan --version``: a signature update changes it, and poison
quarantined under the old one is re-tested. What is a crash: clamscan dying
or exiting 2, clamd closing the connection mid-message or answering ``ERROR`` (a
message clamd cannot scan is never passed as clean).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys

from quarantine import pluginopts
from quarantine.errors import ConfigError
from quarantine.hookspecs import hookimpl
from quarantine.pluginopts import Option
from quarantine.ratecap import RateCap
from quarantine.scanner import CommandScanner

log = logging.getLogger("qsup.clamav")

CLAMD_CONF = "/etc/clamav/clamd.conf"
DEFAULT_SOCKET = "/var/run/clamav/clamd.ctl"
DEFAULT_DATABASE = "/var/lib/clamav"

CLAMSCAN_OPTIONS = {
    "clamscan": Option(str, "", "path of clamscan (default: found on PATH)"),
    "database": Option(str, "", "signature file or directory (-d); empty: clamscan's default"),
    "args": Option(str, "", "extra clamscan arguments"),
}
CLAMD_OPTIONS = {
    "socket": Option(str, "", f"clamd's Unix socket (default: LocalSocket of {CLAMD_CONF})"),
    "conf": Option(str, CLAMD_CONF, "clamd's config file: its LocalSocket and DatabaseDirectory"),
    "timeout": Option(float, 120.0, "seconds clamd may take for one message", minimum=0.1),
    "connect_wait": Option(float, 10.0, "seconds to keep trying to connect (clamd restarting)", minimum=0),
    "chunk_size": Option(int, 65536, "bytes per INSTREAM chunk", minimum=1024),
    "stream": Option(bool, False, "send each message's bytes (zINSTREAM) instead of passing the "
                     "open file (zFILDES)"),
}


def _conf_value(conf: str, key: str) -> str | None:
    try:
        with open(conf) as fh:
            for line in fh:
                words = line.split()
                if len(words) == 2 and words[0] == key:
                    return words[1]
    except OSError:
        pass
    return None


def clamd_socket_from(conf: str = CLAMD_CONF) -> str:
    """clamd's LocalSocket as its config file says, or Debian's default."""
    return _conf_value(conf, "LocalSocket") or DEFAULT_SOCKET


def make_clamscan(config) -> CommandScanner:
    opts = pluginopts.parse("clamscan", config.plugin_options("clamscan"), CLAMSCAN_OPTIONS)
    exe = opts["clamscan"] or shutil.which("clamscan")
    if not exe or not os.access(exe, os.X_OK):
        raise ConfigError("[plugin.clamscan] clamscan: program not found "
                          "(install the Debian package 'clamav')")
    argv = [sys.executable, "-m", "qsup_clamav.clamscan_worker", "--clamscan", exe]
    if opts["database"]:
        argv += ["--database", opts["database"]]
    try:
        argv += [f"--arg={a}" for a in shlex.split(opts["args"])]
    except ValueError as exc:
        raise ConfigError(f"[plugin.clamscan] args: {exc}") from None
    version = [exe, "--version"] + (["--database", opts["database"]] if opts["database"] else [])
    return CommandScanner(argv + ["--"], mode="oneshot", name="clamscan",
                          reader=lambda: _first_line(version))


def make_clamd(config) -> CommandScanner:
    opts = pluginopts.parse("clamd", config.plugin_options("clamd"), CLAMD_OPTIONS)
    sock = opts["socket"] or clamd_socket_from(opts["conf"])
    database = _conf_value(opts["conf"], "DatabaseDirectory") or DEFAULT_DATABASE
    argv = [sys.executable, "-m", "qsup_clamav.clamd_worker", "--socket", sock,
            "--timeout", str(opts["timeout"]), "--connect-wait", str(opts["connect_wait"]),
            "--chunk-size", str(opts["chunk_size"])] + (["--stream"] if opts["stream"] else [])
    return CommandScanner(argv, mode="persistent", name="clamd",
                          reader=lambda: clamd_identity(sock, database, min(5.0, opts["timeout"])))


def clamd_identity(sock: str, database: str, timeout: float) -> str:
    """clamd's ``VERSION``; when it names no signature version (local signature
    files only, no official database), a digest of the database directory's files
    (names, sizes, times) stands for it, so a new signature file changes it too."""
    version = clamd_version(sock, timeout)
    if "/" in version:
        return version
    return f"{version} signatures {signature_digest(database)}"


def signature_digest(directory: str) -> str:
    digest = hashlib.blake2b(digest_size=6)
    try:
        with os.scandir(directory) as it:
            entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in it
                             if e.is_file(follow_symlinks=False))
    except OSError:
        return "unreadable"
    for name, st in entries:
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def clamd_version(sock: str, timeout: float) -> str:
    """clamd's ``VERSION`` answer: engine, signature version and date, e.g.
    ``ClamAV 1.4.6/27000/Tue Dec  1 09:00:00 2026``. A new signature database (a
    RELOAD after freshclam) changes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(sock)
        conn.sendall(b"zVERSION\0")
        answer = b""
        while not answer.endswith(b"\0"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    text = answer.rstrip(b"\0").decode("utf-8", "replace").strip()
    if not text.startswith("ClamAV"):
        raise OSError(f"clamd at {sock} answered VERSION with {text[:80]!r}")
    return " ".join(text.split())


def _first_line(argv: list[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    line = cp.stdout.decode("utf-8", "replace").strip().splitlines()
    if cp.returncode != 0 or not line:
        raise OSError(f"{' '.join(argv)}: exit {cp.returncode}, no version")
    return line[0].strip()


@hookimpl
def qsup_scanner_types():
    return {"clamscan": make_clamscan, "clamd": make_clamd}


_infected = RateCap(log)


@hookimpl
def qsup_verdict(qid: str, verdict: str, queue) -> None:
    """Infected: said once per message (rate-capped), then handed on as usual."""
    kind, _, name = verdict.partition(" ")
    if kind == "infected":
        _infected(logging.WARNING, "%s is infected (%s): a verdict, not a crash (on_infected "
                  "says what the %s queue does with it)", qid, name or "?", queue.name, qid=qid)
