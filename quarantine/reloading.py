"""A reload (SIGHUP, `qsup reload`): the new configuration read and checked, then
handed to every part of a running qsup — or refused whole, in one log line, keeping
the old one. A running qsup keeps its queue."""

from __future__ import annotations

import logging

from quarantine.config import Config

log = logging.getLogger("qsup")


def reload_now(sup) -> None:
    """Apply to the running supervisor *sup* the configuration `sup.reload` reads, or
    keep the old one."""
    sup._reload_wanted = False
    if sup.reload is None:
        return
    try:
        new = sup.reload()
        scanner = sup.make_scanner(new) if sup.make_scanner else sup.pool.scanner
    except Exception as exc:  # a bad file must not stop a running daemon
        log.error("reload failed, keeping the old configuration: %s", exc)
        return
    if moved := _queue_moved(sup.config, new):
        log.error("reload refused, keeping the old configuration: %s; a running qsup keeps "
                  "its queue (restart it to change that)", moved)
        return
    sup.config = new
    for part in (sup.env, sup.isolation, sup.intake, sup.notifier):
        part.configure(new)
    sup.pool.configure(new, scanner)
    sup.pool.retire_idle()  # persistent workers restart with the new settings
    sup.retester.configure(new)
    sup._identity.interval = new.retest_check
    sup._read_identity(sup.clock())
    log.info("configuration reloaded from %s", new.source)


def _queue_moved(old: Config, new: Config) -> str:
    """What a reload would change of the queue (locked and recorded at start)."""
    return ", ".join(f"{key} {getattr(old, key)!r} -> {getattr(new, key)!r}"
                     for key in ("queue", "spool") if getattr(new, key) != getattr(old, key))
