"""The supervisor loop driven in-process: real spools, real worker processes, and
signals raised at chosen moments of a pass (huey-style: the loop is a component of
the test, not a subprocess)."""

from __future__ import annotations

import os
import sys
import time
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


class Clock:
    """Injected time: it moves only when the test says so."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(tmp: Path, count: int, poison: dict | None = None, clock=None, wrap=None, **overrides):
    spool, state = tmp / "spool", tmp / "state"
    ids = build_spool(str(spool), count, poison or {})
    config = load(None, {"spool": str(spool), "worker": DEMO, "workers": 1,
                         "batch_size": count, **overrides})
    store = Store(str(state))
    scanner = CommandScanner(config.worker_argv, config.worker_mode)
    extra = {"clock": clock} if clock else {}
    queue = SpoolQueue(str(spool))
    sup = Supervisor(config, store, wrap(queue) if wrap else queue, scanner, Hooks(),
                     state_dir=str(state), **extra)
    return sup, store, spool, ids


def settle_real(sup, until, what: str, limit: float = 20.0) -> None:
    """Let real processes do what they do (exit, write lines) while injected time
    stands still: wait on their pipes, never on the clock."""
    deadline = time.monotonic() + limit
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        sup.pool.wait(0.01, lambda: False)


def test_a_stop_between_two_reads_of_a_pass_still_settles_what_ended(tmp_path):
    """A signal can land anywhere in a pass. Here it lands in the pass that collects
    a batch which scanned cleanly, after the loop has looked at the stop flag once:
    the batch must still be settled (delivered, its in-flight record gone), not left
    for the next start to re-run as 'died in flight'."""
    sup, store, spool, ids = make(tmp_path, 5)

    def reload_then_signal():
        # Called mid-pass (the loop acts on a SIGHUP between its steps); the batch
        # has been launched and has ended by now: a SIGTERM arrives at this moment.
        if sup.stats["batches"] and not sup.pool.runs:
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


def test_a_hung_worker_is_killed_at_its_deadline_of_injected_time(tmp_path):
    """The deadline is start-up allowance + timeout x size, then timeout after each
    progress line, on the loop's clock: the test moves the clock past it instead of
    waiting 30 seconds."""
    clock = Clock()
    sup, store, spool, ids = make(tmp_path, 1, {0: "hang"}, clock, timeout=30.0,
                                  startup_allowance=10.0)
    try:
        sup.start()
        assert sup.step(clock(), follow=False) is None
        (run,) = sup.pool.runs.values()
        assert run.deadline == 1040.0
        # its `begin` line moves the deadline to timeout after it (read at 1000): wait
        # for it on real time, or it lands after the clock moved and moves it further
        settle_real(sup, lambda: run.begun, "the begin line")
        assert run.deadline == 1030.0
        clock.t = 1029.9
        sup.pool.wait(0.01, lambda: False)
        assert run.proc.poll() is None, "killed before its deadline"
        clock.t = 1030.0
        sup.pool.wait(0.01, lambda: False)
        settle_real(sup, lambda: run.proc.exit is not None, "the kill to land")
        assert run.proc.killed_by_us == "timeout"
        sup.step(clock(), follow=False)
        assert sup.stats["crashes"] == 1 and sup.stats["strikes"] == 1
        with store.read() as r:
            (hist,) = [h for _, h in r.items("history")]
        assert hist["attempts"][-1]["ending"] == "timeout"
    finally:
        sup.request_stop(), sup.request_stop()
        sup._shutdown()
        store.close()
    assert sorted(os.listdir(spool / "incoming")) == ids, "a strike below K quarantines nothing"


def test_breaker_probes_back_off_exponentially_without_waiting(tmp_path):
    """A worker that cannot start opens the breaker; the canary probes at 0.25 s,
    then 0.5, 1, 2, 4 … s apart, and drain gives up after max_wait — all on the
    injected clock, so the 30 s of backoff take no wall time."""
    clock = Clock()
    sup, store, spool, ids = make(tmp_path, 3, {}, clock, worker="/nonexistent/scanner",
                                  max_wait=30.0)
    probes, code = [], None
    started = time.monotonic()
    try:
        sup.start()
        while code is None and clock.t < 1100:
            before = sup.stats["canary_runs"]
            code = sup.step(clock(), follow=False)
            if sup.stats["canary_runs"] > before:
                probes.append(round(clock.t - 1000.0, 2))
            clock.t = round(clock.t + 0.05, 2)
    finally:
        sup._shutdown()
        store.close()
    assert code == 3, "drain gives up with exit 3 once the breaker stayed open max_wait"
    assert 30.0 <= clock.t - 1000.0 <= 30.2
    gaps = [round(b - a, 2) for a, b in zip(probes, probes[1:])]
    assert probes[0] == 0.25 and gaps[:5] == [0.5, 1.0, 2.0, 4.0, 8.0], probes
    assert sup.stats["quarantined"] == 0 and sup.stats["batches"] == 0
    assert sorted(os.listdir(spool / "incoming")) == ids
    assert time.monotonic() - started < 20, "the backoff must not be waited for in real time"


def test_candidates_wait_for_a_fresh_batch_before_a_canary_runs(tmp_path):
    """While traffic flows, a candidate waits up to CANARY_WAIT for a fresh worker's
    clean batch; only when none came does the canary run."""
    clock = Clock()
    poison = {0: "segv"}
    sup, store, spool, ids = make(tmp_path, 12, poison, clock, strikes=1, batch_size=3,
                                  worker=DEMO + " --delay 0.3")
    try:
        sup.start()
        sup.step(clock(), follow=False)  # [M0 M1 M2] starts; M0 crashes at once
        settle_real(sup, lambda: sup.pool.runs and next(iter(sup.pool.runs.values())).proc.exit is not None,
                    "the poison to crash its worker")
        sup.step(clock(), follow=False)  # blamed by its progress lines: a candidate
        assert len(sup.isolation.candidates) == 1
        assert sup.pool.runs, "the next batch started at once"
        clock.t += 0.99
        sup.step(clock(), follow=False)
        assert sup.pool.canary is None, "the canary ran before the fresh batch had its chance"
        clock.t += 0.01
        sup.step(clock(), follow=False)
        assert sup.pool.canary is not None, "no canary after CANARY_WAIT with no other proof"
        assert sup.stats["canary_runs"] == 1
        canary = sup.pool.canary
        settle_real(sup, lambda: canary.proc.exit is not None, "the canary to pass")
        sup.step(clock(), follow=False)
        assert sup.stats["quarantined"] == 1
    finally:
        sup.request_stop(), sup.request_stop()
        sup._shutdown()
        store.close()
    assert os.listdir(spool / "quarantine") == [ids[0]]


def test_spares_start_only_after_a_crash_and_as_many_as_wanted(tmp_path):
    """Persistent workers: no spare while nothing has crashed; after a crash a
    quarter of the workers plus one."""
    clock = Clock()
    sup, store, spool, ids = make(tmp_path, 40, {5: "segv"}, clock, workers=4, batch_size=5,
                                  worker_mode="persistent", worker=DEMO + " --delay 0.05")
    try:
        sup.start()
        sup.step(clock(), follow=False)
        assert len(sup.pool.runs) == 4 and not sup.pool.idle, "spares before any crash"
        settle_real(sup, lambda: sup.stats["worker_starts"] and any(
            r.proc.exit is not None for r in sup.pool.runs.values()), "the poison's crash")
        sup.step(clock(), follow=False)
        assert sup.stats["crashes"] == 1
        spares = [p for p in sup.pool.idle if p.batches == 0]
        assert len(spares) == 4 // 4 + 1
    finally:
        sup.request_stop(), sup.request_stop()
        sup._shutdown()
        store.close()


class ListingQueue:
    """A queue plugin with only the required `pending` (no `pending_steps`), as
    third-party queues and the Postfix hold queue are."""

    def __init__(self, inner):
        self._inner, self.name = inner, inner.name

    def __getattr__(self, name):
        if name == "pending_steps":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_a_stop_is_clean_for_a_queue_that_lists_in_one_go(tmp_path):
    """Finding 14: a queue without pending_steps got iter([...]) as its listing and
    the shutdown called .close() on it: AttributeError, exit 1, mail left behind."""
    sup, store, spool, ids = make(tmp_path, 50, wrap=ListingQueue, batch_size=5, workers=2,
                                  poll_interval=0.05, worker=DEMO + " --delay 0.02")
    # the stop lands while a listing is under way (its messages not all taken yet)
    sup.on_tick = lambda s: s.intake.listing and s.request_stop()
    try:
        assert sup.serve(follow=True) == 0
    finally:
        store.close()
    assert sup.stop, "no listing was under way: the test proves nothing"
    where = {sub: set(os.listdir(spool / sub)) for sub in ("incoming", "outgoing")}
    assert where["incoming"] | where["outgoing"] == set(ids)


def test_max_wait_counts_all_the_time_the_breaker_kept_drain_from_progress(tmp_path):
    """Finding 11: a breaker that opens, closes when the canary passes, and reopens at
    the next batch never stayed open max_wait at a stretch, so drain went on for ever
    (with defaults) or far past --max-wait. The open time adds up until progress."""
    clock = Clock()
    flapping = f"{sys.executable} -c 'import sys; sys.exit(127 if len(sys.argv) > 2 else 0)'"
    sup, store, spool, ids = make(tmp_path, 10, {}, clock, worker=flapping, batch_size=5,
                                  workers=1, max_wait=5.0)
    code, openings, was_open = None, 0, False
    try:
        sup.start()
        while code is None and clock.t < 1200:
            code = sup.step(clock(), follow=False)
            openings += sup.env.is_open and not was_open
            was_open = sup.env.is_open
            if sup.pool.all_runs():
                settle_real(sup, lambda: not any(r.proc.exit is None for r in sup.pool.all_runs()),
                            "the run to end")
            clock.t = round(clock.t + 0.05, 2)
    finally:
        sup._shutdown()
        store.close()
    assert code == 3
    assert openings >= 3, "the breaker did not flap: the test proves nothing"
    assert clock.t - 1000 < 8, f"drain gave up only after {clock.t - 1000:.1f}s (max_wait 5 s in total)"
    assert sorted(os.listdir(spool / "incoming")) == ids
