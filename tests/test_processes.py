"""Hangs, grandchildren, memory and outside kills: real processes, hard time limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import DEMO, WORKERS, assert_conserved, wait_for

pytestmark = pytest.mark.timeout(180)


def test_hang_is_killed_by_the_deadline_and_its_grandchildren_die(qsup, make_spool, tmp_path):
    pids_file = tmp_path / "pids"
    ids = make_spool(60, {5: "hang-family"})
    worker = f"{sys.executable} {WORKERS / 'spawner.py'}"
    proc = subprocess.run(
        qsup.argv("drain", "--spool", str(qsup.spool), "--worker", worker, "--workers", "2",
                  "--batch-size", "20", "--timeout", "1", "--startup-allowance", "2", "--json"),
        capture_output=True, text=True, timeout=150, env={**os.environ, "SPAWNER_PIDS": str(pids_file)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[5]}
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) >= 4  # a child and a daemonised grandchild per hanging run
    time.sleep(0.2)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"descendants still running: {alive}"
    rec = qsup.listing()[0]
    assert rec["why"] == "timeout"


def test_memory_blowup_is_quarantined_as_memory_with_peak_rss(qsup, make_spool):
    ids = make_spool(40, {7: "memory"})
    proc = qsup.drain("--worker", DEMO, "--workers", "2", "--batch-size", "10", "--max-rss", "150")
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[7]}
    rec = qsup.listing()[0]
    assert rec["why"] == "memory" and rec["peak_rss"] > 150 * 1024 * 1024
    shown = qsup("show", ids[7])
    assert "memory" in shown.stdout and "peak RSS" in shown.stdout


def test_outside_sigkill_is_a_crash_and_loses_nothing(qsup, make_spool):
    """A worker killed by SIGKILL that qsup did not send (as the OOM killer does) is
    a crash of its batch; its messages are isolated and delivered, none lost."""
    ids = make_spool(20, {})
    worker = f"{DEMO} --delay 0.3"
    drain = subprocess.Popen(qsup.argv("drain", "--spool", str(qsup.spool), "--worker", worker,
                                       "--workers", "1", "--batch-size", "20", "--json"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            for child in psutil.Process(drain.pid).children(recursive=True):
                if "demo_scanner" in " ".join(child.cmdline()):
                    victim = child
            time.sleep(0.05)
        assert victim is not None, "worker never started"
        time.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        out, err = drain.communicate(timeout=120)
    finally:
        drain.kill()
    assert drain.returncode == 0, err[-2000:]
    assert "killed (SIGKILL" in err
    where = assert_conserved(qsup.spool, ids)
    assert where["outgoing"] == set(ids)  # an innocent batch: the crash is unexplained
    assert not where["quarantine"]


def test_warm_stop_counts_no_strike_even_for_a_worker_that_ignores_sigterm(qsup, make_spool, tmp_path):
    ids = make_spool(10, {})
    started = tmp_path / "started"
    worker = f"{sys.executable} {WORKERS / 'ignores_term.py'}"
    run = subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--worker", worker,
                                     "--workers", "1", "--batch-size", "10", "--grace", "0.5"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TERM_STARTED": str(started)})
    try:
        wait_for(started.exists, what="the batch to start")  # its 10 x 0.5 s has begun
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 0, err[-2000:]
    assert "warm stop" in err
    where = assert_conserved(qsup.spool, ids)
    # Begun before the signal and not finished by the stop (what it reported done
    # within the 0.5 s grace is delivered, the rest is not): the one batch was in
    # flight when the signal came.
    assert where["incoming"] and not where["quarantine"]
    # nothing stays in flight and nobody got a strike: a second drain delivers all
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0
    assert qsup.summary(proc)["crashes"] == 0
    assert_conserved(qsup.spool, ids)
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)
