"""qsup plugin: SpamAssassin through spamc (scanner kind ``spamc``).

Each message is handed to ``spamc -c -x`` against a running spamd; the score is the
verdict: ``spam 11.5/5.0`` or ``ham 0.3/5.0`` (score/threshold). ``-x`` matters:
without it spamc "fails safe" and calls every message ham (``0/0``, exit 0) when
spamd cannot be reached. Here an unreachable spamd, a timeout or a message spamc
refuses is a crash of that message's batch, and qsup's canary tells a dead spamd
(breaker: nothing quarantined) from a message that kills spamd.

Options ``[plugin.spamc]``: ``spamc`` (path), ``host`` and ``port`` (TCP; default
spamc's own: localhost:783), ``socket`` (Unix socket instead), ``username`` (-u),
``timeout`` (seconds per message), ``max_size`` (bytes; larger messages are not sent
to spamd and get the verdict ``unscanned too-big``), ``mode`` (``persistent``, the
default, or ``oneshot``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from quarantine import pluginopts
from quarantine.errors import ConfigError
from quarantine.hookspecs import hookimpl
from quarantine.pluginopts import Option
from quarantine.ratecap import RateCap
from quarantine.scanner import CommandScanner

log = logging.getLogger("qsup.spamassassin")

OPTIONS = {
    "spamc": Option(str, "", "path of spamc (default: found on PATH)"),
    "host": Option(str, "", "spamd host(s), spamc -d (default: spamc's, localhost)"),
    "port": Option(int, 0, "spamd TCP port, spamc -p (0: spamc's default, 783)", minimum=0),
    "socket": Option(str, "", "spamd Unix socket, spamc -U (instead of host/port)"),
    "username": Option(str, "", "user whose preferences spamd applies, spamc -u"),
    "timeout": Option(float, 60.0, "seconds spamd may take for one message", minimum=1),
    "max_size": Option(int, 512000, "larger messages are not scanned (verdict 'unscanned')",
                       minimum=1),
    "mode": Option(str, "persistent", "'persistent' (default) or 'oneshot'"),
}


def make_spamc(config) -> CommandScanner:
    opts = pluginopts.parse("spamc", config.plugin_options("spamc"), OPTIONS)
    exe = opts["spamc"] or shutil.which("spamc")
    if not exe or not os.access(exe, os.X_OK):
        raise ConfigError("[plugin.spamc] spamc: program not found (install the Debian package 'spamc')")
    if opts["mode"] not in ("persistent", "oneshot"):
        raise ConfigError(f"[plugin.spamc] mode must be persistent or oneshot, not {opts['mode']!r}")
    argv = [sys.executable, "-m", "qsup_spamassassin.spamc_worker", "--spamc", exe,
            "--timeout", str(int(opts["timeout"])), "--max-size", str(opts["max_size"])]
    for key in ("host", "port", "socket", "username"):
        if opts[key]:
            argv += [f"--{key}", str(opts[key])]
    return CommandScanner(argv + ["--"], mode=opts["mode"], name="spamc")


@hookimpl
def qsup_scanner_types():
    return {"spamc": make_spamc}


_spam = RateCap(log)


@hookimpl
def qsup_verdict(qid: str, verdict: str, queue) -> None:
    kind, _, score = verdict.partition(" ")
    if kind == "spam":
        _spam(logging.INFO, "%s is spam (score %s): handed on by the %s queue", qid, score, queue.name,
              qid=qid)
