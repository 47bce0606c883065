"""qsup in MailScanner's place in a real Postfix: every incoming message is held
(header_checks HOLD), qsup drains the hold queue through a scanner, releases what was
scanned and keeps the poison on hold. Private Postfix instances on 127.0.0.1 that
deliver to discard; the Postfix log is the witness."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import stat
import subprocess
import sys
import time
from pathlib import Path

import harness
import pytest

from quarantine.errors import StateLocked
from quarantine.hookspecs import Move

pytestmark = pytest.mark.realsys

HERE = Path(__file__).parent
SCANNER = f"{sys.executable} {HERE / 'poison_scanner.py'}"
SENT = re.compile(r"postfix/discard\[\d+\]: (\w+): to=<[^>]*>.*status=sent \(qsup-test-discarded\)")
RELEASED = re.compile(r"postsuper\[\d+\]: (\w+): released from hold")


def message(i: int, poison: bool = False) -> bytes:
    return (f"From: Sender {i} <sender{i}@example.org>\r\nTo: rcpt@example.net\r\n"
            f"Subject: {'poison' if poison else 'message'} {i}\r\n"
            f"Message-ID: <e2e-{i}@example.org>\r\nDate: Sat, 21 Nov 2026 08:00:00 +0000\r\n"
            + ("X-Qsup-Test: poison\r\n" if poison else "")
            + f"\r\nBody of message {i}.\r\n").encode()


def submit_many(pf, messages: list[bytes], per_session: int = 100) -> list[str]:
    """SMTP, several messages per session; the queue IDs from the DATA replies."""
    ids = []
    for start in range(0, len(messages), per_session):
        with smtplib.SMTP(pf.host, pf.port, timeout=30) as smtp:
            smtp.ehlo("qsup-e2e")
            for msg in messages[start:start + per_session]:
                assert smtp.mail("sender@example.org")[0] == 250
                assert smtp.rcpt("rcpt@example.net")[0] == 250
                code, reply = smtp.data(msg)
                assert code == 250, reply
                ids.append(re.search(rb"queued as (\w+)", reply).group(1).decode())
    return ids


def sent_ids(pf) -> list[str]:
    return SENT.findall(pf.log_text())


def wait_sent(pf, expected: set[str], timeout: float = 60) -> set[str]:
    harness.wait_until(lambda: expected <= set(sent_ids(pf)), timeout, interval=0.2,
                       what=f"{len(expected)} deliveries in the Postfix log")
    return set(sent_ids(pf))


def write_config(tmp: Path, pf, worker: str = SCANNER) -> Path:
    """qsup.toml in qsup's working directory: found without --config."""
    qdir = tmp / "pf-quarantine"
    (tmp / "qsup.toml").write_text(
        f'queue = "postfix"\nworker = "{worker}"\nworkers = 2\nbatch_size = 30\n'
        f'timeout = 20.0\n\n[plugin.postfix]\nconfig_directory = "{pf.config_dir}"\n'
        f'quarantine_dir = "{qdir}"\n')
    return qdir


@pytest.fixture
def pf(tmp_path):
    with harness.postfix_instance(tmp_path / "postfix") as instance:
        yield instance


