"""A state directory belongs to one queue, one qsup runs per queue, lost state is
noticed, and a request that failed never runs later (docs/reference.md §3, §5.9; issue 12,
findings 3-6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO, assert_conserved, spool_counts, wait_for

from quarantine.demo import make_message

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def mail(qsup, tmp_path):
    """qsup whose spool is not ./spool (the default, in qsup's working directory), so
    a command that looks in the default spool looks in the wrong place."""
    qsup.spool = tmp_path / "mail"
    return qsup


def drained(qsup, make_spool, count: int, poison: dict[int, str]) -> list[str]:
    ids = make_spool(count, poison)
    run = qsup.drain("--worker", DEMO)
    assert run.returncode == 0, run.stderr
    assert {r["qid"] for r in qsup.listing()} == {ids[i] for i in poison}
    return ids


def quarantined(qsup) -> set[str]:
    return set(os.listdir(qsup.spool / "quarantine"))


def daemon(qsup, *args: str) -> subprocess.Popen:
    return subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--worker", DEMO,
                                      "--poll-interval", "0.1", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(qsup.state.parent))


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    return err


# ------------------------------------------------------- finding 3: bound to one queue
def test_release_and_purge_without_a_spool_option_use_the_recorded_queue(mail, make_spool, tmp_path):
    ids = drained(mail, make_spool, 20, {3: "segv", 7: "abort"})
    rel = mail("release", ids[3])  # the README's form: no --spool
    assert rel.returncode == 0, rel.stderr
    assert (mail.spool / "incoming" / ids[3]).exists() and ids[3] not in quarantined(mail)
    pur = mail("purge", ids[7], "--yes")
    assert pur.returncode == 0, pur.stderr
    assert ids[7] not in quarantined(mail)
    assert mail.listing() == []
    assert not (tmp_path / "spool").exists()  # the default spool was never made up


def test_release_purge_list_show_against_another_spool_refuse_and_touch_nothing(mail, make_spool, tmp_path):
    ids = drained(mail, make_spool, 20, {3: "segv", 7: "abort"})
    other = tmp_path / "other"
    before = mail.listing()
    for args in (("release", "--all"), ("release", ids[3]), ("purge", ids[7], "--yes"),
                 ("list",), ("show", ids[3])):
        proc = mail(*args, "--spool", str(other))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("qsup: error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert str(mail.spool) in proc.stderr and str(other) in proc.stderr
    assert not other.exists()
    assert mail.listing() == before
    assert quarantined(mail) == {ids[3], ids[7]}


def test_drain_on_a_state_bound_to_another_spool_exits_2_naming_both(mail, make_spool, tmp_path):
    drained(mail, make_spool, 10, {2: "segv"})
    other = tmp_path / "other"
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        (other / sub).mkdir(parents=True)
    proc = mail("drain", "--spool", str(other), "--worker", DEMO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("qsup: error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert str(mail.spool) in proc.stderr and str(other) in proc.stderr
    assert len(mail.listing()) == 1


def test_a_quarantined_file_with_a_header_added_is_still_that_message(mail, make_spool):
    ids = drained(mail, make_spool, 20, {4: "segv", 9: "abort"})
    for qid in (ids[4], ids[9]):
        path = mail.spool / "quarantine" / qid
        path.write_bytes(b"X-Looked-At: by the postmaster\n" + path.read_bytes())
    rel = mail("release", ids[4], "--spool", str(mail.spool))
    assert rel.returncode == 0, rel.stderr
    released = mail.spool / "incoming" / ids[4]
    assert released.read_bytes().startswith(b"X-Looked-At:")
    pur = mail("purge", ids[9], "--yes", "--spool", str(mail.spool))
    assert pur.returncode == 0 and "already gone" not in pur.stdout, pur.stdout
    assert quarantined(mail) == set() and mail.listing() == []


def test_releasing_a_changed_quarantined_file_is_idempotent(tmp_path):
    from quarantine.spool import SpoolQueue

    (tmp_path / "spool").mkdir(exist_ok=True)
    queue = SpoolQueue(str(tmp_path / "spool"))
    (tmp_path / "spool" / "incoming" / "M1").write_bytes(make_message(1))
    _, fp = queue.identify("M1")
    to_quarantine = queue.plan("M1", fp, "quarantine")
    assert queue.apply(to_quarantine) == "moved"
    path = tmp_path / "spool" / "quarantine" / "M1"
    path.write_bytes(b"X-Looked-At: by the postmaster\n" + path.read_bytes())
    back = queue.plan("M1", fp, "incoming", origin="quarantine", source=to_quarantine.name)
    assert queue.apply(back) == "moved"
    assert queue.apply(back) == "already"  # replayed after a restart: done, not "gone"


def test_a_missing_quarantined_file_is_said_and_its_record_kept_until_purged(mail, make_spool):
    ids = drained(mail, make_spool, 10, {5: "segv"})
    (mail.spool / "quarantine" / ids[5]).unlink()
    rel = mail("release", ids[5])
    assert rel.returncode == 4, (rel.stdout, rel.stderr)
    assert rel.stderr.startswith(f"qsup: error: {ids[5]}: ") and "missing" in rel.stderr
    assert [r["qid"] for r in mail.listing()] == [ids[5]]
    pur = mail("purge", ids[5], "--yes")
    assert pur.returncode == 0 and "already gone" in pur.stdout, (pur.stdout, pur.stderr)
    assert mail.listing() == []


def test_release_and_purge_lines_read_as_sentences(mail, make_spool):
    ids = drained(mail, make_spool, 20, {3: "segv", 7: "abort", 11: "segv"})
    spool = ("--spool", str(mail.spool))
    rel = mail("release", ids[3], *spool)
    assert rel.stdout == f"qsup: released {ids[3]}: back in the queue to be scanned again\n"
    rel = mail("release", ids[7], "--no-scan", *spool)
    assert rel.stdout == f"qsup: released {ids[7]}: delivered without a scan (--no-scan)\n"
    pur = mail("purge", ids[11], "--yes", *spool)
    assert pur.stdout == f"qsup: purged {ids[11]}\n"


# ------------------------------------------------------- finding 4: lost state
def _orphan_files(spool: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"O{i:05d}"
        path = spool / "quarantine" / name
        path.write_bytes(make_message(1000 + i, None))
        os.chmod(path, 0o600)
        names.append(name)
    return names


def test_files_in_quarantine_without_a_record_are_listed_as_orphans(mail, make_spool):
    ids = drained(mail, make_spool, 20, {3: "segv"})
    extra = _orphan_files(mail.spool, 300)
    shutil.rmtree(mail.state)  # the state lost: a fresh one beside a full quarantine/
    run = mail.drain("--worker", DEMO)
    assert run.returncode == 0, run.stderr
    said = [ln for ln in run.stderr.splitlines() if "orphan" in ln]
    assert len(said) == 1 and "301" in said[0], run.stderr
    rows = {r["qid"]: r for r in mail.listing()}
    assert set(rows) == set(extra) | {ids[3]}
    assert all(r["kind"] == "orphan" and r["why"] == "no record: state lost or reset" for r in rows.values())
    assert rows["O00007"]["subject"] and rows["O00007"]["sender"]
    table = mail("list", "--kind", "orphan", "--limit", "0")  # 301: more than a page
    assert "orphan" in table.stdout and "O00007" in table.stdout
    again = mail.drain("--worker", DEMO)  # found once: not again at the next start
    assert not [ln for ln in again.stderr.splitlines() if "orphan" in ln], again.stderr
    assert len(mail.listing()) == 301

    assert mail("release", "O00007").returncode == 0
    assert (mail.spool / "incoming" / "O00007").exists()
    assert mail("purge", ids[3], "O00008", "--yes").returncode == 0
    assert not {ids[3], "O00008"} & quarantined(mail)
    assert len(mail.listing()) == 298 == len(quarantined(mail))


# ------------------------------------------------------- finding 5: one qsup per queue
def test_a_second_drain_on_the_same_spool_with_another_state_exits_4(mail, make_spool, tmp_path):
    ids = make_spool(40, {5: "segv"})
    first = subprocess.Popen(mail.argv("drain", "--spool", str(mail.spool), "--worker",
                                       DEMO + " --delay 0.2", "--workers", "1", "--batch-size", "5"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=str(tmp_path))
    try:
        wait_for(lambda: os.listdir(mail.spool / "outgoing"), what="the first drain to deliver")
        second = subprocess.run([sys.executable, "-m", "quarantine", "--state", str(tmp_path / "state2"),
                                 "drain", "--spool", str(mail.spool), "--worker", DEMO],
                                capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
        assert second.returncode == 4, (second.stdout, second.stderr)
        assert f"pid {first.pid}" in second.stderr and len(second.stderr.splitlines()) == 1, second.stderr
        assert first.poll() is None
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    where = assert_conserved(mail.spool, ids)
    assert where["quarantine"] == {ids[5]} and where["incoming"] == set()


# ------------------------------------------- finding 6: a failed request never runs later
def test_a_request_that_timed_out_never_takes_effect_later(mail, make_spool):
    ids = make_spool(12, {2: "segv", 6: "abort"})
    run = daemon(mail)
    try:
        wait_for(lambda: {ids[2], ids[6]} <= quarantined(mail), 90, "the quarantine")
        wait_for(lambda: len(mail.listing()) == 2, 30, "the records")
        run.send_signal(signal.SIGSTOP)
        for args in (("purge", ids[2], "--yes"), ("release", ids[6], "--no-scan")):
            t0 = time.monotonic()
            proc = mail(*args, "--wait", "2")
            assert proc.returncode == 4, (args, proc.stdout, proc.stderr)
            assert time.monotonic() - t0 < 15
            assert proc.stderr.startswith("qsup: error: ") and "2s" in proc.stderr, proc.stderr
            assert "nothing was done" in proc.stderr, proc.stderr
        run.send_signal(signal.SIGCONT)
        time.sleep(2.0)  # several of the daemon's looks at its requests
        assert {ids[2], ids[6]} <= quarantined(mail)
        assert not (mail.spool / "outgoing" / ids[6]).exists()
        assert {r["qid"] for r in mail.listing()} == {ids[2], ids[6]}
        assert os.listdir(mail.state / "requests") == []
        later = mail("release", ids[6], "--no-scan")  # the daemon is well again
        assert later.returncode == 0, later.stderr
        assert (mail.spool / "outgoing" / ids[6]).exists()
    finally:
        err = stop(run)
    assert run.returncode == 0, err
    assert_conserved(mail.spool, ids)


def test_the_daemon_ignores_a_request_past_its_deadline(mail, make_spool):
    ids = make_spool(8, {2: "segv"})
    run = daemon(mail)
    try:
        wait_for(lambda: ids[2] in quarantined(mail), 90, "the quarantine")
        wait_for(lambda: len(mail.listing()) == 1, 30, "the record")
        folder = mail.state / "requests"
        folder.mkdir(exist_ok=True)
        # what a client killed while it waited leaves behind
        req = {"op": "purge", "ids": [ids[2]], "all": False, "deadline": time.time() - 1}
        (folder / "dead.req").write_text(json.dumps(req))
        wait_for(lambda: not (folder / "dead.req").exists(), 30, "the daemon to look at it")
        time.sleep(0.5)
        assert ids[2] in quarantined(mail) and len(mail.listing()) == 1
    finally:
        err = stop(run)
    assert run.returncode == 0, err
    assert "past its deadline" in err


def test_release_against_another_spool_while_the_daemon_runs_refuses(mail, make_spool, tmp_path):
    ids = make_spool(8, {2: "segv"})
    run = daemon(mail)
    try:
        wait_for(lambda: ids[2] in quarantined(mail), 90, "the quarantine")
        wait_for(lambda: len(mail.listing()) == 1, 30, "the record")
        proc = mail("release", "--all", "--spool", str(tmp_path / "other"))
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert str(mail.spool) in proc.stderr
        time.sleep(0.5)
        assert ids[2] in quarantined(mail) and len(mail.listing()) == 1
        assert not (tmp_path / "other").exists()
    finally:
        err = stop(run)
    assert run.returncode == 0, err
    assert spool_counts(mail.spool)["quarantine"] == {ids[2]}


def test_a_request_the_daemon_took_is_waited_for_not_withdrawn(tmp_path):
    """The client's side of the hand-over, with this process as the daemon: it holds
    the state and takes the request (renames it) just as the client's wait ends."""
    import threading

    from quarantine import ops
    from quarantine.errors import StateError
    from quarantine.store import Store

    state = tmp_path / "state"
    store = Store(str(state))
    folder = state / "requests"
    folder.mkdir()
    results: list = []

    def client():
        try:
            results.append(ops.submit_request(str(state), {"op": "purge", "ids": ["M1"]}, timeout=0.5))
        except StateError as exc:
            results.append(exc)

    def take() -> Path:
        wait_for(lambda: [n for n in os.listdir(folder) if n.endswith(".req")], 10, "the request")
        req = next(folder / n for n in os.listdir(folder) if n.endswith(".req"))
        work = req.with_suffix(".work")
        os.rename(req, work)
        return work

    thread = threading.Thread(target=client)
    thread.start()
    work = take()
    time.sleep(1.0)  # past the client's wait: it cannot withdraw what was taken
    assert thread.is_alive()
    work.with_suffix(".ans").write_text(json.dumps({"ok": True, "lines": ["done"], "problems": []}))
    thread.join(10)
    assert results == [{"ok": True, "lines": ["done"], "problems": []}]

    thread = threading.Thread(target=client)
    thread.start()
    take()
    time.sleep(1.0)
    store.close()  # the daemon stops before it answers
    thread.join(10)
    assert isinstance(results[-1], StateError) and "stopped before answering" in str(results[-1])
