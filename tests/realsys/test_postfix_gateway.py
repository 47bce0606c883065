"""qsup as a Postfix content-scanning gateway (issue 13): spam delivered tagged
through the re-injection service (a tagged copy queued, then the held original
deleted, replay-safe across kill -9), and the whole path under load: smtp-source and
SMTP into a private Postfix that holds everything, real clamd and spamd, a crashing
link in the same chain, delivery to smtp-sink whose dumps show what was delivered."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
import mail
import pytest
from conftest import WORKERS, plugin_dist

from qsup_postfix import Postfix, PostfixQueue
from qsup_postfix.reinject import HEADER, token

pytestmark = [pytest.mark.realsys, pytest.mark.timeout(150)]

SPAM = (("X-Spam-Flag", "YES"), ("X-Spam-Status", "Yes, score=9 required=5"))
CHAINLINK = f"{sys.executable} {WORKERS / 'chainlink.py'}"
QUEUED_AS = re.compile(r"(\w+): tagged copy queued as (\w+)")


@pytest.fixture
def sink():
    with harness.smtp_sink() as s:
        yield s


@pytest.fixture
def gw(tmp_path, sink):
    """A private Postfix that holds everything, has the re-injection service, and
    delivers to the sink."""
    relay = f"smtp:[{sink.host}]:{sink.port}"
    extra = f"default_transport = {relay}\nrelay_transport = {relay}\n"
    with harness.postfix_instance(tmp_path / "postfix", extra_main_cf=extra, reinject=True) as pf:
        yield pf


def delivered(sink, count: int, timeout: float = 30) -> list[bytes]:
    harness.wait_until(lambda: len(sink.dumps()) >= count, timeout, interval=0.1,
                       what=f"{count} messages at smtp-sink")
    time.sleep(0.3)  # one more would show up by now
    return sink.dumps()


def envelope_of(dump: bytes) -> tuple[str, list[str]]:
    """smtp-sink's dump starts with the envelope: X-Mail-Args, X-Rcpt-Args lines."""
    text = dump.decode("utf-8", "replace")
    sender = re.search(r"^X-Mail-Args: <([^>]*)>", text, re.M).group(1)
    return sender, re.findall(r"^X-Rcpt-Args: <([^>]*)>", text, re.M)


def header_block(dump: bytes) -> bytes:
    return dump.split(b"\n\n", 1)[0]


def _queue(pf, tmp_path) -> PostfixQueue:
    return PostfixQueue(Postfix(str(pf.config_dir)), str(tmp_path / "q"),
                        reinject=f"127.0.0.1:{pf.reinject_port}")


def _spam_move(queue, qid):
    return dataclasses.replace(queue.plan(qid, queue.identify(qid)[1], "outgoing"), tag=SPAM)


def with_header(msg: bytes, line: str) -> bytes:
    return msg.replace(b"Subject:", line.encode() + b"\r\nSubject:", 1)


# ------------------------------------------------------------- tagged copies
def test_spam_is_delivered_as_a_tagged_copy_to_the_same_envelope_once(gw, sink, tmp_path):
    body = mail.plain(1, subject=mail.SPAM_SUBJECT) + b".leading dot\r\n"
    qid = gw.submit(body, sender="", rcpt=["a@example.net", "b@example.net"])
    gw.wait_hold_count(1)
    original = gw.postcat(qid)
    queue = _queue(gw, tmp_path)
    try:
        assert queue.can_tag
        move = _spam_move(queue, qid)
        assert queue.apply(move) == "moved"
        assert queue.apply(move) == "already"  # replayed after a restart
        assert queue.pending(10, lambda q: False) == [] and gw.hold_ids() == []
    finally:
        queue.close()
    [dump] = delivered(sink, 1)
    assert envelope_of(dump) == ("", ["a@example.net", "b@example.net"])
    head = header_block(dump)
    assert head.count(b"X-Spam-Flag: YES") == 1 and b"\nX-Spam-Status: Yes, score=9 required=5\n" in head
    assert f"\n{HEADER}: {token(qid, move.fp)}\n".encode() in head
    assert original in dump  # the content as it was held, under the added lines
    assert re.search(rf"postsuper\[\d+\]: {qid}: removed", gw.log_text())


def test_killed_after_the_copy_was_queued_before_its_id_was_kept(gw, sink, tmp_path):
    """The kill came between Postfix's "queued as" and the plugin's record of it:
    the replay finds the copy on hold by its header and sends no second one."""
    qid = gw.submit(mail.plain(2, subject=mail.SPAM_SUBJECT))
    gw.wait_hold_count(1)
    queue = _queue(gw, tmp_path)
    move = _spam_move(queue, qid)
    queue.store.set_reinjection(move.name, move.qid, move.fp)
    copy = queue._send_copy(move)
    queue.close()  # the kill
    restarted = _queue(gw, tmp_path)
    try:
        assert gw.hold_ids() == sorted([qid, copy])
        assert [m.qid for m in restarted.pending(10, lambda q: False)] == [qid]  # never the copy
        assert restarted.depth() == 1
        assert restarted.apply(move) == "moved"
    finally:
        restarted.close()
    [dump] = delivered(sink, 1)
    assert dump.count(b"X-Spam-Flag: YES") == 1 and gw.hold_ids() == []


