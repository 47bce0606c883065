"""Operator digests (docs/reference.md §8.2): against a real SMTP server on loopback, a real
sendmail program, and the Notifier's schedule on injected wall time."""

from __future__ import annotations

import email
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from conftest import DEMO, assert_conserved, wait_for

from quarantine import config as qconfig
from quarantine.errors import ConfigError
from quarantine.notify import Notifier, compose
from quarantine.outbox import Outbox
from quarantine.store import Store

pytestmark = pytest.mark.timeout(180)
POISON = {i: "segv" for i in range(17, 400, 40)}  # 10 of 400
ID = re.compile(r"\bM\d{6}\b")


class Inbox:
    """What a real SMTP server on 127.0.0.1 was given: (envelope, parsed message)."""

    def __init__(self):
        self.mails: list[tuple[dict, email.message.EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=default)
        with self.lock:
            self.mails.append(({"from": envelope.mail_from, "to": list(envelope.rcpt_tos)}, msg))
        return "250 OK"

    def named(self, msg) -> set[str]:
        return set(ID.findall(msg.get_content()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    port = _free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    inbox.address = f"127.0.0.1:{port}"
    yield inbox
    ctl.stop()


def _notify_args(smtp, digest: float = 5) -> list[str]:
    return ["--notify-to", "ops@example.net", "--notify-smtp", smtp.address,
            "--notify-digest", str(digest)]


def test_a_drain_mails_every_quarantine_once_and_only_to_notify_to(qsup, make_spool, smtp):
    ids = make_spool(400, POISON)
    bad = {ids[i] for i in POISON}
    proc = qsup.drain("--worker", DEMO, *_notify_args(smtp))
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == bad
    assert 1 <= len(smtp.mails) <= 3, [m["Subject"] for _, m in smtp.mails]
    named: list[str] = []
    senders = {f"sender{n}@example.org" for n in range(50)}
    for env, msg in smtp.mails:
        assert env["to"] == ["ops@example.net"] and not set(env["to"]) & senders
        assert env["from"] == "<>"  # no notify_from: the null sender, nothing bounces back
        assert msg["To"] == "ops@example.net"
        assert msg["Auto-Submitted"] == "auto-generated" and msg["Precedence"] == "bulk"
        assert msg["Message-ID"] and msg["Date"]
        named += sorted(smtp.named(msg))
    assert sorted(named) == sorted(bad)  # every one, each in one digest only

    # the audit trail of the same drain: one row per message, its fate, its sender
    out = qsup("export", "--json", "--since", "1h")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["qid"] for r in rows) == sorted(ids)
    for r in rows:
        assert r["fate"] == ("quarantined" if r["qid"] in bad else "delivered"), r
        assert re.fullmatch(r"sender\d+@example\.org", r["sender"]), r
        assert r["scanner"] == "command" and r["time"]
        if r["fate"] == "delivered":
            assert r["verdict"] == "clean" and r["message_id"] == f"<demo-{int(r['qid'][1:])}@example.org>"
        else:
            assert r["verdict"] == "crash: signal SIGSEGV"
    csv_out = qsup("export", "--since", "1h").stdout.splitlines()
    assert csv_out[0] == "qid,fate,time,message_id,sender,verdict,scanner" and len(csv_out) == 401
    assert qsup("export", "--json", "--until", "1h").stdout.strip() == "[]"


def test_no_message_is_named_twice_across_a_kill_9(qsup, make_spool, smtp):
    ids = make_spool(400, POISON)
    bad = {ids[i] for i in POISON}
    args = qsup.argv("drain", "--spool", str(qsup.spool), "--worker", DEMO + " --delay 0.01",
                     "--workers", "3", *_notify_args(smtp, digest=2))
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: smtp.mails or first.poll() is not None, 60, "a first digest")
        quarantined = len(os.listdir(qsup.spool / "quarantine"))
        assert quarantined < len(bad), "the drain ended before the kill: slow the scanner"
        first.send_signal(signal.SIGKILL)  # mid-drain: batches in flight, events in the outbox
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    before = len(smtp.mails)
    proc = qsup.drain("--worker", DEMO, *_notify_args(smtp, digest=2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert assert_conserved(qsup.spool, ids)["quarantine"] == bad
    assert len(smtp.mails) > before
    by_id: dict[str, set[str]] = {}
    for _, msg in smtp.mails:  # a digest sent again after a kill keeps its Message-ID
        by_id.setdefault(msg["Message-ID"], set()).update(smtp.named(msg))
    seen: list[str] = [qid for named in by_id.values() for qid in named]
    assert sorted(seen) == sorted(bad), by_id


def test_sendmail_gets_the_operator_only_from_notify_from(qsup, make_spool, tmp_path):
    log = tmp_path / "sendmail.log"
    fake = tmp_path / "sendmail"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\ncat >> {log}\n")
    fake.chmod(0o755)
    ids = make_spool(40, {5: "segv"})
    proc = qsup.drain("--worker", DEMO, "--notify-to", "ops@example.net, oncall@example.net",
                      "--notify-sendmail", str(fake), "--notify-digest", "60",
                      "--notify-from", "qsup alerts <qsup@gw.example>")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = log.read_text()
    assert text.splitlines()[0] == "-oi -f qsup@gw.example -- ops@example.net oncall@example.net"
    assert ids[5] in text and "Auto-Submitted: auto-generated" in text
    assert "From: qsup alerts <qsup@gw.example>" in text


def test_notify_settings_are_checked(qsup, make_spool):
    make_spool(5, {})
    for args, word in ((["--notify-to", "ops@example.net"], "notify_smtp"),
                       (["--notify-to", "ops@example.net", "--notify-smtp", "nohost"], "HOST:PORT"),
                       (["--notify-to", "nobody", "--notify-smtp", "127.0.0.1:25"], "notify_to")):
        proc = qsup.drain("--worker", DEMO, *args)
        assert proc.returncode == 2 and word in proc.stderr, proc.stderr


# ------------------------------------------------------- the schedule, in-process
class Transport:
    threaded = False

    def __init__(self):
        self.sent: list[bytes] = []
        self.fail = False

    def send(self, data: bytes, envelope_from: str, to: list[str]) -> None:
        if self.fail:
            raise ConnectionRefusedError("refused")
        self.sent.append(data)


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _config(**keys):
    keys = {"notify_to": "ops@example.net", "notify_smtp": "127.0.0.1:25", **keys}
    return qconfig.load(None, keys)


def _quarantine(store: Store, outbox: Outbox, qid: str, t: float) -> None:
    with store.write() as w:
        outbox.quarantined(w, t, {"qid": qid, "sender": "x@example.org", "subject": "s", "why": "signal"})


@pytest.fixture
def store(tmp_path):
    st = Store(str(tmp_path / "state"))
    yield st
    st.close()


def test_one_digest_per_period_and_a_cap_said_once(store, caplog):
    wall, transport = Clock(), Transport()
    n = Notifier(_config(notify_digest=600.0, notify_max_per_hour=2), store, wall, transport)
    mono = 0.0

    def tick(seconds: float) -> None:
        nonlocal mono
        for _ in range(int(seconds)):
            wall.t += 1
            mono += 1
            n.tick(mono)

    _quarantine(store, n.outbox, "A1", wall.t)
    tick(61)  # settle: a tenth of the period, at most a minute
    assert len(transport.sent) == 1
    _quarantine(store, n.outbox, "A2", wall.t)
    tick(300)
    assert len(transport.sent) == 1  # the period is not over
    tick(301)
    assert len(transport.sent) == 2 and b"A2" in transport.sent[1] and b"A1" not in transport.sent[1]
    with caplog.at_level(logging.ERROR, logger="qsup"):
        for qid in ("A3", "A4", "A5"):
            _quarantine(store, n.outbox, qid, wall.t)
            tick(700)
    assert len(transport.sent) == 2  # 2 an hour: the rest waits for the hour
    assert sum("notification cap" in r.message for r in caplog.records) == 1
    tick(3600)
    assert len(transport.sent) == 3 and all(q in transport.sent[-1] for q in (b"A3", b"A4", b"A5"))
    names = [set(re.findall(rb"A\d", m)) for m in transport.sent]
    assert sum(len(s) for s in names) == len(set().union(*names)) == 5


def test_a_digest_the_server_may_have_taken_goes_again_as_itself(store):
    wall, transport = Clock(), Transport()
    n = Notifier(_config(notify_digest=60.0), store, wall, transport)
    _quarantine(store, n.outbox, "B1", wall.t)
    transport.fail = True
    wall.t += 10
    n.tick(10.0)
    assert not transport.sent
    with store.read() as r:
        claimed = Outbox.claimed(r)
    assert claimed is not None and claimed.count == 1
    _quarantine(store, n.outbox, "B2", wall.t)
    # a new qsup (after a kill) sends the claimed digest as it was, then the rest
    transport.fail = False
    again = Notifier(_config(notify_digest=60.0), store, wall, transport)
    again.flush()
    assert len(transport.sent) == 2
    first = email.message_from_bytes(transport.sent[0], policy=default)
    assert first["Message-ID"] == claimed.msgid and "B1" in first.get_content()
    assert "B2" not in first.get_content() and b"B2" in transport.sent[1]
    with store.read() as r:
        assert Outbox.claimed(r) is None and not Outbox.events(r, 10)


def test_the_digest_never_puts_what_a_message_says_in_a_header():
    evil = "x@example.org\r\nBcc: victim@example.com"
    data = compose([{"event": "quarantined", "qid": "Q1", "t": 0, "sender": evil,
                     "subject": "hi\nTo: victim@example.com", "why": "signal"},
                    {"event": "breaker", "t": 0, "reason": "the canary failed too"}],
                   to=["ops@example.net"], sender="qsup <qsup@gw>", host="gw", now=0, msgid="<m@gw>")
    msg = email.message_from_bytes(data, policy=default)
    assert msg.get_all("To") == ["ops@example.net"] and msg["Bcc"] is None
    assert "breaker opened 1 time" in msg["Subject"] and "Q1" in msg.get_content()


def test_a_bad_notify_setting_is_refused_at_start(store):
    with pytest.raises(ConfigError):
        Notifier(_config(notify_smtp=None), store, Clock())
