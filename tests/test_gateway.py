"""Ready for a gateway (issue 13): no scanner by accident, verdicts acted on, scanners
chained. The spool queue here; the Postfix path is in tests/realsys/."""

from __future__ import annotations

import os

import pytest
from conftest import DEMO, spool_counts

pytestmark = pytest.mark.timeout(120)


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
