"""A pass's deliveries released from a real Postfix hold queue together (issue 13):
one ``postsuper -H - hold`` with the IDs on stdin and one queue-manager kick, each
release checked; the scanner's copy read from the queue file as postcat prints it;
a qsup killed around the batched release finishes it on its next start, once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import harness
import pytest
from test_postfix_e2e import RELEASED, SCANNER, message, sent_ids, submit_many, wait_sent, write_config

from qsup_postfix import Postfix, PostfixError, PostfixQueue
from quarantine.hookspecs import Move

pytestmark = [pytest.mark.realsys, pytest.mark.timeout(150)]


@pytest.fixture
def pf(tmp_path):
    with harness.postfix_instance(tmp_path / "postfix") as instance:
        yield instance


@pytest.fixture
def queue(pf, tmp_path):
    q = PostfixQueue(Postfix(str(pf.config_dir)), str(tmp_path / "q"))
    yield q
    q.close()


def _held(pf, n: int, start: int = 0) -> list[str]:
    ids = submit_many(pf, [message(i) for i in range(start, start + n)])
    pf.wait_hold_count(n + start, timeout=60)
    return ids


def _outgoing(queue, ids: list[str]) -> list[Move]:
    return [queue.plan(q, queue.identify(q)[1], "outgoing") for q in ids]


def _released_lines(pf) -> list[str]:
    return RELEASED.findall(pf.log_text())


def test_a_batch_release_releases_exactly_those_asked_and_is_idempotent(pf, queue):
    ids = _held(pf, 60)
    chosen, others = ids[:40], ids[40:]
    moves = _outgoing(queue, chosen)
    reused = Move(qid=others[0], fp="0" * 16, dest="outgoing", name=others[0])  # another message's ID
    odd = Move(qid="bad/../id", fp="x", dest="outgoing", name="x")
    assert queue.apply_all([*moves, reused, odd]) == ["moved"] * 40 + ["already", "gone"]
    assert pf.hold_ids() == sorted(others)
    # Delivered now, although queue_run_delay is 300s here: the one kick did it.
    wait_sent(pf, set(chosen), timeout=20)
    assert queue.apply_all(moves) == ["already"] * 40  # replayed after a restart
    assert sorted(sent_ids(pf)) == sorted(chosen) and sorted(_released_lines(pf)) == sorted(chosen)
    assert pf.hold_ids() == sorted(others)


def test_a_message_postsuper_does_not_release_is_an_error_never_a_success(pf, queue):
    ids = _held(pf, 5)
    moves = _outgoing(queue, ids)
    # Where postsuper would move one (deferred/X/ID), a directory: its rename fails,
    # and postsuper stops there ("fatal: rename file ...: Is a directory").
    stuck = ids[2]
    blockers = _block_release(Path(queue.hold).parent / "deferred", stuck)
    try:
        with pytest.raises(PostfixError, match=r"Is a directory; still on hold: .*" + stuck) as err:
            queue.apply_all(moves)
        still = set(pf.hold_ids())
        assert stuck in still and set(str(err.value).rsplit(": ", 1)[1].split(", ")) == still
    finally:
        for path in blockers:
            (path / "x").unlink()
            path.rmdir()
    # The replay of the intent (the next start) finishes it, each message once.
    assert queue.apply_all(moves) == ["already" if q not in still else "moved" for q in ids]
    wait_sent(pf, set(ids), timeout=20)
    assert sorted(_released_lines(pf)) == sorted(ids) and pf.hold_ids() == []


def _block_release(deferred: Path, qid: str) -> list[Path]:
    owner = deferred.stat()
    made = []
    for sub in "0123456789ABCDEF":
        folder = deferred / sub
        if not folder.exists():
            folder.mkdir(0o700)
            os.chown(folder, owner.st_uid, owner.st_gid)
        (folder / qid).mkdir(0o700)
        (folder / qid / "x").write_text("x")
        for path in (folder / qid, folder / qid / "x"):
            os.chown(path, owner.st_uid, owner.st_gid)
        made.append(folder / qid)
    return made


def test_postsuper_counts_are_checked_against_what_was_asked(pf, queue):
    ids = _held(pf, 3)
    assert queue.postfix.release_many([ids[0], "4jNoSuchQueueIdz"]) == {ids[0]}
    assert queue.postfix.release_many([ids[0]]) == set()  # released already: 0, said as 0
    with pytest.raises(ValueError, match="not a queue ID"):
        queue.postfix.release_many([ids[1], "-d ALL"])
    assert pf.hold_ids() == sorted(ids[1:])
    # Released outside qsup meanwhile: not on hold, not released by this batch.
    pf.run("postsuper", "-H", ids[1], "hold")
    moves = _outgoing(queue, ids[2:]) + [Move(qid=ids[1], fp="f", dest="outgoing", name=ids[1])]
    assert queue.apply_all(moves) == ["moved", "already"]


def test_killed_after_postsuper_before_the_kick_the_replay_kicks(pf, queue):
    ids = _held(pf, 10)
    moves = _outgoing(queue, ids)
    assert queue.postfix.release_many(ids) == set(ids)  # the kill came here
    assert queue.apply_all(moves) == ["already"] * 10
    wait_sent(pf, set(ids), timeout=20)  # queue_run_delay is 300s: the replay kicked
    assert sorted(sent_ids(pf)) == sorted(ids)


def test_the_scan_copy_is_what_postcat_prints(pf, queue):
    bodies = [b"Subject: long\r\n\r\n" + b"y" * 10_000 + b"\r\nend\r\n",  # records continued (L)
              b"Subject: no newline\r\n\r\nat the end",
              b"Subject: 8bit \xe9\r\n\r\n\xc3\xa9\r\n.\r\n..dots\r\n",
              b"Subject: big\r\n\r\n" + b"line of a big message\r\n" * 15_000]  # postcat's
    ids = [pf.submit(b) for b in bodies]
    pf.wait_hold_count(len(ids))
    for qid in ids:
        path = queue.scan_path(qid)
        assert Path(path).read_bytes() == pf.postcat(qid), qid
        queue.scan_done(qid)


# ------------------------------------------------------- kill -9 around the batch
_WRAPPER = """#!{python}
import os, subprocess, sys, time
REAL = {real!r}
args = sys.argv[1:]
if {program!r} != "postsuper" or "-" not in args:
    os.execv(REAL, [REAL, *args])
