"""A broken environment is not a poison message (seed 004), and memory poison is
(seed 000). Real workers, real limits."""

from __future__ import annotations

import re

import pytest
from conftest import DEMO, assert_conserved

from quarantine.backoff import probe_delay
from quarantine.breaker import Breaker

pytestmark = pytest.mark.timeout(300)


def test_breaker_logic_with_injected_time():
    b = Breaker(storm_limit=3, storm_window=60)
    assert not any(b.solo_crash(f"m{i}", now=i) for i in range(3))
    assert b.solo_crash("m0", now=3) is False  # the same message again is not a storm
    assert b.solo_crash("m9", now=4) is True
    assert b.trip("storm", now=4) and not b.trip("storm again", now=5)
    assert not b.probe_due(4 + probe_delay(1) / 2) and b.probe_due(4 + probe_delay(1))
    b.probe_failed(now=10)
    assert b.next_probe == 10 + probe_delay(2)
    b.probe_passed(now=20)
    assert not b.is_open and b.solo_crash("x", now=21) is False
    b.trip("storm", now=30)  # reopened soon after closing: waits longer
    assert b.next_probe == 30 + probe_delay(2)
    b.probe_passed(now=40)
    b.trip("later", now=40 + 61)
    assert b.next_probe == 101 + probe_delay(1)
    b.probe_passed(now=110)
    b.delivered(1000, now=111)  # a flowing queue: a run of poison, not a broken scanner
    assert b.storm("storm", now=112) and b.next_probe == 112  # probed at once


@pytest.mark.parametrize("limit", [["--max-rss", "4"], ["--rlimit-as-mb", "12"]], ids=["max-rss", "rlimit-as"])
def test_seed_004_absurd_memory_limit_quarantines_nothing(qsup, make_spool, limit):
    """Every worker dies because the limit is far below what any scan needs: the
    canary dies too, so the breaker opens, nothing is quarantined, nothing is lost,
    drain exits 3. With a sane limit everything drains."""
    ids = make_spool(500, {})
    # A black-box scanner (no progress lines): with them, messages a worker reported
    # done before the guard caught up with it would rightly be delivered.
    proc = qsup.drain("--worker", DEMO + " --no-progress", *limit, "--max-wait", "6", timeout=200)
    assert proc.returncode == 3, proc.stderr[-3000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["incoming"] == set(ids) and not where["quarantine"] and not where["outgoing"]
    assert qsup.summary(proc)["breaker"]["state"] == "open"
    assert len(re.findall("breaker open:", proc.stderr)) == 1  # said once, not per message
    assert "canary failed" in proc.stderr
    status = qsup("status", "--json")
    assert '"state": "open"' in status.stdout

    again = qsup.drain("--worker", DEMO, "--max-rss", "200", timeout=200)
    assert again.returncode == 0, again.stderr[-3000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["outgoing"] == set(ids) and not where["quarantine"]


def test_missing_worker_binary_exits_3_naming_the_command(qsup, make_spool):
    ids = make_spool(20, {})
    proc = qsup.drain("--worker", "/opt/nowhere/scanner --batch", "--max-wait", "3")
    assert proc.returncode == 3
    assert "/opt/nowhere/scanner" in proc.stderr and "Traceback" not in proc.stderr
    where = assert_conserved(qsup.spool, ids)
    assert where["incoming"] == set(ids)


def test_non_executable_worker_exits_3(qsup, make_spool, tmp_path):
    script = tmp_path / "scanner.sh"
    script.write_text("#!/bin/sh\nexit 0\n")  # not chmod +x
    ids = make_spool(10, {})
    proc = qsup.drain("--worker", str(script), "--max-wait", "3")
    assert proc.returncode == 3 and "scanner.sh" in proc.stderr
    assert assert_conserved(qsup.spool, ids)["incoming"] == set(ids)


def test_seed_000_memory_poison_is_quarantined_and_qsup_stays_small(qsup, make_spool):
    """Among 1,000 messages 5 make the worker allocate without bound: those 5 are
    quarantined as `memory` with their peak RSS; qsup's own peak RSS stays small."""
    poison = {i: "memory" for i in (3, 250, 500, 751, 999)}
    ids = make_spool(1000, poison)
    proc = qsup.drain("--worker", DEMO, "--max-rss", "200", "--workers", "5", "--storm-limit", "20",
                      timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = assert_conserved(qsup.spool, ids)
    bad = {ids[i] for i in poison}
    assert where["quarantine"] == bad and where["outgoing"] == set(ids) - bad
    summary = qsup.summary(proc)
    assert summary["qsup_peak_rss_mb"] < 100, summary
    for qid in bad:
        shown = qsup("show", qid)
        assert "memory" in shown.stdout
        peak = re.search(r"why\s+memory peak ([\d.]+) MB", shown.stdout)
        assert peak and float(peak.group(1)) > 200


def test_storm_opens_the_breaker_after_at_most_the_limit(qsup, make_spool):
    """50 distinct messages that all crash alone: at most storm_limit are
    quarantined before the breaker opens."""
    ids = make_spool(50, {i: "segv" for i in range(50)})
    proc = qsup.drain("--worker", DEMO, "--storm-limit", "5", "--max-wait", "4", "--workers", "4",
                      "--batch-size", "1", timeout=200)
    lines = proc.stderr.splitlines()
    opened = next(i for i, ln in enumerate(lines) if "breaker open: storm" in ln)
    before = sum(1 for ln in lines[:opened] if "quarantined M" in ln)
    assert before <= 5
    where = assert_conserved(qsup.spool, ids)
    assert len(where["quarantine"]) < 50  # the storm was slowed down, not let through
    assert proc.returncode in (0, 3)


def test_canary_from_a_file(qsup, make_spool, tmp_path):
    canary = tmp_path / "canary.eml"
    canary.write_text("From: a@b\nSubject: mine\nX-Demo-Poison: segv\n\nbody\n")  # a broken canary
    ids = make_spool(10, {4: "segv"})
    proc = qsup.drain("--worker", DEMO, "--canary", str(canary), "--max-wait", "3")
    assert proc.returncode == 3 and "canary failed" in proc.stderr
    assert not assert_conserved(qsup.spool, ids)["quarantine"]
