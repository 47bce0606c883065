"""The state directory and a real Postfix hold queue: bound to that queue, lost state
found as orphans, a message deleted outside qsup never costs its record (docs/reference.md §3;
issue 12, findings 3 and 4)."""

from __future__ import annotations

import shutil

import harness
import pytest
from test_postfix_e2e import SCANNER, message, submit_many, write_config

pytestmark = [pytest.mark.realsys, pytest.mark.timeout(150)]


@pytest.fixture
def pf(tmp_path):
    with harness.postfix_instance(tmp_path / "postfix") as instance:
        yield instance


def test_postfix_state_is_bound_lost_state_is_found_and_records_are_kept(pf, qsup, tmp_path):
    qdir = write_config(tmp_path, pf)  # qsup.toml in qsup's working directory
    ids = submit_many(pf, [message(i, i in (3, 11, 17)) for i in range(20)])
    pf.wait_hold_count(20, timeout=60)
    poison = sorted({ids[3], ids[11], ids[17]})
    run = qsup("drain", "--json")
    assert run.returncode == 0, run.stderr
    assert {r["qid"] for r in qsup.listing()} == set(poison)

    # Another queue named: refused, nothing touched.
    other = qsup("release", "--all", "--queue", "spool", "--spool", str(tmp_path / "other"))
    assert other.returncode == 2 and "postfix queue" in other.stderr, other.stderr
    assert not (tmp_path / "other").exists() and pf.hold_ids() == poison

    # The state lost: the next drain finds the quarantined messages as orphans.
    shutil.rmtree(qsup.state)
    run = qsup("drain", "--json")
    assert run.returncode == 0, run.stderr
    said = [ln for ln in run.stderr.splitlines() if "orphan" in ln]
    assert len(said) == 1 and "found 3 " in said[0], run.stderr
    rows = {r["qid"]: r for r in qsup.listing()}
    assert set(rows) == set(poison) and all(r["kind"] == "orphan" for r in rows.values())
    assert rows[ids[3]]["subject"] == "poison 3"

    # An orphan is released like any quarantined message: scanned again, delivered.
    out = qsup("release", ids[3])
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"qsup: released {ids[3]}: back in the queue to be scanned again\n"
    again = qsup("drain", "--json", "--worker", f"{SCANNER} --fixed")
    assert again.returncode == 0 and qsup.summary(again)["delivered"] == 1, again.stderr
    harness.wait_until(lambda: ids[3] not in pf.hold_ids(), 30, what="the release")

    # Deleted from hold outside qsup: release says so and keeps record, claim and copy.
    pf.run("postsuper", "-d", ids[11], "hold")
    out = qsup("release", ids[11])
    assert out.returncode == 4 and "missing" in out.stderr, (out.stdout, out.stderr)
    assert ids[11] in {r["qid"] for r in qsup.listing()}
    assert (qdir / ids[11]).exists() and (qdir / ".claims" / ids[11]).exists()
    out = qsup("release", ids[11])  # and again: the copy, the only one left, stays
    assert out.returncode == 4 and (qdir / ids[11]).exists()
    assert qsup("purge", ids[11], "--yes").returncode == 0
    assert {r["qid"] for r in qsup.listing()} == {ids[17]} and not (qdir / ids[11]).exists()