_WRAPPER = """#!{python}
import os, sys, time
REAL = {real!r}
if {program!r} == "postsuper" and "-d" in sys.argv[1:]:
    open({mark!r}, "w").close()
    time.sleep(120)  # the test kills qsup here
os.execv(REAL, [REAL, *sys.argv[1:]])
"""


def _stopping_delete(tmp: Path) -> tuple[Path, Path]:
    """A command directory whose ``postsuper -d`` stops and says so in MARK."""
    folder, mark = tmp / "commands", tmp / "delete-reached"
    folder.mkdir()
    real = os.path.dirname(harness._find_program("postconf"))
    for program in ("postconf", "postcat", "postsuper", "postqueue", "postkick"):
        path = folder / program
        path.write_text(_WRAPPER.format(python=sys.executable, program=program, mark=str(mark),
                                        real=os.path.join(real, program)))
        path.chmod(0o755)
    return folder, mark


def _write_tagging_config(tmp: Path, pf) -> None:
    (tmp / "qsup.toml").write_text(
        f'queue = "postfix"\nworker = "{CHAINLINK}"\nworkers = 1\nbatch_size = 10\n\n'
        f'[plugin.postfix]\nconfig_directory = "{pf.config_dir}"\n'
        f'quarantine_dir = "{tmp / "pf-quarantine"}"\nreinject = "127.0.0.1:{pf.reinject_port}"\n')


