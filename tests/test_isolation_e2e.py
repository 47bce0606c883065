"""End to end with real segfaulting workers: the acceptance of the core issue."""

from __future__ import annotations

import math

import pytest
from conftest import DEMO, assert_conserved

pytestmark = pytest.mark.timeout(400)


@pytest.mark.parametrize("progress", [False, True], ids=["blind", "progress"])
def test_backlog_with_poison_at_the_head(qsup, make_spool, progress):
    """3,000 messages, 30 poison at the head (a backlog, oldest first), 8 workers,
    batches of 30: innocents delivered, exactly the poison quarantined, nothing
    lost or duplicated, and the crash bound of docs/reference.md §5.5 holds."""
    poison = {i: "segv" for i in range(30)}
    ids = make_spool(3000, poison)
    worker = DEMO + ("" if progress else " --no-progress")
    proc = qsup.drain("--worker", worker, "--workers", "8", "--batch-size", "30",
                      "--storm-limit", "100", timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = qsup.summary(proc)
    where = assert_conserved(qsup.spool, ids)
    bad = {ids[i] for i in poison}
    assert where["quarantine"] == bad
    assert where["outgoing"] == set(ids) - bad
    assert not where["incoming"]
    bound = 30 * 2 if progress else 30 * (math.ceil(math.log2(30)) + 2)
    assert summary["crashes"] <= bound, summary
    assert summary["quarantined"] == 30 and summary["delivered"] == 2970
    listed = {row["qid"]: row for row in qsup.listing()}
    assert set(listed) == bad
    assert all(row["why"] == "signal" and row["signal"] == "SIGSEGV" for row in listed.values())


def test_default_storm_limit_pauses_but_still_finishes(qsup, make_spool):
    """With the default storm limit (10), 15 poison messages open the breaker once;
    the canary passes, it closes by itself and the drain completes."""
    poison = {i * 7: "segv" for i in range(15)}
    ids = make_spool(200, poison)
    proc = qsup.drain("--worker", DEMO, "--workers", "4", "--batch-size", "20", timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[i] for i in poison}
    assert "breaker open: storm" in proc.stderr
    assert "breaker closed" in proc.stderr
