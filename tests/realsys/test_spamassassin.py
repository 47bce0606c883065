"""SpamAssassin under qsup: spamc against a private spamd (tiny rule set, no network).
The score is the verdict; a spamd that cannot be reached is never "ham"."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import harness
import mail
import pytest

pytestmark = pytest.mark.realsys

SPAM_LINE = re.compile(r"qsup\[\d+\]: INFO: (\S+) is spam \(score 10\.0/5\.0\)")


@pytest.fixture
def spamd(tmp_path):
    harness.require("spamc", "spamc")
    with harness.spamd_instance(tmp_path) as instance:
        yield instance


def backlog(qsup, n: int, spam: set[int]) -> tuple[list[str], set[str]]:
    msgs = {f"SA{i:04d}": mail.plain(i, subject=mail.SPAM_SUBJECT if i in spam else "") for i in range(n)}
    ids = mail.write_spool(qsup.spool, msgs)
    return ids, {ids[i] for i in spam}


@pytest.mark.timeout(60)
def test_the_score_is_the_verdict(spamd, tmp_path):
    paths = []
    for name, data in (("ham", mail.plain(1)), ("spam", mail.plain(2, subject=mail.SPAM_SUBJECT)),
                       ("body", mail.plain(3, body=b"qsup-body-marker\r\n")), ("big", b"x" * 2000)):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    run = subprocess.run([sys.executable, "-m", "qsup_spamassassin.spamc_worker", "--host", spamd.host,
                          "--port", str(spamd.port), "--max-size", "1500", "--", *paths],
                         env={**os.environ, "QSUP_STATUS_FD": "1"}, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    done = [line for line in run.stdout.splitlines() if line.startswith("done")]
    assert done == ["done ham ham 0.0/5.0", "done spam spam 10.0/5.0", "done body ham 1.5/5.0",
                    "done big unscanned too-big"]


@pytest.mark.timeout(60)
def test_drain_through_spamd_in_persistent_workers(qsup, spamd):
    ids, spam = backlog(qsup, 20, {1, 8, 9, 17})
    run = qsup.drain("--scanner", "spamc", "--plugin-option", f"spamc.host={spamd.host}",
                     "--plugin-option", f"spamc.port={spamd.port}", "--workers", "2", "--batch-size", "5")
    assert run.returncode == 0, run.stderr
    summary = qsup.summary(run)
    assert (summary["delivered"], summary["quarantined"], summary["crashes"]) == (20, 0, 0)
    assert mail.outgoing(qsup.spool) == set(ids)
    assert sorted(SPAM_LINE.findall(run.stderr)) == sorted(spam)
    for qid in ids:  # spam is delivered tagged (docs/reference.md §7), the rest unchanged
        head = (qsup.spool / "outgoing" / qid).read_bytes()[:200]
        tagged = head.startswith(b"X-Spam-Flag: YES") and b"X-Spam-Status: Yes, score=10 required=5" in head
        assert tagged == (qid in spam), (qid, head)


@pytest.mark.timeout(60)
def test_unreachable_spamd_opens_the_breaker_never_ham(qsup):
    harness.require("spamc", "spamc")
    ids, _ = backlog(qsup, 6, set())
    run = qsup.drain("--scanner", "spamc", "--plugin-option", "spamc.host=127.0.0.1",
                     "--plugin-option", f"spamc.port={harness.free_port()}", "--max-wait", "1")
    assert run.returncode == 3, run.stderr
    assert "worker cannot start" in run.stderr
    assert qsup.summary(run)["delivered"] == 0 and qsup.listing() == []
    assert set(os.listdir(qsup.spool / "incoming")) == set(ids)
