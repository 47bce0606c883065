"""Smoke tests for harness.py: each real daemon can be started privately on
loopback, used, and stopped without leaving processes behind."""

import base64
import os
import socket
import struct
import time

import harness
import pytest
from harness import (
    clamd_instance,
    clamd_instream,
    clamd_request,
    clamscan,
    postfix_instance,
    require,
    spamc_check,
    spamd_instance,
    write_clamav_signature,
)

pytestmark = pytest.mark.realsys  # marker declared in pyproject.toml

MARKER = b"QSUP-TEST-MARKER-5d1f3a9c"


def _msg(i: int, subject: str = None, body: bytes = b"hello") -> bytes:
    subject = subject or f"smoke {i}"
    return (f"From: sender@example.org\r\nTo: rcpt@example.net\r\n"
            f"Subject: {subject}\r\nMessage-ID: <smoke-{i}@example.org>\r\n"
            f"Date: Sat, 21 Nov 2026 07:00:00 +0000\r\n\r\n").encode() + body + b"\r\n"


def _gone(pid: int) -> bool:
    return not harness._is_running(pid)


# ---------------------------------------------------------------- require()

def test_require_skips_naming_the_package(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="qsup-no-such-pkg"):
        require("qsup-no-such-program", "qsup-no-such-pkg")


def test_require_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="qsup-no-such-pkg"):
        require("qsup-no-such-program", "qsup-no-such-pkg")


def test_require_finds_sbin_programs():
    assert require("sh", "dash").endswith("/sh")


# ---------------------------------------------------------------- postfix

def test_postfix_hold_release_discard(tmp_path):
    with postfix_instance(tmp_path) as pf:
        assert pf.startup_seconds < 30
        ids = [pf.submit(_msg(i)) for i in range(3)]
        held = pf.wait_hold_count(3)
        assert sorted(ids) == held
        assert all(m["queue_name"] == "hold" for m in pf.queue())

        # postcat -bh shows headers (incl. postfix's own Received:) and body
        text = pf.postcat(ids[0]).decode()
        assert text.startswith("Received: from ")
        assert "Subject: smoke 0" in text and "hello" in text

        out = pf.release(ids[0])
        assert "Released from hold: 1 message" in out
        pf.wait_log(rf"{ids[0]}: to=<rcpt@example.net>.*status=sent \(qsup-test-discarded\)")
        assert pf.wait_hold_count(2) == sorted(ids[1:])

        # gotcha: postsuper exits 0 even for an unknown queue id
        cp = pf.run("postsuper", "-H", "4jNoSuchQueueId")
        assert cp.returncode == 0
        assert "Released from hold: 0 messages" in cp.stderr.decode()

        master = pf.master_pid()
        wrapper = pf._proc.wrapper
        assert master and harness._is_running(master)
    # the whole tree is gone when the context exits
    assert wrapper.poll() is not None
    assert _gone(master)


def test_postfix_stops_on_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with postfix_instance(tmp_path) as pf:
            master = pf.master_pid()
            raise RuntimeError("boom")
    assert _gone(master)


def test_postfix_selective_hold(tmp_path):
    with postfix_instance(tmp_path, hold_regexp="/^Subject:.*HOLDME/") as pf:
        held = pf.submit(_msg(1, subject="please HOLDME"))
        passed = pf.submit(_msg(2, subject="just pass"))
        pf.wait_log(rf"{passed}: to=<rcpt@example.net>.*status=sent")
        assert pf.wait_hold_count(1) == [held]


# ---------------------------------------------------------------- clamav

@pytest.fixture
def sigdir(tmp_path):
    require("clamscan", "clamav")
    d = tmp_path / "sigs"
    name = write_clamav_signature(d, MARKER)
    assert name == "Qsup.Test.Marker.UNOFFICIAL"
    return d


