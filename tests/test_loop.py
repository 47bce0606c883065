"""The supervisor loop driven in-process: real spools, real worker processes, and
signals raised at chosen moments of a pass (huey-style: the loop is a component of
the test, not a subprocess)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from quarantine.config import load
from quarantine.demo import build_spool
from quarantine.scanner import CommandScanner
from quarantine.spool import SpoolQueue
from quarantine.store import Store
from quarantine.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)
DEMO = f"{sys.executable} -m quarantine.demo_scanner"


class Hooks:
    """No plugin listens: the event hooks of a bare plugin manager."""

    def __init__(self):
        from quarantine import pm

        self._hook = pm.build(load_entry_points=False).hook

    def __getattr__(self, name):
        return getattr(self._hook, name)


def make(tmp: Path, count: int, **overrides):
    spool, state = tmp / "spool", tmp / "state"
    ids = build_spool(str(spool), count, {})
    config = load(None, {"spool": str(spool), "worker": DEMO, "workers": 1,
                         "batch_size": count, **overrides})
    store = Store(str(state))
    sup = Supervisor(config, store, SpoolQueue(str(spool)), CommandScanner(config.worker_argv),
                     Hooks(), state_dir=str(state))
    return sup, store, spool, ids


def test_a_stop_between_two_reads_of_a_pass_still_settles_what_ended(tmp_path):
    """A signal can land anywhere in a pass. Here it lands in the pass that collects
    a batch which scanned cleanly, after the loop has looked at the stop flag once:
    the batch must still be settled (delivered, its in-flight record gone), not left
    for the next start to re-run as 'died in flight'."""
    sup, store, spool, ids = make(tmp_path, 5)

    def reload_then_signal():
        # Called mid-pass (the loop acts on a SIGHUP between its steps); the batch
        # has been launched and has ended by now: a SIGTERM arrives at this moment.
        if sup.stats["batches"] and not sup.runs:
            sup.request_stop()
        return sup.config

    sup.reload = reload_then_signal
    sup.on_tick = lambda s: s.request_reload()
    try:
        assert sup.serve(follow=True) == 0
        with store.read() as r:
            inflight = list(r.items("batches"))
    finally:
        store.close()
    assert sup.stats["batches"] == 1, "the batch never ran: the test proves nothing"
    assert inflight == [], "a batch that scanned cleanly kept its in-flight record"
    assert sorted(os.listdir(spool / "outgoing")) == ids