@pytest.mark.timeout(150)
def test_300_messages_through_postfix_hold_qsup_and_back(pf, qsup, tmp_path):
    qdir = write_config(tmp_path, pf)
    poison_at = {17, 80, 143, 201, 288}
    t0 = time.monotonic()
    ids = submit_many(pf, [message(i, i in poison_at) for i in range(300)])
    assert sorted(ids) == pf.wait_hold_count(300, timeout=60)
    poison = {ids[i] for i in poison_at}
    clean = set(ids) - poison
    t_submit = time.monotonic() - t0

    t0 = time.monotonic()
    run = qsup("drain", "--json", timeout=120)
    t_drain = time.monotonic() - t0
    assert run.returncode == 0, run.stderr
    summary = qsup.summary(run)
    assert (summary["delivered"], summary["quarantined"]) == (295, 5), summary
    assert summary["breaker"]["state"] == "closed"

    # Postfix's own log: every clean message released from hold and delivered, once.
    delivered = wait_sent(pf, clean)
    assert delivered == clean
    assert sorted(sent_ids(pf)) == sorted(clean), "a message was delivered twice"
    assert set(RELEASED.findall(pf.log_text())) == clean
    # The poison stays on hold, and is what `qsup list` shows.
    assert pf.hold_ids() == sorted(poison)
    listed = qsup.listing()
    assert {r["qid"] for r in listed} == poison
    assert all(r["queue"] == "postfix" and r["why"] == "signal" and r["signal"] == "SIGSEGV"
               for r in listed)
    assert {r["subject"] for r in listed} == {f"poison {i}" for i in poison_at}
    # The quarantine store: a readable copy of each, private.
    assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700
    for qid in poison:
        copy = qdir / qid
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert copy.read_bytes() == pf.postcat(qid)
    shown = qsup("show", min(poison))
    assert "postfix: quarantine/" in shown.stdout and "SIGSEGV" in shown.stdout
    print(f"\n300 messages: submitted and held in {t_submit:.1f}s, drained in {t_drain:.1f}s "
          f"({summary['seconds']:.1f}s in qsup): {len(delivered)} delivered per the Postfix log, "
          f"{len(pf.hold_ids())} on hold")

    # `qsup release` puts one through again: pending again, scanned by the fixed scanner.
    first, second, third, *rest = sorted(poison)
    out = qsup("release", first)
    assert out.returncode == 0 and f"released {first}" in out.stdout, out.stderr
    assert first in pf.hold_ids() and not (qdir / first).exists()
    again = qsup("drain", "--json", "--worker", f"{SCANNER} --fixed")
    assert again.returncode == 0, again.stderr
    assert (qsup.summary(again)["delivered"], qsup.summary(again)["quarantined"]) == (1, 0)
    wait_sent(pf, clean | {first})
    assert first not in pf.hold_ids()

    # purge deletes it from Postfix too; release --no-scan sends it on unscanned.
    assert qsup("purge", second, "--yes").returncode == 0
    harness.wait_until(lambda: re.search(rf"postsuper\[\d+\]: {second}: removed", pf.log_text()), 10)
    assert qsup("release", "--no-scan", third).returncode == 0
    wait_sent(pf, clean | {first, third})
    assert pf.hold_ids() == sorted(rest)
    assert {r["qid"] for r in qsup.listing()} == set(rest)
    assert sorted(os.listdir(qdir / ".claims")) == sorted(rest)