def test_clamscan_marker_clean_and_error(tmp_path, sigdir):
    bad = tmp_path / "bad.eml"
    bad.write_bytes(_msg(1, body=b"x " + MARKER + b" y"))
    clean = tmp_path / "clean.eml"
    clean.write_bytes(_msg(2))
    attach = tmp_path / "attach.eml"
    attach.write_bytes(
        b"From: a@example.org\r\nSubject: att\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n"
        b"Content-Type: text/plain\r\n\r\nsee attachment\r\n--BB\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"\0\1binary " + MARKER) + b"\r\n--BB--\r\n")

    cp = clamscan(sigdir, bad)
    assert cp.returncode == 1, cp
    assert b"Qsup.Test.Marker.UNOFFICIAL FOUND" in cp.stdout
    assert clamscan(sigdir, clean).returncode == 0
    assert clamscan(sigdir, attach).returncode == 1  # decoded from base64 MIME part
    assert clamscan(sigdir, tmp_path / "missing").returncode == 2
    empty = tmp_path / "empty-sigs"
    empty.mkdir()
    assert clamscan(empty, clean).returncode == 2  # no database = error


def test_clamd_instream_and_scan(tmp_path, sigdir):
    bad = tmp_path / "bad.eml"
    bad.write_bytes(_msg(1, body=MARKER))
    with clamd_instance(tmp_path, sigdir) as cd:
        assert cd.startup_seconds < 60
        assert clamd_request(cd.socket_path, b"zPING\0") == "PONG"
        assert clamd_request(cd.socket_path, b"zVERSION\0").startswith("ClamAV ")
        assert clamd_instream(cd.socket_path, _msg(1, body=b"a " + MARKER)) == \
            "stream: Qsup.Test.Marker.UNOFFICIAL FOUND"
        # tiny chunks, marker split across chunk boundaries
        assert clamd_instream(cd.socket_path, b"z" * 5000 + MARKER, chunk_size=7) == \
            "stream: Qsup.Test.Marker.UNOFFICIAL FOUND"
        assert clamd_instream(cd.socket_path, _msg(2)) == "stream: OK"
        assert clamd_request(cd.socket_path, f"zSCAN {bad}\0".encode()) == \
            f"{bad}: Qsup.Test.Marker.UNOFFICIAL FOUND"
        assert clamd_request(cd.socket_path, f"zSCAN {tmp_path}/nope\0".encode()).endswith("ERROR")
        pid = cd.pid
    assert _gone(pid)


def test_clamd_killed_mid_request(tmp_path, sigdir):
    with clamd_instance(tmp_path, sigdir) as cd:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(cd.socket_path)
            s.sendall(b"zINSTREAM\0" + struct.pack("!L", 5) + b"hello")
            time.sleep(0.2)
            cd.kill()  # SIGKILL clamd while it waits for more chunks
            t0 = time.monotonic()
            with pytest.raises(OSError):
                reply = s.recv(100)  # b"" (EOF) or ECONNRESET
                assert reply == b""
                for _ in range(100):  # then writes fail with EPIPE
                    s.sendall(struct.pack("!L", 5) + b"hello")
            assert time.monotonic() - t0 < 5
        harness.wait_until(lambda: not cd.running(), 5, what="clamd gone")
        with pytest.raises(OSError):  # stale socket file: refused/reset
            clamd_request(cd.socket_path, b"zPING\0", timeout=2)


# ---------------------------------------------------------------- spamassassin

SPAM = _msg(1, subject="cheap qsup-spam-marker", body=b"buy qsup-body-marker")
HAM = _msg(2, subject="lunch", body=b"see you at noon")


def test_spamd_tiny_rules(tmp_path):
    require("spamc", "spamc")
    with spamd_instance(tmp_path, rules="tiny") as sd:
        assert sd.startup_seconds < 60
        rc, out = spamc_check(sd.port, SPAM)
        assert (rc, out) == (1, "11.5/5.0")
        rc, out = spamc_check(sd.port, HAM)
        assert (rc, out) == (0, "0.0/5.0")
        pid, port = sd.pid, sd.port
    assert _gone(pid)
    # spamd gone: with -x spamc reports it (69) instead of "0/0" and rc 0
    rc, out = spamc_check(port, HAM, timeout=5)
    assert rc != 0 and rc != 1


def test_spamd_debian_rules(tmp_path):
    require("spamc", "spamc")
    if not os.path.isdir("/usr/share/spamassassin"):
        harness._skip_or_fail("no rules in /usr/share/spamassassin (package spamassassin)")
    with spamd_instance(tmp_path, rules="debian") as sd:
        rc, out = spamc_check(sd.port, SPAM)
        score, threshold = map(float, out.split("/"))
        assert rc == 1 and score >= 11.5 and threshold == 5.0
        rc, out = spamc_check(sd.port, HAM)
        assert rc == 0 and float(out.split("/")[0]) < 5.0
