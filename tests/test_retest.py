"""Scanner identity and re-test (issue 16, docs/reference.md §9): poison is a property
of a message and a scanner version. A scanner whose bug depends on its version: the
test flips the version file that the worker and `scanner_version` both read."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import WORKERS, assert_conserved, spool_counts, wait_for
from test_notify import smtp  # noqa: F401  (the SMTP server fixture)

from quarantine import journal
from quarantine.demo import build_spool
from quarantine.store import Store

pytestmark = pytest.mark.timeout(120)
POISON = {i: "segv" for i in range(5, 300, 30)}  # 10 of 300


@pytest.fixture
def versioned(qsup, tmp_path, make_spool):
    """Run drains (or a run) of the versioned scanner; .flip(v) changes its version."""

    class Versioned:
        file = tmp_path / "version"
        log = tmp_path / "scans.log"
        ids = make_spool(300, POISON)

        def flip(self, version: str) -> None:
            self.file.write_text(version + "\n")

        def argv(self, command: str, *flags: str) -> list[str]:
            worker = f"{sys.executable} {WORKERS / 'versioned.py'}"
            json_flag = ("--json",) if command == "drain" else ()
            return qsup.argv(command, "--spool", str(qsup.spool), *json_flag, "--worker", worker,
                             "--scanner-version", f"{worker} --version", "--workers", "2",
                             "--batch-size", "30", "--retest-rate", "600", *flags)

        def drain(self, *flags: str, timeout: float = 90) -> subprocess.CompletedProcess:
            proc = subprocess.run(self.argv("drain", *flags), capture_output=True, text=True,
                                  timeout=timeout, env=self.env, cwd=str(tmp_path))
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            return proc

        env = {**__import__("os").environ, "VERSION_FILE": str(tmp_path / "version"),
               "SCAN_LOG": str(tmp_path / "scans.log")}

    v = Versioned()
    v.flip("1")
    return v


def journal_notes(qsup) -> list[str]:
    store = Store(str(qsup.state), readonly=True)
    try:
        return [e.get("note", "") for _, e in journal.entries(store) if e.get("fate") == "released"]
    finally:
        store.close()


def test_poison_quarantined_under_one_version_is_delivered_after_the_fix(qsup, versioned):
    first = versioned.drain()
    assert first.returncode == 0, first.stderr[-2000:]
    poison = {versioned.ids[i] for i in POISON}
    assert spool_counts(qsup.spool)["quarantine"] == poison
    assert {r["scanner"] for r in qsup.listing()} == {"versioned-scanner 1"}
    versioned.flip("2")
    second = versioned.drain()
    assert second.returncode == 0, second.stderr[-2000:]
    where = assert_conserved(qsup.spool, versioned.ids)
    assert where["outgoing"] == set(versioned.ids) and not where["quarantine"]
    summary = qsup.summary(second)
    assert summary["retests"] == 10 and summary["retest_passed"] == 10, summary  # none twice
    assert "the scanner changed" in second.stderr or "re-testing" in second.stderr
    notes = journal_notes(qsup)
    assert notes.count("released by re-test: versioned-scanner 1 → versioned-scanner 2") == 10, notes
    third = versioned.drain()  # nothing left to re-test
    assert third.returncode == 0 and qsup.summary(third)["retests"] == 0


def test_a_message_that_still_crashes_stays_and_is_not_retested_twice(qsup, versioned):
    assert versioned.drain().returncode == 0
    versioned.flip("1b")  # a new version with the same bug
    second = versioned.drain()
    assert second.returncode == 0, second.stderr[-2000:]
    summary = qsup.summary(second)
    assert summary["retests"] == 10 and summary["retest_crashed"] == 10, summary
    assert len(spool_counts(qsup.spool)["quarantine"]) == 10
    shown = json.loads(qsup("show", "--spool", str(qsup.spool), versioned.ids[5], "--json").stdout)[0]
    last = shown["history"]["attempts"][-1]
    assert last["path"] == ["retest"] and last["scanner"] == "versioned-scanner 1b" and not last["strike"]
    third = versioned.drain()
    assert qsup.summary(third)["retests"] == 0, "re-tested twice under the same scanner"


def test_a_broken_update_opens_the_breaker_and_retests_nothing(qsup, versioned):
    """ClamAV issue #923: a new signature made the scanner crash on every scan. The
    canary runs under the new identity first: it dies, the breaker opens, nothing is
    re-tested or released, and the log says the scanner changed."""
    assert versioned.drain().returncode == 0
    versioned.flip("broken")
    second = versioned.drain("--max-wait", "3")
    assert second.returncode == 3, second.stderr[-2000:]
    assert "the scanner changed to versioned-scanner broken and the canary dies" in second.stderr
    assert qsup.summary(second)["retests"] == 0
    assert len(spool_counts(qsup.spool)["quarantine"]) == 10


def test_a_running_qsup_retests_when_told_and_keeps_the_rate(qsup, versioned, make_spool):
    """`qsup run` reads the identity on `qsup retest` (freshclam's OnUpdateExecute);
    re-tests start at most retest_rate a minute, while clean traffic flows."""
    assert versioned.drain().returncode == 0
    errlog = qsup.state.parent / "run.err"
    daemon = subprocess.Popen(versioned.argv("run", "--retest-rate", "120", "--retest-check", "3600"),
                              stdout=subprocess.DEVNULL, stderr=open(errlog, "w"), text=True,
                              env=versioned.env, cwd=str(qsup.state.parent))
    try:  # it has read the identity (version 1) once it says it is watching
        wait_for(lambda: "watching" in errlog.read_text() or daemon.poll() is not None, 20, what="the daemon")
        assert daemon.poll() is None, errlog.read_text()
        versioned.flip("2")
        told = qsup("retest", timeout=30)
        assert told.returncode == 0 and "changed from versioned-scanner 1 to versioned-scanner 2" \
            in told.stdout, told.stdout + told.stderr
        wait_for(lambda: not spool_counts(qsup.spool)["quarantine"], 30, what="the re-tests")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    err = errlog.read_text()
    assert daemon.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    starts = [float(line.split()[0]) for line in versioned.log.read_text().splitlines()
              if line.split()[1] == "retest"]
    assert len(starts) == 10
    # 120 a minute: one started every 0.5 s (a worker's start-up jitters the scan's time)
    assert (starts[-1] - starts[0]) / (len(starts) - 1) >= 0.48, starts
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.3, starts


def test_clean_traffic_flows_while_a_retest_runs_at_its_rate(qsup, versioned, make_spool):
    """Re-tests go one at a time beside the traffic: clean messages that arrive after
    the fix are scanned and delivered while the re-tests are still going."""
    assert versioned.drain().returncode == 0
    versioned.flip("2")
    fresh = build_spool(str(qsup.spool), 600, {}, start=time.time())  # new mail, after the fix
    fresh = [f"N{q}" for q in fresh]
    for q in fresh:
        (qsup.spool / "incoming" / q[1:]).rename(qsup.spool / "incoming" / q)
    versioned.log.write_text("")
    second = versioned.drain("--retest-rate", "300", "--batch-size", "10")
    assert second.returncode == 0, second.stderr[-2000:]
    assert qsup.summary(second)["retest_passed"] == 10
    lines = [line.split() for line in versioned.log.read_text().splitlines()]
    retests = [float(t) for t, what, _ in lines if what == "retest"]
    scans = [float(t) for t, what, _ in lines if what == "scan"]
    between = [t for t in scans if retests[0] < t < retests[-1]]
    assert len(between) >= 50, f"{len(between)} clean scans while re-testing"
    # 300 a minute: one started every 0.2 s (a worker's start-up jitters the scan's time)
    assert (retests[-1] - retests[0]) / (len(retests) - 1) >= 0.19, retests
    assert min(b - a for a, b in zip(retests, retests[1:])) >= 0.1, retests
    assert set(fresh) <= spool_counts(qsup.spool)["outgoing"]


def test_the_digest_lists_what_a_retest_released(qsup, versioned, smtp):
    """The operator hears of it: the digest after the re-test names every message it
    released, with the scanners before and after, and goes only to notify_to."""
    notify = ["--notify-to", "ops@example.net", "--notify-smtp", smtp.address, "--notify-digest", "1"]
    assert versioned.drain(*notify).returncode == 0
    versioned.flip("2")
    smtp.mails.clear()
    second = versioned.drain(*notify)
    assert second.returncode == 0, second.stderr[-2000:]
    texts = [msg.get_content() for env, msg in smtp.mails if env["to"] == ["ops@example.net"]]
    assert len(texts) == len(smtp.mails) >= 1
    released = [line for text in texts for line in text.splitlines()
                if "released by re-test: versioned-scanner 1 → versioned-scanner 2" in line]
    poison = {versioned.ids[i] for i in POISON}
    assert {line.split()[0] for line in released} == poison, texts


def test_kill_dash_nine_during_retests_loses_nothing_and_retests_at_most_once_more(qsup, versioned):
    """Nothing is written until a re-test ends: killed in the middle, the next drain
    re-tests what was not settled, the one in flight at most once more."""
    assert versioned.drain().returncode == 0
    versioned.flip("2")
    versioned.log.write_text("")
    proc = subprocess.Popen(versioned.argv("drain", "--retest-rate", "120"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=versioned.env, cwd=str(qsup.state.parent))
    try:
        wait_for(lambda: versioned.log.read_text().count(" retest ") >= 3, 30, what="three re-tests")
    finally:
        proc.kill()
        proc.wait()
    first = [line.split()[2] for line in versioned.log.read_text().splitlines() if " retest " in line]
    again = versioned.drain()
    assert again.returncode == 0, again.stderr[-2000:]
    where = assert_conserved(qsup.spool, versioned.ids)
    assert where["outgoing"] == set(versioned.ids) and not where["quarantine"]
    scans = [line.split()[2] for line in versioned.log.read_text().splitlines() if " retest " in line]
    twice = {q for q in scans if scans.count(q) > 1}
    assert len(twice) <= 1 and twice <= set(first[-1:]), (first, scans)  # only the one in flight
    assert set(scans) == {versioned.ids[i] for i in POISON}
