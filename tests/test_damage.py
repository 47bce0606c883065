"""Damage: moves the file system refuses, a damaged state, a full state disk
(docs/reference.md §5.1, §5.10, §6).

Each case is one line, ``qsup: error: ...``, and exit 4, never a traceback or a
signal, and nothing lost. Real means only: a tmpfs for another file system or a
tiny disk, ``chattr +i`` for an immutable directory, a read-only remount, data.mdb
really truncated or with bytes flipped. A mechanism the machine lacks skips, except
under CI=1 (root on Debian), where it must work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import DEMO, assert_conserved, wait_for

from quarantine import moves
from quarantine.hookspecs import Move
from quarantine.store import Store

pytestmark = pytest.mark.timeout(300)

# a worker that holds its batch until the test opens the gate
GATED = """\
import os, time
gate = os.environ["QSUP_TEST_GATE"]
open(gate + ".started", "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def _need(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "1":
        pytest.fail(f"{why} (CI=1: this machine must offer it)")
    pytest.skip(why)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


@contextmanager
def tmpfs(path: Path, size: str = "4m"):
    _need(os.geteuid() == 0, "mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    _need(done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))


@contextmanager
def immutable(path: Path):
    done = _run("chattr", "+i", str(path))
    _need(done.returncode == 0, f"chattr +i does not work on {path}: {done.stderr.strip()}")
    try:
        yield path
    finally:
        _run("chattr", "-i", str(path))


def failed_cleanly(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 4 with one error line that says each of *words*; the line."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-3000:])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("qsup: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def poison_quarantined(qsup, make_spool) -> tuple[list[str], str]:
    ids = make_spool(10, {4: "segv"})
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (qsup.spool / "quarantine" / ids[4]).exists()
    return ids, ids[4]


# ---------------------------------------------- moves the file system refuses
@contextmanager
def another_file_system(spool: Path):
    with tmpfs(spool / "outgoing"):
        yield "Invalid cross-device link"


@contextmanager
def immutable_outgoing(spool: Path):
    with immutable(spool / "outgoing"):
        yield "Operation not permitted"


@pytest.mark.parametrize("obstacle", [another_file_system, immutable_outgoing],
                         ids=["EXDEV", "EPERM"])
def test_a_refused_delivery_stops_with_exit_4_and_is_finished_once_fixed(qsup, make_spool, obstacle):
    ids = make_spool(20, {})
    spool = ["--spool", str(qsup.spool), "--worker", DEMO]
    with obstacle(qsup.spool) as reason:
        # the daemon meets it in its loop; the restart meets it replaying the intent
        for args in (["run", *spool], ["drain", *spool]):
            failed_cleanly(qsup(*args), "cannot move", f"{qsup.spool}/incoming/M0000",
                           f"{qsup.spool}/outgoing/M0000", reason)
            assert set(os.listdir(qsup.spool / "incoming")) == set(ids)
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["outgoing"] == set(ids) and not where["incoming"]


def test_a_read_only_remount_under_a_drain_stops_it_with_exit_4(qsup, make_spool, tmp_path):
    # The spool's directories live on a tmpfs (symlinked), the spool directory
    # itself does not: a lock held open there must not make the remount busy.
    volume = tmp_path / "volume"
    with tmpfs(volume, "16m"):
        qsup.spool.mkdir()
        for sub in ("tmp", "incoming", "outgoing", "quarantine"):
            (volume / sub).mkdir()
            os.symlink(volume / sub, qsup.spool / sub)
        ids = make_spool(20, {})
        worker, gate = tmp_path / "gated.py", tmp_path / "gate"
        worker.write_text(GATED)
        argv = qsup.argv("drain", "--spool", str(qsup.spool), "--worker", f"{sys.executable} {worker}",
                         "--workers", "1")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "QSUP_TEST_GATE": str(gate)}, cwd=str(tmp_path))
        try:
            wait_for(lambda: Path(f"{gate}.started").exists() or proc.poll() is not None,
                     what="the batch in flight")
            remount = _run("mount", "-o", "remount,ro", str(volume))
            _need(remount.returncode == 0, f"cannot remount read-only: {remount.stderr.strip()}")
            gate.touch()
            out, err = proc.communicate(timeout=120)
            failed_cleanly(subprocess.CompletedProcess(argv, proc.returncode, out, err),
                           "cannot move", f"{qsup.spool}/incoming/M0000", "Read-only file system")
            # restarted while still read-only: refused at start, the same way
            failed_cleanly(qsup.drain("--worker", DEMO), f"cannot use the spool {qsup.spool}",
                           "Read-only file system")
        finally:
            gate.touch()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _run("mount", "-o", "remount,rw", str(volume))
        assert set(os.listdir(qsup.spool / "incoming")) == set(ids)
        done = qsup.drain("--worker", DEMO)
        assert done.returncode == 0, done.stderr[-2000:]
        where = assert_conserved(qsup.spool, ids)
        assert where["outgoing"] == set(ids)


def test_release_and_purge_refused_by_the_file_system_change_nothing(qsup, make_spool):
    ids, bad = poison_quarantined(qsup, make_spool)
    before = qsup.listing()
    spool = ["--spool", str(qsup.spool)]
    with immutable(qsup.spool / "quarantine" / bad):  # neither renamed nor unlinked
        failed_cleanly(qsup("release", "--all", *spool), "cannot move",
                       f"{qsup.spool}/quarantine/{bad}", f"{qsup.spool}/incoming/{bad}",
                       "Operation not permitted")
        failed_cleanly(qsup("purge", bad, "--yes", *spool), "cannot delete",
                       f"{qsup.spool}/quarantine/{bad}", "Operation not permitted")
    assert (qsup.spool / "quarantine" / bad).exists() and qsup.listing() == before
    # a release reported as failed is not made later behind the operator's back
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0 and "interrupted move" not in proc.stderr, proc.stderr[-2000:]
    assert qsup.listing() == before
    assert qsup("release", bad, *spool).returncode == 0
    assert (qsup.spool / "incoming" / bad).exists()
    assert_conserved(qsup.spool, ids)


def test_a_spool_that_cannot_be_one_is_exit_2_for_every_command(qsup, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for args in (["release", "--all"], ["purge", "--all", "--yes"], ["drain", "--worker", DEMO]):
        proc = qsup(*args, "--spool", str(afile))
        assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr[-2000:]
        assert f"spool: cannot use {afile}: Not a directory" in proc.stderr


# ----------------------------------------------------- a name taken meanwhile
def leave_release_intent(qsup, bad: str) -> dict:
    """The state `qsup release --all` leaves when it is killed after writing its
    intent and before its rename: written the way ops.release writes it."""
    [rec] = qsup.listing()
    store = Store(str(qsup.state))
    try:
        mv = Move(qid=bad, fp=rec["fp"], dest="incoming", name=bad, origin="quarantine",
                  source=rec.get("name", bad))
        with store.write() as w:
            moves.record(w, f"release/{rec['key']}", [mv])
    finally:
        store.close()
    return rec


def test_an_interrupted_release_whose_name_was_taken_is_finished_under_another_name(qsup, make_spool):
    ids, bad = poison_quarantined(qsup, make_spool)
    poison = (qsup.spool / "quarantine" / bad).read_bytes()
    rec = leave_release_intent(qsup, bad)
    # meanwhile a new message arrives under the same queue ID (maildir rule)
    fresh = b"Subject: a new message under a reused ID\r\n\r\nhello\r\n"
    (qsup.spool / "tmp" / bad).write_bytes(fresh)
    os.rename(qsup.spool / "tmp" / bad, qsup.spool / "incoming" / bad)
    for _ in range(2):  # and no restart loop
        proc = qsup.drain("--worker", DEMO)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (qsup.spool / "outgoing" / bad).read_bytes() == fresh
    renamed = f"{bad}.{rec['fp'][:12]}"
    assert [r["qid"] for r in qsup.listing()] == [renamed]  # scanned again: still poison
    assert (qsup.spool / "quarantine" / renamed).read_bytes() == poison
    assert_conserved(qsup.spool, [i for i in ids if i != bad] + [renamed])
    assert not list((qsup.spool / "incoming").iterdir())


def test_an_interrupted_link_and_unlink_move_leaves_one_copy(qsup, make_spool):
    # rename_noreplace falls back to link() + unlink() where renameat2 is missing:
    # killed between the two, the message has two names, and the move's target
    # name is "taken" by the message itself.
    ids, bad = poison_quarantined(qsup, make_spool)
    leave_release_intent(qsup, bad)
    os.link(qsup.spool / "quarantine" / bad, qsup.spool / "incoming" / bad)
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    where = assert_conserved(qsup.spool, ids)  # one place, not two
    assert where["quarantine"] == {bad} and [r["qid"] for r in qsup.listing()] == [bad]


# ------------------------------------------------------------ a damaged state
def test_a_truncated_state_is_exit_4_for_every_command(qsup, make_spool):
    ids, bad = poison_quarantined(qsup, make_spool)
    data = qsup.state / "data.mdb"
    half = data.stat().st_size // 2
    os.truncate(data, half)
    spool = ["--spool", str(qsup.spool)]
    for args in (["list"], ["show", bad], ["status"], ["drain", *spool, "--worker", DEMO],
                 ["run", *spool, "--worker", DEMO], ["release", bad, *spool],
                 ["purge", bad, "--yes", *spool]):
        failed_cleanly(qsup(*args), "state corrupt", str(data), "truncated")
    assert data.stat().st_size == half  # nobody started afresh over it
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {bad}


def test_an_empty_data_file_is_not_taken_for_a_new_state(qsup, make_spool):
    ids = make_spool(5, {})
    qsup.state.mkdir()
    (qsup.state / "data.mdb").write_bytes(b"")
    for args in (["drain", "--spool", str(qsup.spool), "--worker", DEMO], ["list"], ["status"]):
        failed_cleanly(qsup(*args), f"state directory {qsup.state} has an empty data.mdb",
                       "(a lost or reset state?)")
    assert (qsup.state / "data.mdb").stat().st_size == 0
    assert set(os.listdir(qsup.spool / "incoming")) == set(ids)


def flip_all(path: Path, pattern: bytes, mask: int = 0xFF) -> int:
    """Flip bits (*mask*) of the first byte of every occurrence of *pattern* in *path*
    (old copies in freed pages too, so the live one is surely hit). How many."""
    data = bytearray(path.read_bytes())
    hits, at = 0, data.find(pattern)
    while at >= 0:
        data[at] ^= mask
        hits += 1
        at = data.find(pattern, at + 1)
    with open(path, "r+b") as fh:
        fh.write(data)
    return hits


def test_flipped_bytes_in_a_record_are_exit_4_naming_it(qsup, make_spool):
    ids, bad = poison_quarantined(qsup, make_spool)
    assert flip_all(qsup.state / "data.mdb", b'{"qid":') > 0
    for args in (["list"], ["list", "--json"], ["show", bad]):
        failed_cleanly(qsup(*args), "state corrupt", f"/{bad}:", "is not valid JSON")
    assert_conserved(qsup.spool, ids)


def test_bad_json_in_a_batch_in_flight_is_exit_4_naming_it(qsup, make_spool, tmp_path):
    ids = make_spool(10, {})
    worker, gate = tmp_path / "gated.py", tmp_path / "gate"
    worker.write_text(GATED)
    argv = qsup.argv("drain", "--spool", str(qsup.spool), "--worker", f"{sys.executable} {worker}",
                     "--workers", "1")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "QSUP_TEST_GATE": str(gate)}, cwd=str(tmp_path))
    try:
        wait_for(lambda: Path(f"{gate}.started").exists() or proc.poll() is not None,
                 what="the batch in flight")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        gate.touch()  # the orphaned worker ends
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert flip_all(qsup.state / "data.mdb", b'{"ids":', mask=0x01) > 0  # '{' -> 'z'
    line = failed_cleanly(qsup.drain("--worker", DEMO), "state corrupt", "batches/", "is not valid JSON")
    assert str(qsup.state) in line
    assert set(os.listdir(qsup.spool / "incoming")) == set(ids)


