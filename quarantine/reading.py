"""The state, read-only, for the commands that only look (list, show, status, export).

A reading command never takes the state's lock, so it works while ``qsup run``
holds it; naming a queue (``--spool``, ``--queue``, the configuration file) it is
refused, touching nothing, when the state belongs to another (binding.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quarantine import binding, pm
from quarantine.store import Store

if TYPE_CHECKING:
    from quarantine.options import Ctx


def open_read(ctx: Ctx, overrides: dict | None = None) -> Store:
    """The state, read-only; with *overrides* (queue flags), refused if it belongs to
    another queue than the one they or the configuration file name."""
    store = Store(ctx.state, readonly=True)
    if overrides is not None:
        try:
            config = ctx.config(overrides)
            if binding.names_a_queue(config):
                with store.read() as r:
                    binding.resolve(pm.build(), config, binding.recorded(r), ctx.state)
        except BaseException:
            store.close()
            raise
    return store


def status(ctx: Ctx) -> dict:
    """What ``qsup status --json`` prints: the last status snapshot the running (or
    last) qsup wrote, the last recovery, counts, and who holds the state."""
    store = open_read(ctx)
    try:
        with store.read() as r:
            snap = r.get("meta", "status") or {}
            recovery = r.get("meta", "recovery")
            quarantined = r.count("quarantine")
            inflight = sum(len(b.get("ids", ())) for _, b in r.items("batches"))
    finally:
        store.close()
    holder = Store.holder(ctx.state)
    return {"running": bool(holder), "pid": holder, "quarantined": quarantined,
            "inflight_records": inflight, "last": snap, "recovery": recovery}
