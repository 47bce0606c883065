"""Ready for a gateway (issue 13): no scanner by accident, verdicts acted on, scanners
chained. The spool queue here; the Postfix path is in tests/realsys/."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
from conftest import DEMO, WORKERS, assert_conserved, spool_counts

from quarantine import tagging
from quarantine.demo import build_spool
from quarantine.hookspecs import Move
from quarantine.spool import SpoolQueue

pytestmark = pytest.mark.timeout(120)


def py(worker: str) -> str:
    return f"{sys.executable} {WORKERS / worker}"


# ------------------------------------------------------ no accidental scanner
@pytest.mark.parametrize("command", ["drain", "run"])
def test_drain_or_run_without_a_scanner_is_exit_2_and_touches_nothing(qsup, make_spool, command):
    """The default worker was the demo scanner, which obeys a header any sender can set
    (X-Demo-Poison: memory allocates up to 16 GiB): `drain --spool DIR` "delivered"
    everything. Without a configured scanner qsup says how to choose one."""
    ids = make_spool(5, {})
    proc = qsup(command, "--spool", str(qsup.spool), timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--worker" in lines[0] and "scanner" in lines[0], proc.stderr
    assert spool_counts(qsup.spool)["incoming"] == set(ids)
    assert not qsup.state.exists() or not any(qsup.state.iterdir()), "state was written"


@pytest.mark.parametrize("command", ["drain", "run"])
def test_a_spool_that_does_not_exist_is_exit_2(qsup, tmp_path, command):
    missing = tmp_path / "no-such-spool"
    proc = qsup(command, "--spool", str(missing), "--worker", DEMO, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not missing.exists(), "the spool was created"


def test_a_spool_without_its_subdirectories_gets_them(qsup, tmp_path, make_spool):
    """An existing, empty directory is a new spool: qsup makes incoming/ and the rest."""
    root = tmp_path / "fresh"
    root.mkdir()
    proc = qsup("drain", "--spool", str(root), "--worker", DEMO, "--json", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in root.iterdir()} >= {"incoming", "outgoing", "quarantine", "tmp"}
    assert oct(os.stat(root / "quarantine").st_mode & 0o777) == "0o700"


# ---------------------------------------------------------------- verdicts
VERDICTS = {"M000003": "infected Eicar-Test-Signature", "M000007": "spam 7.5/5.0",
            "M000011": "spam 25.0/5.0", "M000013": "ham 0.1/5.0"}


def verdict_drain(qsup, *flags: str, mode: str = "oneshot"):
    env = {"VERDICTS": json.dumps(VERDICTS)}
    return qsup("drain", "--spool", str(qsup.spool), "--json", "--worker", py("verdicts.py"),
                "--worker-mode", mode, "--workers", "2", "--batch-size", "5", *flags, env=env)


@pytest.mark.parametrize("mode", ["oneshot", "persistent"])
def test_infected_is_quarantined_and_spam_is_tagged(qsup, make_spool, mode):
    """Seen on a gateway: '… is infected: a verdict, not a crash; the queue hands it
    on' — then 'delivered 6, quarantined 0'. An infected message is quarantined as
    kind infected; spam is delivered with X-Spam-Flag and X-Spam-Status; the rest
    unchanged, byte for byte."""
    ids = make_spool(20, {})
    before = {q: (qsup.spool / "incoming" / q).read_bytes() for q in ids}
    proc = verdict_drain(qsup, "--spam-quarantine-score", "20", mode=mode)
    assert proc.returncode == 0, proc.stderr
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {"M000003", "M000011"}
    kinds = {r["qid"]: r for r in qsup.listing()}
    assert kinds["M000003"]["kind"] == "infected" and "Eicar-Test-Signature" in kinds["M000003"]["verdict"]
    assert kinds["M000011"]["kind"] == "spam"
    infected = qsup("list", "--spool", str(qsup.spool), "--kind", "infected")
    assert "M000003" in infected.stdout and "M000011" not in infected.stdout, infected.stdout
    tagged = (qsup.spool / "outgoing" / "M000007").read_bytes()
    assert tagged == b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=7.5 required=5\r\n" + before["M000007"]
    for qid in set(ids) - {"M000003", "M000007", "M000011"}:
        assert (qsup.spool / "outgoing" / qid).read_bytes() == before[qid], qid
    assert oct((qsup.spool / "quarantine" / "M000003").stat().st_mode & 0o777) == "0o600"
    summary = qsup.summary(proc)
    assert summary["quarantined"] == 2 and summary["crashes"] == 0 and summary["tagged"] == 1, summary
    assert not os.listdir(qsup.spool / "tmp")
    fates = {r["qid"]: (r["fate"], r["verdict"]) for r in json.loads(qsup("export", "--json").stdout)}
    assert fates["M000007"] == ("tagged", "spam 7.5/5.0") and fates["M000013"] == ("delivered", "ham 0.1/5.0")
    assert fates["M000003"] == ("quarantined", "infected Eicar-Test-Signature")


def test_verdict_actions_follow_the_config(qsup, make_spool):
    ids = make_spool(20, {})
    proc = verdict_drain(qsup, "--on-infected", "deliver", "--on-spam", "quarantine")
    assert proc.returncode == 0, proc.stderr
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {"M000007", "M000011"}
    assert b"X-Spam-Flag" not in (qsup.spool / "outgoing" / "M000003").read_bytes()


def test_show_names_the_virus_of_an_infected_message(qsup, make_spool):
    make_spool(20, {})
    assert verdict_drain(qsup).returncode == 0
    shown = qsup("show", "--spool", str(qsup.spool), "M000003")
    assert shown.returncode == 0 and "Eicar-Test-Signature" in shown.stdout, shown.stdout + shown.stderr


def test_a_tag_is_added_once_whatever_instant_qsup_dies_at(tmp_path):
    """The tagged copy is written through tmp/ and renamed over the message, then
    moved: replayed after a kill at each step, one copy, tagged once."""
    spool = tmp_path / "spool"
    ids = build_spool(str(spool), 3, {})
    queue = SpoolQueue(str(spool))
    tag = (("X-Spam-Flag", "YES"), ("X-Spam-Status", "Yes, score=9 required=5"))
    original = {q: (spool / "incoming" / q).read_bytes() for q in ids}
    plans = {}
    for q in ids:
        fp = queue.identify(q)[1]
        plans[q] = dataclasses.replace(queue.plan(q, fp, "outgoing"), tag=tag)
    tagging.tag_in_place(plans[ids[1]], str(spool / "incoming" / ids[1]),  # died after the tag
                         str(spool / "tmp" / f".qsup-tag.{ids[1]}"))
    queue.apply(plans[ids[2]])  # died after the move, before the intent was cleared
    fields = [f.name for f in dataclasses.fields(Move)]  # a restart reads the intent back
    plans = {q: Move(*json.loads(json.dumps([getattr(m, f) for f in fields]))) for q, m in plans.items()}
    for q in ids:
        assert queue.apply(plans[q]) in ("moved", "already")
        assert queue.apply(plans[q]) == "already"
        assert not (spool / "incoming" / q).exists()
        head = b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=9 required=5\r\n"
        assert (spool / "outgoing" / q).read_bytes() == head + original[q]
