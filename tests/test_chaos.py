"""Chaos: qsup is killed with SIGKILL at random moments and restarted; in the end
every message is in exactly one place, none was delivered twice, and every poison
message is in quarantine (CONTRACT §5.1).

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

pytestmark = pytest.mark.timeout(600)

MESSAGES, POISON, KILLS = 5000, 12, 10


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
