"""Re-test with a real clamd (issue 16, docs/reference.md §9): the scanner's identity
is clamd's VERSION, and with local signature files only, their digest; a new
signature file and a RELOAD change it, and poison quarantined under the old one is
re-tested. A broken update (the chain dies on every message after it) opens the
breaker and re-tests, releases and quarantines nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import harness
import mail
import pytest
from conftest import WORKERS, plugin_dist, spool_counts

pytestmark = [pytest.mark.realsys, pytest.mark.timeout(120)]

PLUGIN = f'''
import sys
from quarantine.hookspecs import hookimpl
from quarantine.scanner import CommandScanner

@hookimpl
def qsup_scanner_types():
    return {{"link-a": lambda config: CommandScanner(
        [sys.executable, {str(WORKERS / "chainlink.py")!r}], mode="persistent",
        extra_env={{"LINK_NAME": "a"}}, name="link-a")}}
'''
POISON = {3, 9, 14}


def reload(clamd) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(clamd.socket_path)
        conn.sendall(b"zRELOAD\0")
        assert conn.recv(100).startswith(b"RELOADING")
    time.sleep(1.5)  # clamd loads the new database in the background


@pytest.fixture
def gateway(qsup, tmp_path):
    sigdir = tmp_path / "sigs"
    harness.write_clamav_signature(sigdir, mail.AV_MARKER)
    env = plugin_dist(tmp_path, "qsup_retestlinks", {"retestlinks": "retestlinks"}, {"retestlinks": PLUGIN})
    env = {**env, "CHAIN_LOG": str(tmp_path / "chain.log"), "LINK_BROKEN_FILE": str(tmp_path / "broken")}
    msgs = {}
    for i in range(20):
        body = mail.plain(i)
        if i in POISON:
            body = b"X-Link-a: segv\r\n" + body
        msgs[f"RT{i:04d}"] = body
    ids = mail.write_spool(qsup.spool, msgs)
    with harness.clamd_instance(tmp_path, sigdir) as clamd:
        def drain(*flags):
            proc = qsup("drain", "--spool", str(qsup.spool), "--json", "--scanners", "clamd,link-a",
                        "--plugin-option", f"clamd.socket={clamd.socket_path}",
                        "--plugin-option", f"clamd.conf={clamd.config_path}", "--workers", "2",
                        "--batch-size", "5", "--retest-rate", "600", *flags, env=env, timeout=90)
            return proc
        yield {"drain": drain, "clamd": clamd, "sigdir": sigdir, "ids": ids,
               "poison": {ids[i] for i in POISON}, "broken": tmp_path / "broken"}


def new_signature(g) -> None:
    (g["sigdir"] / "second.ndb").write_text("Qsup.Second:0:*:" + b"QSUPSECONDMARK".hex() + "\n")
    reload(g["clamd"])


def test_a_signature_update_retests_what_clamd_quarantined_under_the_old_one(qsup, gateway):
    first = gateway["drain"]()
    assert first.returncode == 0, first.stderr[-2000:]
    assert spool_counts(qsup.spool)["quarantine"] == gateway["poison"]
    (before,) = {r["scanner"] for r in qsup.listing()}
    assert before.startswith("ClamAV ") and "signatures" in before and before.endswith("+link-a"), before
    new_signature(gateway)
    second = gateway["drain"]()
    assert second.returncode == 0, second.stderr[-2000:]
    summary = qsup.summary(second)
    # the link still crashes on them: re-tested once each, they stay, the attempt added
    assert summary["retests"] == 3 and summary["retest_crashed"] == 3, summary
    assert spool_counts(qsup.spool)["quarantine"] == gateway["poison"]
    qid = sorted(gateway["poison"])[0]
    shown = json.loads(qsup("show", "--spool", str(qsup.spool), qid, "--json").stdout)[0]
    after = shown["history"]["attempts"][-1]["scanner"]
    assert after != before and after.startswith("ClamAV ") and shown["history"]["attempts"][-1]["path"] == ["retest"]


def test_a_broken_update_opens_the_breaker_and_quarantines_nothing(qsup, gateway):
    first = gateway["drain"]()
    assert first.returncode == 0, first.stderr[-2000:]
    gateway["broken"].write_text("")
    new_signature(gateway)
    second = gateway["drain"]("--max-wait", "3")
    assert second.returncode == 3, second.stderr[-2000:]
    assert "the canary dies" in second.stderr and "the scanner changed" in second.stderr
    summary = qsup.summary(second)
    assert summary["retests"] == 0 and summary["quarantined"] == 0, summary
    assert spool_counts(qsup.spool)["quarantine"] == gateway["poison"]
