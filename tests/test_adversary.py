"""What attacking qsup found: each finding reproduced with real processes, then
fixed. Nothing is lost, nobody innocent is blamed, nothing hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import WORKERS, assert_conserved, wait_for

from quarantine.demo import build_spool
from quarantine.store import Store

pytestmark = pytest.mark.timeout(180)


def py(worker: str) -> str:
    return f"{sys.executable} {WORKERS / worker}"


def inflight(state) -> int:
    if not (state / "data.mdb").exists():
        return 0
    store = Store(str(state), readonly=True)
    try:
        with store.read() as r:
            return r.count("batches")
    finally:
        store.close()


def long_id_spool(spool, count: int) -> list[str]:
    """Messages with 120-character IDs, so a batch's lines outgrow a pipe."""
    ids = build_spool(str(spool), count, {})
    renamed = []
    for qid in ids:
        new = (qid + "-" + "x" * 120)[:120]
        os.rename(spool / "incoming" / qid, spool / "incoming" / new)
        renamed.append(new)
    return renamed


def test_a_persistent_worker_that_never_reads_its_batch_does_not_block_qsup(qsup):
    """Finding 7: 1,500 IDs of 120 characters with their paths are ~400 KB, far more
    than a pipe holds. qsup must not block in the write: the batch is a hang caught
    by its deadline, and a SIGTERM stops qsup within its grace."""
    ids = long_id_spool(qsup.spool, 1500)
    proc = subprocess.Popen(qsup.argv("drain", "--spool", str(qsup.spool), "--worker", py("never_reads.py"),
                                      "--worker-mode", "persistent", "--workers", "1",
                                      "--batch-size", "1500", "--grace", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: inflight(qsup.state) or proc.poll() is not None, 30, "a batch in flight")
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - sent < 15, "SIGTERM took too long: qsup was blocked"
    assert proc.returncode == 0, err[-2000:]
    where = assert_conserved(qsup.spool, ids)
    assert not where["quarantine"]
