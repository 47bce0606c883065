"""qsup plugin: the Postfix hold queue (queue kind ``postfix``).

Postfix holds every incoming message (``header_checks``: ``/^Received:/ HOLD``), qsup
scans the held messages and releases the clean ones — MailScanner's place in a
Postfix system. See ``examples/mailscanner/POSTFIX.md`` for the whole path.

Options (``[plugin.postfix]`` in qsup.toml, or ``--plugin-option postfix.KEY=VALUE``):

``config_directory``
    Postfix configuration directory of the instance (``-c DIR`` on every Postfix
    command); empty: the default instance.
``command_directory``
    Where postconf, postcat, postsuper and postqueue are; empty: found on PATH or in
    /usr/sbin.
``quarantine_dir``
    Copies of quarantined messages (0700, files 0600; the messages themselves stay
    on hold). Default ``/var/lib/qsup/postfix-quarantine/NAME``, NAME being the base
    name of the config directory (``postfix`` for /etc/postfix).
``scan_dir``
    Where the scanner's copies are made (0700; emptied at start). Default
    ``QUARANTINE_DIR/.scan``.
``command_timeout``
    Seconds a Postfix command may take (default 60).
``reinject``
    ``HOST:PORT`` (loopback) of the re-injection smtpd in master.cf (see POSTFIX.md):
    with it, spam is delivered tagged (a tagged copy is re-injected and the held
    original deleted, :mod:`qsup_postfix.reinject`); empty (default): spam is
    delivered untagged, and qsup says so once.
"""

from __future__ import annotations

import os
import shutil
import weakref

from qsup_postfix.commands import Postfix, PostfixError
from qsup_postfix.queue import PostfixQueue
from quarantine import pluginopts
from quarantine.hookspecs import hookimpl
from quarantine.pluginopts import Option

__all__ = ["OPTIONS", "Postfix", "PostfixError", "PostfixQueue", "make_queue"]

QUARANTINE_BASE = "/var/lib/qsup/postfix-quarantine"

OPTIONS = {
    "config_directory": Option(str, "", "Postfix configuration directory (-c); empty: the default instance"),
    "command_directory": Option(str, "", "where postconf, postcat, postsuper, postqueue are"),
    "quarantine_dir": Option(str, "", f"copies of quarantined messages (default {QUARANTINE_BASE}/NAME)"),
    "scan_dir": Option(str, "", "scanner copies (default QUARANTINE_DIR/.scan)"),
    "command_timeout": Option(float, 60.0, "seconds a Postfix command may take", minimum=1),
    "reinject": Option(str, "", "HOST:PORT of the re-injection smtpd (tagged copies); empty: spam untagged"),
}


def default_quarantine_dir(config_directory: str) -> str:
    instance = os.path.basename(os.path.normpath(config_directory)) if config_directory else "postfix"
    return os.path.join(QUARANTINE_BASE, instance)


def _postfix(config) -> tuple[Postfix, dict]:
    opts = pluginopts.parse("postfix", config.plugin_options("postfix"), OPTIONS)
    return Postfix(opts["config_directory"], opts["command_directory"], opts["command_timeout"]), opts


def make_queue(config) -> PostfixQueue:
    postfix, opts = _postfix(config)
    qdir = opts["quarantine_dir"] or default_quarantine_dir(opts["config_directory"])
    queue = PostfixQueue(postfix, qdir, opts["scan_dir"], opts["reinject"])
    # When the queue is dropped, or at exit: the scanner copies go, the lock is let go.
    weakref.finalize(queue, _close, queue.scan_dir, queue.store)
    return queue


def _close(scan_dir: str, store) -> None:
    shutil.rmtree(scan_dir, ignore_errors=True)
    store.close()


@hookimpl
def qsup_queue_types():
    return {"postfix": make_queue}


@hookimpl
def qsup_queue_identity(config):
    """The instance's queue_directory (postconf): one qsup per Postfix queue."""
    if config.queue != "postfix":
        return None
    postfix, _ = _postfix(config)
    return {"kind": "postfix", "where": os.path.realpath(postfix.params("queue_directory")["queue_directory"])}