feed = sys.stdin.buffer.read()
if {after!r}:
    subprocess.run([REAL, *args], input=feed, check=True)
open({mark!r}, "w").close()
time.sleep(120)  # the test kills qsup here
"""


def _commands(tmp: Path, after: bool) -> tuple[Path, Path]:
    """A command directory whose postsuper, given IDs on stdin, stops (before or
    after the real one ran) and says so in MARK; every other command is Postfix's."""
    folder, mark = tmp / "commands", tmp / "batch-reached"
    folder.mkdir()
    real = harness._find_program("postconf")
    for program in ("postconf", "postcat", "postsuper", "postqueue", "postkick"):
        path = folder / program
        path.write_text(_WRAPPER.format(python=sys.executable, program=program, after=after,
                                        real=os.path.join(os.path.dirname(real), program), mark=str(mark)))
        path.chmod(0o755)
    return folder, mark


@pytest.mark.parametrize("after", [False, True], ids=["before-postsuper", "after-postsuper"])
def test_kill_9_around_the_batched_release_finishes_on_restart_once(pf, qsup, tmp_path, after):
    write_config(tmp_path, pf)
    ids = submit_many(pf, [message(i) for i in range(90)])
    pf.wait_hold_count(90, timeout=60)
    folder, mark = _commands(tmp_path, after)
    scanned = tmp_path / "scanned"
    env = {**os.environ, "QSUP_TEST_SCANNED": str(scanned)}
    proc = subprocess.Popen(qsup.argv("drain", "--plugin-option", f"postfix.command_directory={folder}"),
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        harness.wait_until(mark.exists, 60, interval=0.02, what="the first batched release")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    held = set(pf.hold_ids())
    assert (len(held) < 90) == after and not sent_ids(pf)  # nothing kicked yet
    run = qsup("drain", "--json", env={"QSUP_TEST_SCANNED": str(scanned)})
    assert run.returncode == 0, run.stderr
    assert re.search(r"finished \d+ interrupted move", run.stderr), run.stderr
    wait_sent(pf, set(ids))
    assert sorted(sent_ids(pf)) == sorted(ids), "delivered twice or not at all"
    assert sorted(_released_lines(pf)) == sorted(ids), "released twice"
    assert set(ids) <= set(scanned.read_text().split()), "released unscanned"
    assert pf.hold_ids() == []
