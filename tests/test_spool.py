"""The spool queue's listing: oldest first, bounded, and in slices for a deep queue."""

from __future__ import annotations

import os
import random

from conftest import DEMO, assert_conserved

from quarantine.reports import Reports
from quarantine.spool import SpoolQueue


def test_listing_in_slices_is_the_oldest_first_listing(tmp_path):
    (tmp_path / "spool").mkdir(exist_ok=True)
    queue = SpoolQueue(str(tmp_path / "spool"))
    incoming = tmp_path / "spool" / "incoming"
    rng = random.Random(5)
    names = [f"Q{i:05d}" for i in range(5000)]
    for name in names:
        path = incoming / name
        path.write_bytes(b"Subject: x\r\n\r\nx\r\n")
        t = 1_000_000_000 + rng.randrange(3000)  # ties on mtime are broken by name
        os.utime(path, (t, t))
    (incoming / "bad name").write_bytes(b"x")
    os.symlink("/etc/passwd", incoming / "Qlink")
    held = set(rng.sample(names, 700))
    skip = held.__contains__

    parts = list(queue.pending_steps(1200, skip, step=500))
    pauses = sum(part is None for part in parts)
    sliced = [ref.qid for part in parts if part for ref in part]
    expected = sorted((os.lstat(incoming / n).st_mtime, n) for n in names if n not in held)[:1200]

    assert pauses == len(names + ["bad name", "Qlink"]) // 500  # a pause every 500 entries
    assert all(len(part) <= 500 for part in parts if part)
    assert sliced == [n for _, n in expected]
    assert [ref.qid for ref in queue.pending(1200, skip)] == sliced
    reports = queue.reports()
    assert len(reports) == 2 and any("symlink" in r for r in reports)  # once each, not per listing


def test_a_deep_queue_listed_in_slices_is_drained_whole(qsup, make_spool):
    # Two workers of batch 5 keep 80 messages buffered and list the rest in slices
    # between batches: every message is scanned once and delivered.
    ids = make_spool(3000, {})
    proc = qsup.drain("--worker-mode", "persistent", "--worker", DEMO, "--workers", "2",
                      "--batch-size", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = assert_conserved(qsup.spool, ids)
    assert where["outgoing"] == set(ids)
    assert qsup.summary(proc)["delivered"] == len(ids)


def test_reports_say_each_key_once_and_remember_a_bounded_number(tmp_path):
    reports = Reports(cap=3)
    for _ in range(2):
        for key in ("a", "b", "a", "c", "d"):
            reports.add(key, f"{key} is odd")
    assert reports.take() == ["a is odd", "b is odd", "c is odd"]  # d: past the cap
    assert reports.take() == [] and "a" in reports and "d" not in reports

    (tmp_path / "spool").mkdir(exist_ok=True)
    queue = SpoolQueue(str(tmp_path / "spool"))
    os.mkfifo(tmp_path / "spool" / "incoming" / "FIFO1")
    for _ in range(2):
        queue.pending(10, lambda qid: False)
    assert queue.reports() == ["incoming/'FIFO1': is a FIFO, not a regular file; left alone"]
    assert queue.reports() == []
