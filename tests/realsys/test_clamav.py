"""The ClamAV scanners (clamscan one-shot, clamd persistent) under qsup, with the real
clamscan and a private clamd that load only a signature file the test writes. An
infected message is a verdict, not poison; a clamd that goes away mid-message is a
crash, and the canary keeps it from quarantining anything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import harness
import mail
import psutil
import pytest

pytestmark = pytest.mark.realsys

INFECTED_LINE = re.compile(r"qsup\[\d+\]: WARNING: (\S+) is infected \(Qsup\.Test\.Marker\.UNOFFICIAL\)")


@pytest.fixture
def sigdir(tmp_path) -> Path:
    folder = tmp_path / "sigs"
    assert harness.write_clamav_signature(folder, mail.AV_MARKER) == "Qsup.Test.Marker.UNOFFICIAL"
    return folder


def backlog(qsup, n: int, infected: set[int]) -> tuple[list[str], set[str]]:
    msgs = {f"AV{i:04d}": (mail.infected(i) if i in infected else mail.plain(i)) for i in range(n)}
    ids = mail.write_spool(qsup.spool, msgs)
    return ids, {ids[i] for i in infected}


def assert_verdicts_once(stderr: str, infected: set[str]) -> None:
    said = INFECTED_LINE.findall(stderr)
    assert sorted(said) == sorted(infected), stderr[-3000:]


def assert_infected_quarantined(qsup, ids: list[str], infected: set[str]) -> None:
    """An infected message is quarantined as kind infected with the virus name, never
    delivered and never taken for poison (docs/reference.md §7)."""
    assert mail.outgoing(qsup.spool) == set(ids) - infected
    records = qsup.listing()
    assert {r["qid"] for r in records} == infected
    assert all(r["kind"] == "infected" and "Qsup.Test.Marker.UNOFFICIAL" in r["verdict"]
               and r["strikes"] == 0 for r in records), records


@pytest.mark.timeout(60)
def test_clamscan_an_infected_message_is_a_verdict_not_poison(qsup, sigdir):
    harness.require("clamscan", "clamav")
    ids, infected = backlog(qsup, 30, {3, 11, 25})
    run = qsup.drain("--scanner", "clamscan", "--plugin-option", f"clamscan.database={sigdir}",
                     "--workers", "2", "--batch-size", "10")
    assert run.returncode == 0, run.stderr
    summary = qsup.summary(run)
    assert (summary["delivered"], summary["quarantined"], summary["crashes"]) == (27, 3, 0)
    assert_infected_quarantined(qsup, ids, infected)
    assert_verdicts_once(run.stderr, infected)


@pytest.mark.timeout(60)
def test_clamscan_without_signatures_opens_the_breaker_and_quarantines_nothing(qsup, tmp_path):
    harness.require("clamscan", "clamav")
    (tmp_path / "empty").mkdir()
    ids, _ = backlog(qsup, 12, set())
    run = qsup.drain("--scanner", "clamscan", "--plugin-option", f"clamscan.database={tmp_path / 'empty'}",
                     "--workers", "2", "--batch-size", "6", "--max-wait", "2")
    assert run.returncode == 3, run.stderr  # breaker open: a systemic failure
    assert "the canary failed too" in run.stderr
    assert qsup.summary(run)["quarantined"] == 0 and qsup.listing() == []
    assert set(os.listdir(qsup.spool / "incoming")) == set(ids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stream", ["false", "true"])  # the open file (FILDES), or its bytes
def test_clamd_persistent_workers_hand_each_message_to_clamd(qsup, sigdir, tmp_path, stream):
    ids, infected = backlog(qsup, 40, {0, 7, 19, 33})
    with harness.clamd_instance(tmp_path, sigdir) as clamd:
        run = qsup.drain("--scanner", "clamd", "--plugin-option", f"clamd.socket={clamd.socket_path}",
                         "--plugin-option", f"clamd.stream={stream}", "--workers", "2", "--batch-size", "10")
    assert run.returncode == 0, run.stderr
    summary = qsup.summary(run)
    assert (summary["delivered"], summary["quarantined"], summary["crashes"]) == (36, 4, 0)
    assert_infected_quarantined(qsup, ids, infected)
    assert_verdicts_once(run.stderr, infected)


def _clamd_worker_blocked(drain: subprocess.Popen) -> bool:
    for child in psutil.Process(drain.pid).children(recursive=True):
        try:
            if "qsup_clamav.clamd_worker" in " ".join(child.cmdline()):
                return True
        except psutil.NoSuchProcess:
            continue
    return False


@pytest.mark.timeout(90)
def test_clamd_killed_mid_batch_is_a_crash_and_quarantines_nothing(qsup, sigdir, tmp_path):
    ids, infected = backlog(qsup, 20, {2, 13})
    log = tmp_path / "drain.log"
    with harness.clamd_instance(tmp_path, sigdir) as clamd:
        run_dir = clamd.run_dir
        clamd.kill(signal.SIGSTOP)  # frozen: the first message's INSTREAM gets no answer
        with open(log, "w") as err:
            drain = subprocess.Popen(
                qsup.argv("drain", "--spool", str(qsup.spool), "--json", "--scanner", "clamd",
                          "--plugin-option", f"clamd.socket={clamd.socket_path}",
                          "--plugin-option", "clamd.connect_wait=0.5",
                          "--workers", "1", "--batch-size", "10", "--max-wait", "60"),
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
        restarted = None
        try:
            harness.wait_until(lambda: _clamd_worker_blocked(drain), 20, what="a clamd worker")
            time.sleep(1.5)  # started, sent AV0000, waiting for clamd's answer
            clamd.kill(signal.SIGKILL)
            harness.wait_until(lambda: "breaker open" in log.read_text(), 30, interval=0.1,
                               what="the breaker to open")
            restarted = harness.ClamdInstance(run_dir, sigdir)
            restarted.start()  # same socket path (FixStaleSocket)
            out, _ = drain.communicate(timeout=60)
        finally:
            if drain.poll() is None:
                drain.kill()
            if restarted is not None:
                restarted.stop()
    stderr = log.read_text()
    assert drain.returncode == 0, stderr
    summary = qsup.summary(subprocess.CompletedProcess([], 0, out, ""))
    # nothing as poison: only the two infected messages, as infected
    assert summary["quarantined"] == 2 and summary["delivered"] == 18
    assert_infected_quarantined(qsup, ids, infected)
    assert summary["crashes"] >= 1 and "breaker closed: the canary passed again" in stderr
    # The message clamd was scanning when it died carries that crash in its history.
    shown = qsup("show", ids[0], "--json")
    attempts = [a for item in json.loads(shown.stdout) for a in item["history"]["attempts"]]
    assert any("mid-message" in a["stderr"] for a in attempts), attempts
    assert_verdicts_once(stderr, infected)