def test_kill_9_between_the_reinjection_and_the_delete_delivers_one_tagged_copy(gw, sink, qsup, tmp_path):
    _write_tagging_config(tmp_path, gw)
    spam = gw.submit(with_header(mail.plain(3), "X-Link-t: spam 9.0/5.0"))
    clean = gw.submit(mail.plain(4))
    gw.wait_hold_count(2)
    folder, mark = _stopping_delete(tmp_path)
    env = {**os.environ, "LINK_NAME": "t", "CHAIN_LOG": str(tmp_path / "chain.log")}
    proc = subprocess.Popen(qsup.argv("drain", "--plugin-option", f"postfix.command_directory={folder}"),
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        harness.wait_until(mark.exists, 60, interval=0.02, what="the delete of the original")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    held = set(gw.hold_ids()) - {clean}  # released in the same pass, after the tagged one
    assert spam in held and len(held) == 2 and not sink.dumps()  # the original and its copy
    run = qsup("drain", "--json", env={"LINK_NAME": "t", "CHAIN_LOG": str(tmp_path / "chain.log")})
    assert run.returncode == 0, run.stderr
    assert re.search(r"finished \d+ interrupted move", run.stderr), run.stderr
    dumps = delivered(sink, 2)
    assert len(dumps) == 2, "delivered twice or not at all"
    tagged = [d for d in dumps if b"X-Link-t: spam" in d]
    assert len(tagged) == 1 and tagged[0].count(b"X-Spam-Flag: YES") == 1
    assert gw.hold_ids() == [] and not QUEUED_AS.search(run.stderr), "a second copy was sent"


# ------------------------------------------------------ the gateway, under load
CRASH_PLUGIN = f'''
import sys
from quarantine.hookspecs import hookimpl
from quarantine.scanner import CommandScanner

def make(config):
    return CommandScanner([sys.executable, {str(WORKERS / "chainlink.py")!r}], mode="persistent",
                          extra_env={{"LINK_NAME": "crash"}}, name="link-crash")

@hookimpl
def qsup_scanner_types():
    return {{"link-crash": make}}
'''
SIGNATURE = "Qsup.Test.Marker.UNOFFICIAL"
LOAD, SPECIAL = 975, {"infected": 10, "spam": 10, "poison": 5}


def special_messages() -> dict[str, list[bytes]]:
    """The 25 whose content matters: the test's ClamAV marker, the tiny spamd rule
    set's subject, a header that makes the chain's last link segfault."""
    return {"infected": [mail.infected(100 + i) for i in range(10)],
            "spam": [mail.plain(200 + i, subject=mail.SPAM_SUBJECT) for i in range(10)],
            "poison": [with_header(mail.plain(300 + i), "X-Link-crash: segv") for i in range(5)]}


def smtp_source(pf, count: int) -> None:
    """Postfix's own load generator: *count* messages, 5 sessions, 20 per session."""
    argv = [harness.require("smtp-source", "postfix"), "-s", "5", "-m", str(count), "-C", "20", "-l", "2000",
            "-f", "load@example.org", "-t", "rcpt@example.net", "-M", "load.example.org",
            f"{pf.host}:{pf.port}"]
    subprocess.run(argv, check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)


def _write_gateway_config(tmp: Path, pf, clamd, spamd) -> Path:
    qdir = tmp / "pf-quarantine"
    (tmp / "qsup.toml").write_text(
        f'queue = "postfix"\nscanners = ["clamd", "spamc", "link-crash"]\nworkers = 2\n'
        f'batch_size = 30\ntimeout = 20.0\n\n[plugin.postfix]\nconfig_directory = "{pf.config_dir}"\n'
        f'quarantine_dir = "{qdir}"\nreinject = "127.0.0.1:{pf.reinject_port}"\n\n'
        f'[plugin.clamd]\nsocket = "{clamd.socket_path}"\n\n'
        f'[plugin.spamc]\nhost = "{spamd.host}"\nport = {spamd.port}\n')
    return qdir


@pytest.mark.timeout(240)
def test_a_thousand_messages_through_the_gateway(gw, sink, qsup, tmp_path):
    harness.require("spamc", "spamc")
    sigdir = tmp_path / "sigs"
    assert harness.write_clamav_signature(sigdir, mail.AV_MARKER) == SIGNATURE
    # "qsup_crashlink", not "qsup-crashlink": the dist-info name up to its first "-" is
    # the distribution, and one named "qsup" would hide qsup's own entry points.
    env = plugin_dist(tmp_path, "qsup_crashlink", {"crashlink": "crashlink"}, {"crashlink": CRASH_PLUGIN})
    env["CHAIN_LOG"] = str(tmp_path / "chain.log")
    t0 = time.monotonic()
    smtp_source(gw, LOAD)
    special = {kind: [gw.submit(m) for m in msgs] for kind, msgs in special_messages().items()}
    held = set(gw.wait_hold_count(LOAD + 25, timeout=60))
    clean = held - {q for ids in special.values() for q in ids}
    sample = {q: gw.postcat(q) for q in sorted(clean)[:: LOAD // 15]}
    t_in = time.monotonic() - t0
    with harness.clamd_instance(tmp_path, sigdir) as clamd, harness.spamd_instance(tmp_path) as spamd:
        _write_gateway_config(tmp_path, gw, clamd, spamd)
        t0 = time.monotonic()
        run = qsup("drain", "--json", env=env, timeout=200)
        t_drain = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-3000:]
    summary = qsup.summary(run)
    assert (summary["delivered"], summary["quarantined"]) == (LOAD + 10, 15), summary

    # Held back: the infected and the poison stay on hold, each quarantined as what it is.
    kinds = {kind: {r["qid"] for r in json.loads(qsup("list", "--kind", kind, "--json").stdout)}
             for kind in ("infected", "poison", "spam")}
    assert kinds == {"infected": set(special["infected"]), "poison": set(special["poison"]), "spam": set()}
    assert set(gw.hold_ids()) == kinds["infected"] | kinds["poison"], "on hold and not quarantined"

    dumps = delivered(sink, LOAD + 10, timeout=60)
    assert len(dumps) == LOAD + 10, "delivered twice, or not at all"
    tagged = [d for d in dumps if b"\nX-Spam-Flag: YES\n" in header_block(d)]
    assert len(tagged) == 10 and all(mail.SPAM_SUBJECT.encode() in d for d in tagged)
    assert sorted(_received_id(d, skip=1) for d in tagged) == sorted(special["spam"])  # copies of them
    untouched = [d for d in dumps if d not in tagged]
    assert sorted(_received_id(d) for d in untouched) == sorted(clean)
    assert not any(b"X-Spam-" in d or HEADER.encode() in d for d in untouched)
    by_id = {_received_id(d): d for d in untouched}
    assert all(content in by_id[q] for q, content in sample.items()), "a clean message was changed"

    # Nothing sent to a sender: every delivery went to the message's own recipient.
    assert {tuple(envelope_of(d)[1]) for d in dumps} == {("rcpt@example.net",)}
    log = gw.log_text()
    assert "postfix/bounce" not in log and "sender non-delivery" not in log
    assert len(re.findall(r"postfix/smtp\[\d+\]: \w+: to=<rcpt@example\.net>.*status=sent", log)) == LOAD + 10
    assert len(QUEUED_AS.findall(run.stderr)) == 10
    print(f"\n{LOAD + 25} messages: in and held in {t_in:.1f}s, drained in {t_drain:.1f}s")


def _received_id(dump: bytes, skip: int = 0) -> str:
    """The queue ID in the Received: line Postfix's smtpd wrote (skipping smtp-sink's
    and, for a tagged copy, the re-injection's: *skip* more)."""
    ids = re.findall(rb"by qsup-test\.localdomain \(Postfix\) with E?SMTP id (\w+)\b", dump)
    assert len(ids) > skip, dump[:1500].decode("utf-8", "replace")
    return ids[skip].decode()