# ---------------------------------------------------------- a full state disk
def test_a_full_state_disk_stops_the_drain_saying_so(qsup, make_spool):
    ids = make_spool(1500, {})
    with tmpfs(qsup.state, "1m"):
        free = os.statvfs(qsup.state)
        filler = qsup.state / "filler"
        filler.write_bytes(b"x" * (free.f_bavail * free.f_frsize - 80 * 1024))
        failed_cleanly(qsup.drain("--worker", DEMO, "--batch-size", "5"), "state disk is full",
                       str(qsup.state))
        assert_conserved(qsup.spool, ids)
        with open(filler, "ab", buffering=0) as fh:  # not a byte left: a restart says the same
            try:
                while fh.write(b"x" * 4096):
                    pass
            except OSError:
                pass
        failed_cleanly(qsup.drain("--worker", DEMO), "state disk is full", str(qsup.state))
        assert_conserved(qsup.spool, ids)
        filler.unlink()
        proc = qsup.drain("--worker", DEMO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        where = assert_conserved(qsup.spool, ids)
        assert where["outgoing"] == set(ids)


def test_a_canary_file_that_cannot_be_read_is_exit_2_naming_it(qsup, make_spool, tmp_path):
    make_spool(3, {})
    missing = tmp_path / "no-such-canary.eml"
    proc = qsup.drain("--worker", DEMO, "--canary", str(missing))
    assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr[-2000:]
    assert f"canary: cannot read {missing}" in proc.stderr
