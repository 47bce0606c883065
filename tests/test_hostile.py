"""Hostile input, each with a clear one-line report and nothing lost."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import DEMO, WORKERS, assert_conserved, wait_for

pytestmark = pytest.mark.timeout(180)


def py(worker: str) -> str:
    return f"{sys.executable} {WORKERS / worker}"


def test_name_with_invalid_utf8_is_left_alone(qsup, make_spool):
    ids = make_spool(5, {})
    raw = os.path.join(os.fsencode(qsup.spool / "incoming"), b"bad\xff\xfename")
    with open(raw, "wb") as fh:
        fh.write(b"Subject: x\n\nbody\n")
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(raw)
    lines = [ln for ln in proc.stderr.splitlines() if "bad\\xff\\xfename" in ln]
    assert len(lines) == 1 and "not a queue ID" in lines[0]
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)


def test_device_node_is_never_opened(qsup, make_spool):
    ids = make_spool(3, {})
    dev = qsup.spool / "incoming" / "DEV1"
    os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers; the tests run as root
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert [ln for ln in proc.stderr.splitlines() if "DEV1" in ln and "character device" in ln]
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)


def test_empty_message_is_reported_and_still_scanned(qsup, make_spool):
    ids = make_spool(3, {})
    (qsup.spool / "incoming" / "EMPTY1").write_bytes(b"")
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0
    assert len([ln for ln in proc.stderr.splitlines() if "EMPTY1" in ln and "empty" in ln]) == 1
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids) | {"EMPTY1"}


def test_a_200_mb_message_is_never_read_by_qsup(qsup, make_spool):
    ids = make_spool(10, {})
    big = qsup.spool / "incoming" / "BIG1"
    with open(big, "wb") as fh:
        fh.write(b"From: big@example.org\r\nSubject: two hundred megabytes\r\n\r\n")
        fh.truncate(200 * 1024 * 1024)
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0, proc.stderr
    summary = qsup.summary(proc)
    assert summary["qsup_peak_rss_mb"] < 100
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids) | {"BIG1"}
    assert os.path.getsize(qsup.spool / "outgoing" / "BIG1") == 200 * 1024 * 1024


def test_file_deleted_or_replaced_while_in_flight(qsup, make_spool, tmp_path):
    ids = make_spool(6, {})
    started = tmp_path / "started"
    env = {**os.environ, "SLOW_SECONDS": "0.6", "SLOW_STARTED": str(started)}
    drain = subprocess.Popen(qsup.argv("drain", "--spool", str(qsup.spool), "--worker", py("slow.py"),
                                       "--workers", "1", "--batch-size", "6", "--json"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(started.exists, what="the batch to start")
        os.unlink(qsup.spool / "incoming" / ids[4])
        new = qsup.spool / "tmp" / ids[5]
        new.write_bytes(b"From: new@example.org\r\nSubject: a new message, same ID\r\n\r\nnew\r\n")
        os.rename(new, qsup.spool / "incoming" / ids[5])
        out, err = drain.communicate(timeout=120)
    finally:
        drain.kill()
    assert drain.returncode == 0, err[-2000:]
    assert f"{ids[4]} vanished" in err
    where = assert_conserved(qsup.spool, ids[:4] + ids[5:])
    assert where["outgoing"] == set(ids[:4]) | {ids[5]} and not where["quarantine"]
    assert b"a new message, same ID" in (qsup.spool / "outgoing" / ids[5]).read_bytes()


def test_hostile_status_lines_are_ignored_and_counted(qsup, make_spool):
    ids = make_spool(10, {})
    proc = qsup.drain("--worker", py("noisy.py"), "--batch-size", "10", "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = qsup.summary(proc)
    assert summary["ignored_lines"] >= 20_000 and summary["crashes"] == 0
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)


def test_worker_that_closes_its_pipes_and_keeps_running(qsup, make_spool):
    ids = make_spool(4, {})
    proc = qsup.drain("--worker", py("closes_stdio.py"), "--workers", "1",
                      "--timeout", "30", "--startup-allowance", "10")
    assert proc.returncode == 0, proc.stderr
    summary = qsup.summary(proc)
    assert summary["crashes"] == 0
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)
    # The worker exits 1 s after closing its pipes; qsup reaps it within a poll
    # (about 1.1 s for the whole drain). A qsup that only looks at it again at the
    # batch's deadline, 10 + 30 x 4 = 130 s, still delivers everything and counts
    # no crash: only the time tells. 20 s is far above today's, far below that.
    assert summary["seconds"] < 20, summary


def test_daemonised_grandchild_of_a_successful_worker_is_killed(qsup, make_spool, tmp_path):
    ids = make_spool(4, {})
    pids = tmp_path / "pids"
    proc = subprocess.run(qsup.argv("drain", "--spool", str(qsup.spool), "--worker", py("daemonizer.py"),
                                    "--workers", "1"),
                          capture_output=True, text=True, timeout=60, env={**os.environ, "DAEMON_PIDS": str(pids)})
    assert proc.returncode == 0, proc.stderr
    daemon = int(pids.read_text().split()[0])

    def gone() -> bool:
        try:
            return psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, timeout=3, what=f"the daemonised grandchild {daemon} to be killed")
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)


def test_full_state_map_stops_safely_with_exit_4(qsup, make_spool):
    # Long queue IDs (a 128-character ID is valid) make the completion records fill
    # a 1 MB map part-way through the drain.
    short = make_spool(5000, {})
    ids = [f"{qid}{'x' * 120}" for qid in short]
    for old, new in zip(short, ids):
        os.rename(qsup.spool / "incoming" / old, qsup.spool / "incoming" / new)
    proc = qsup.drain("--worker", DEMO, "--map-size-mb", "1", "--workers", "4", timeout=240)
    assert proc.returncode == 4 and "full" in proc.stderr and "Traceback" not in proc.stderr
    assert_conserved(qsup.spool, ids)
    assert 0 < len(os.listdir(qsup.spool / "outgoing")) < len(ids)  # it filled part-way
    again = qsup.drain("--worker", DEMO, "--map-size-mb", "64", "--workers", "4", timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)


def test_reused_queue_id_does_not_inherit_the_quarantine(qsup, make_spool):
    ids = make_spool(10, {3: "segv"})
    assert qsup.drain("--worker", DEMO).returncode == 0
    assert [r["qid"] for r in qsup.listing()] == [ids[3]]
    tmp = qsup.spool / "tmp" / ids[3]
    tmp.write_bytes(b"From: other@example.org\r\nSubject: innocent, same ID\r\n\r\nhello\r\n")
    os.rename(tmp, qsup.spool / "incoming" / ids[3])
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0 and qsup.summary(proc)["crashes"] == 0
    assert (qsup.spool / "outgoing" / ids[3]).exists()  # the new message went on
    assert (qsup.spool / "quarantine" / ids[3]).exists()  # the old one stays quarantined
    assert [r["qid"] for r in qsup.listing()] == [ids[3]]


def test_restart_recovers_in_flight_batches_and_kills_stale_workers(qsup, make_spool, tmp_path):
    ids = make_spool(8, {})
    started = tmp_path / "started"
    env = {**os.environ, "SLOW_SECONDS": "60", "SLOW_STARTED": str(started)}
    for death in (1, 2):
        started.unlink(missing_ok=True)
        drain = subprocess.Popen(qsup.argv("drain", "--spool", str(qsup.spool), "--worker", py("slow.py"),
                                           "--workers", "1", "--batch-size", "8"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for(started.exists, what="the batch to start")
        workers = [c for c in psutil.Process(drain.pid).children(recursive=True)]
        os.kill(drain.pid, signal.SIGKILL)
        drain.wait(timeout=10)
        assert any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        assert_conserved(qsup.spool, ids)
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0, proc.stderr
    assert "recovered" in proc.stderr
    time.sleep(0.2)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)
    status = json.loads(qsup("status", "--json").stdout)
    assert status["recovery"]["killed_workers"] >= 1 and "died with" in status["recovery"]["why"]
    text = qsup("status").stdout
    assert "last recovery" in text
    shown = json.loads(qsup("show", ids[0], "--json").stdout)[0]
    assert shown["history"]["deaths"] >= 2 and not shown["quarantined"]


def test_sighup_reload_switches_the_worker(qsup, make_spool, tmp_path):
    record = tmp_path / "record"
    cfg = tmp_path / "qsup.toml"
    cfg.write_text(f"spool = '{qsup.spool}'\nworker = '{DEMO}'\npoll_interval = 0.1\n")
    make_spool(3, {})
    daemon = subprocess.Popen(qsup.argv("--config", str(cfg), "run"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "RECORD_FILE": str(record)})
    try:
        wait_for(lambda: len(os.listdir(qsup.spool / "outgoing")) == 3, what="the first drain")
        cfg.write_text(f"spool = '{qsup.spool}'\nworker = '{py('recorder.py')}'\npoll_interval = 0.1\n")
        daemon.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        tmp = qsup.spool / "tmp" / "LATE1"
        tmp.write_bytes(b"Subject: late\r\n\r\nx\r\n")
        os.rename(tmp, qsup.spool / "incoming" / "LATE1")
        wait_for(lambda: (qsup.spool / "outgoing" / "LATE1").exists(), what="the late message")
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=30)
    assert "configuration reloaded" in err
    assert record.read_text().split() == ["LATE1"]


def test_bad_config_on_reload_keeps_the_old_one(qsup, make_spool, tmp_path):
    cfg = tmp_path / "qsup.toml"
    cfg.write_text(f"spool = '{qsup.spool}'\nworker = '{DEMO}'\n")
    make_spool(2, {})
    daemon = subprocess.Popen(qsup.argv("--config", str(cfg), "run"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(os.listdir(qsup.spool / "outgoing")) == 2, what="the drain")
        cfg.write_text("workers = -1\n")
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert "reload failed" in err and "workers" in err


def test_state_directory_is_private(qsup, make_spool):
    make_spool(2, {})
    assert qsup.drain("--worker", DEMO).returncode == 0
    assert stat.S_IMODE(os.stat(qsup.state).st_mode) == 0o700
    for name in ("data.mdb", "lock"):
        assert stat.S_IMODE(os.stat(Path(qsup.state) / name).st_mode) & 0o077 == 0
