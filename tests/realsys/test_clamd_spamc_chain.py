"""A real scanner chain: clamd then spamc, against a private clamd (the test's
signature only) and a private spamd (tiny rule set). The combined verdicts reach the
qsup_verdict hooks of both plugins and the journal."""

from __future__ import annotations

import json

import harness
import mail
import pytest

pytestmark = pytest.mark.realsys

SIGNATURE = "Qsup.Test.Marker.UNOFFICIAL"


@pytest.mark.timeout(90)
def test_clamd_then_spamc_combines_the_verdicts(qsup, tmp_path):
    harness.require("spamc", "spamc")
    sigdir = tmp_path / "sigs"
    assert harness.write_clamav_signature(sigdir, mail.AV_MARKER) == SIGNATURE
    both = mail.plain(4, subject=mail.SPAM_SUBJECT, body=b"Run this: " + mail.AV_MARKER + b"\r\n")
    msgs = {"CH0": mail.plain(0), "CH1": mail.infected(1), "CH2": mail.plain(2, subject=mail.SPAM_SUBJECT),
            "CH3": mail.plain(3), "CH4": both}
    ids = mail.write_spool(qsup.spool, msgs)
    with harness.clamd_instance(tmp_path, sigdir) as clamd, harness.spamd_instance(tmp_path) as spamd:
        run = qsup.drain("--scanners", "clamd,spamc", "--plugin-option", f"clamd.socket={clamd.socket_path}",
                         "--plugin-option", f"spamc.host={spamd.host}",
                         "--plugin-option", f"spamc.port={spamd.port}", "--workers", "2", "--batch-size", "3")
    assert run.returncode == 0, run.stderr
    summary = qsup.summary(run)
    # acted on (docs/reference.md §7): infected quarantined, spam tagged, ham as it was
    assert (summary["delivered"], summary["quarantined"], summary["crashes"]) == (3, 2, 0), summary
    assert mail.outgoing(qsup.spool) == {"CH0", "CH2", "CH3"}
    assert {r["qid"]: r["kind"] for r in qsup.listing()} == {"CH1": "infected", "CH4": "infected"}
    assert (qsup.spool / "outgoing" / "CH2").read_bytes().startswith(b"X-Spam-Flag: YES")
    assert (qsup.spool / "outgoing" / "CH0").read_bytes() == msgs["CH0"]
    rows = {row["qid"]: row for row in json.loads(qsup("export", "--json").stdout)}
    assert {qid: rows[qid]["verdict"] for qid in ids} == {
        "CH0": "ham 0.0/5.0", "CH1": f"infected {SIGNATURE}", "CH2": "spam 10.0/5.0",
        "CH3": "ham 0.0/5.0", "CH4": f"infected {SIGNATURE}"}
    (scanner,) = {row["scanner"] for row in rows.values()}  # the chain's identity (§9)
    assert scanner.startswith("ClamAV ") and scanner.endswith("+spamc"), scanner
    # each plugin's qsup_verdict hook saw the chain's verdict: clamav's logs infected, spamassassin's spam
    assert sorted(qid for qid in ids if f"{qid} is infected ({SIGNATURE})" in run.stderr) == ["CH1", "CH4"]
    assert [qid for qid in ids if f"{qid} is spam (score 10.0/5.0)" in run.stderr] == ["CH2"]