@pytest.mark.timeout(120)
def test_kill_9_of_qsup_mid_drain_loses_and_duplicates_nothing(pf, qsup, tmp_path):
    write_config(tmp_path, pf)
    ids = submit_many(pf, [message(i) for i in range(150)])
    pf.wait_hold_count(150, timeout=30)
    proc = subprocess.Popen(qsup.argv("drain"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        harness.wait_until(lambda: len(sent_ids(pf)) >= 20, 60, interval=0.02, what="20 deliveries")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(set(sent_ids(pf))) < 150, "drain finished before it could be killed"
    run = qsup("drain", "--json")
    assert run.returncode == 0, run.stderr
    wait_sent(pf, set(ids))
    assert sorted(sent_ids(pf)) == sorted(ids), "delivered twice or not at all"
    assert pf.hold_ids() == []


# ------------------------------------------------------------ the queue object
@pytest.fixture
def queue(pf, tmp_path):
    from qsup_postfix import Postfix, PostfixQueue

    q = PostfixQueue(Postfix(str(pf.config_dir)), str(tmp_path / "q"))
    yield q
    q.close()


def _held(pf, queue, n: int) -> list[str]:
    ids = submit_many(pf, [message(i) for i in range(n)])
    pf.wait_hold_count(n)
    return ids


@pytest.mark.timeout(60)
def test_release_is_checked_idempotent_and_never_touches_a_changed_message(pf, queue):
    a, b = _held(pf, queue, 2)
    fp_a = queue.identify(a)[1]
    move = queue.plan(a, fp_a, "outgoing")
    assert queue.apply(move) == "moved"
    assert queue.apply(move) == "already"  # replayed after a restart
    wait_sent(pf, {a}, timeout=15)
    assert sent_ids(pf).count(a) == 1
    # qsup killed between postsuper -H and postqueue -i: the replay asks again, so the
    # message leaves now, not at the next queue run (queue_run_delay is 300s here).
    move_b = queue.plan(b, queue.identify(b)[1], "outgoing")
    assert queue.postfix.release(b) == 1
    assert queue.apply(move_b) == "already"
    wait_sent(pf, {a, b}, timeout=10)
    c = _held(pf, queue, 1)[0]
    # postsuper -H of an unknown ID exits 0: the count is what tells.
    assert queue.postfix.release("4jNoSuchQueueIdz") == 0
    # Same ID, other content (a reused short ID): never released unscanned.
    assert queue.apply(Move(qid=c, fp="0" * 16, dest="outgoing", name=c)) == "already"
    assert pf.hold_ids() == [c]
    assert queue.apply(Move(qid="bad/../id", fp="x", dest="outgoing", name="x")) == "gone"


@pytest.mark.timeout(60)
def test_quarantine_keeps_it_on_hold_and_release_makes_it_pending(pf, queue):
    a, b, c = _held(pf, queue, 3)
    assert {r.qid for r in queue.pending(10, lambda q: False)} == {a, b, c}
    assert {r.qid for r in queue.pending(10, lambda q: q == b)} == {a, c}
    size, fp = queue.identify(a)
    assert size == len(pf.postcat(a).replace(b"\n", b"\r\n"))  # Postfix's size=, not the file's
    path = queue.scan_path(a)
    assert os.path.basename(path) == a and Path(path).read_bytes() == pf.postcat(a)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    queue.scan_done(a)
    assert not os.path.exists(path)
    assert b"Subject: message 0" in queue.head("incoming", a, 16384)

    move = queue.plan(a, fp, "quarantine")
    assert queue.apply(move) == "moved" and queue.apply(move) == "already"
    assert a in pf.hold_ids()
    assert {r.qid for r in queue.pending(10, lambda q: False)} == {b, c}
    assert queue.depth() == 2
    assert queue.head("quarantine", move.name, 100) == pf.postcat(a)[:100]

    back = queue.plan(a, fp, "incoming", origin="quarantine", source=move.name)
    assert queue.apply(back) == "moved" and queue.apply(back) == "already"
    assert {r.qid for r in queue.pending(10, lambda q: False)} == {a, b, c}
    assert a in pf.hold_ids() and not queue.store.has_copy(move.name)

    # purge: out of Postfix for good, only the quarantined one.
    move = queue.plan(b, queue.identify(b)[1], "quarantine")
    assert queue.apply(move) == "moved"
    assert queue.purge(move.name) is True
    assert sorted(pf.hold_ids()) == sorted([a, c])
    assert queue.purge(move.name) is False


@pytest.mark.timeout(60)
def test_a_claim_that_no_longer_matches_is_reported_and_does_not_hide_mail(pf, queue):
    a, b = _held(pf, queue, 2)
    # A quarantined message deleted outside qsup, its (short) ID now used by new mail.
    queue.store.set_claim(a, a, "0123456789abcdef")
    assert {r.qid for r in queue.pending(10, lambda q: False)} == {a, b}
    reports = queue.reports()
    assert len(reports) == 1 and a in reports[0] and "no longer on hold" in reports[0]
    queue.pending(10, lambda q: False)
    assert queue.reports() == []  # once


@pytest.mark.timeout(60)
def test_odd_entries_on_hold_are_reported_once_and_left_alone(pf, queue, tmp_path):
    (a,) = _held(pf, queue, 1)
    hold = Path(queue.hold)
    (hold / "not a queue id").write_bytes(b"x")
    os.symlink("/etc/passwd", hold / "Symlink0")
    os.mkdir(hold / "Dir0", 0o700)
    try:
        assert [r.qid for r in queue.pending(10, lambda q: False)] == [a]
        lines = queue.reports()
        assert len(lines) == 3 and all("left alone" in ln for ln in lines)
        queue.pending(10, lambda q: False)
        assert queue.reports() == []
        assert queue.identify("Symlink0") is None
    finally:
        (hold / "not a queue id").unlink()
        (hold / "Symlink0").unlink()
        (hold / "Dir0").rmdir()


@pytest.mark.timeout(60)
def test_one_qsup_per_hold_queue(pf, queue, tmp_path):
    from qsup_postfix import Postfix, PostfixQueue

    with pytest.raises(StateLocked, match="in use by another qsup"):
        PostfixQueue(Postfix(str(pf.config_dir)), str(tmp_path / "q"))


def test_postfix_options_are_checked(qsup, tmp_path):
    run = qsup("drain", "--queue", "postfix", "--plugin-option", "postfix.bogus=1", "--worker", "true")
    assert run.returncode == 2
    assert "[plugin.postfix]: unknown key 'bogus'" in run.stderr and "Traceback" not in run.stderr
    run = qsup("drain", "--queue", "postfix", "--plugin-option", "postfix.command_timeout=soon",
               "--worker", "true")
    assert run.returncode == 2 and "command_timeout must be float" in run.stderr
    run = qsup("drain", "--queue", "postfix", "--plugin-option",
               f"postfix.config_directory={tmp_path / 'nowhere'}",
               "--plugin-option", f"postfix.quarantine_dir={tmp_path / 'q'}", "--worker", "true")
    assert run.returncode == 2 and "postconf" in run.stderr and "Traceback" not in run.stderr
