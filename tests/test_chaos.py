"""Chaos: qsup is killed with SIGKILL at random moments and restarted; in the end
every message is in exactly one place, none was delivered twice, and every poison
message is in quarantine (docs/reference.md §5.1).

Repeat with a given seed:  QSUP_CHAOS_SEED=1234 pytest tests/test_chaos.py -s
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from conftest import DEMO, assert_conserved

from quarantine.errors import StateError
from quarantine.store import Store

pytestmark = pytest.mark.timeout(600)

MESSAGES, POISON, KILLS = 5000, 12, 10


def in_flight_by(state, pid: int) -> bool:
    """Whether qsup *pid* has recorded a batch in flight. Records left by the qsup
    killed before it stay in `batches` until its recovery clears them: they are
    not this one's, so only records naming *pid* count."""
    if not os.path.exists(os.path.join(state, "data.mdb")):
        return False  # the first round: the state does not exist yet
    try:
        store = Store(str(state), readonly=True)
    except StateError:
        return False  # created, but its databases are not yet
    try:
        with store.read() as r:
            return any(rec.get("qsup") == pid for _, rec in r.items("batches"))
    finally:
        store.close()


def wait_in_flight(qsup, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the drain has a batch in flight or has exited: a kill before its first
    batch would test nothing, and a slow machine can spend a second getting there."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not in_flight_by(qsup.state, proc.pid):
        assert time.monotonic() < deadline, f"no batch in flight after {timeout:.0f}s"
        time.sleep(0.01)


def test_kill_dash_nine_at_random_moments(qsup, make_spool):
    seed = int(os.environ.get("QSUP_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"chaos seed {seed} (repeat with QSUP_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    kinds = ["segv", "abort", "exit", "segv"]
    poison = {i: rng.choice(kinds) for i in rng.sample(range(MESSAGES), POISON)}
    ids = make_spool(MESSAGES, poison)
    argv = qsup.argv("drain", "--spool", str(qsup.spool), "--worker", DEMO + " --delay 0.003",
                     "--workers", "6", "--batch-size", "30", "--storm-limit", "100", "--json")
    kills = 0
    while kills < KILLS:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_in_flight(qsup, proc)
        time.sleep(rng.uniform(0.2, 1.2))
        if proc.poll() is not None:
            break  # drained before the kill: nothing left to break
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        kills += 1
        assert_conserved(qsup.spool, ids)  # also true between crashes
    final = subprocess.run(argv, capture_output=True, text=True, timeout=400)
    assert final.returncode == 0, f"seed {seed}: {final.stderr[-3000:]}"
    where = assert_conserved(qsup.spool, ids)
    bad = {ids[i] for i in poison}
    print(f"killed {kills} times")
    assert kills == KILLS, f"seed {seed}: the drain finished after only {kills} kills"
    assert where["quarantine"] == bad, f"seed {seed}"
    assert where["outgoing"] == set(ids) - bad, f"seed {seed}: delivered twice or wrongly"
    assert not where["incoming"], f"seed {seed}"
    status = qsup("status", "--json")
    assert '"recovery"' in status.stdout and "died with" in status.stdout


def _quarantined_and_listed(qsup) -> tuple[set[str], set[str]]:
    files = set(os.listdir(qsup.spool / "quarantine"))
    listed = {rec["qid"] for rec in qsup.listing()}
    return files, listed


def test_kill_dash_nine_during_release_all_and_purge_all(qsup, make_spool):
    """kill -9 of `release --all` and of `purge --all --yes` at random moments: no
    message is in two places or lost, no record outlives its file or is dropped
    while its file stays, and the next command finishes what the killed one began."""
    seed = int(os.environ.get("QSUP_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"chaos seed {seed} (repeat with QSUP_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    count, bad = 140, 90
    ids = make_spool(count, {i: "segv" for i in range(bad)})
    drain = ["--worker", DEMO, "--worker-mode", "persistent", "--workers", "4", "--batch-size", "10",
             "--strikes", "1", "--storm-limit", "100000"]  # one crash quarantines: a quick drain
    proc = qsup.drain(*drain, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    poison = set(ids[:bad])
    assert set(os.listdir(qsup.spool / "quarantine")) == poison

    def killed(*args: str) -> None:
        for _ in range(12):
            p = subprocess.Popen(qsup.argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.15, 0.5))  # the interpreter's start-up, then the moves
            p.kill()
            p.wait()
            assert_conserved(qsup.spool, sorted(set(ids) - purged))

    purged: set[str] = set()
    killed("release", "--all")
    done = qsup("release", "--all")
    assert done.returncode == 0, f"seed {seed}: {done.stderr[-2000:]}"
    files, listed = _quarantined_and_listed(qsup)
    assert not files and not listed, f"seed {seed}: {sorted(files)[:5]} {sorted(listed)[:5]}"
    assert set(os.listdir(qsup.spool / "incoming")) >= poison

    proc = qsup.drain(*drain, timeout=300)  # quarantined again: still poison
    assert proc.returncode == 0, proc.stderr[-2000:]
    files, listed = _quarantined_and_listed(qsup)
    assert files == listed == poison, f"seed {seed}"
    purged = poison
    killed("purge", "--all", "--yes")
    done = qsup("purge", "--all", "--yes")
    assert done.returncode == 0, f"seed {seed}: {done.stderr[-2000:]}"
    files, listed = _quarantined_and_listed(qsup)
    assert not files and not listed, f"seed {seed}"
    where = assert_conserved(qsup.spool, sorted(set(ids) - poison))
    assert where["outgoing"] == set(ids) - poison
