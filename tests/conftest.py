"""Shared helpers: real spools, real workers, qsup run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quarantine.demo import build_spool

HERE = Path(__file__).parent
WORKERS = HERE / "workers"
DEMO = f"{sys.executable} -m quarantine.demo_scanner"


def spool_counts(spool: Path) -> dict[str, set[str]]:
    return {sub: set(os.listdir(spool / sub)) for sub in ("incoming", "outgoing", "quarantine")}


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def assert_conserved(spool: Path, ids: list[str]) -> dict[str, set[str]]:
    """Every message in exactly one of incoming/, outgoing/, quarantine/."""
    where = spool_counts(spool)
    everywhere = [n for names in where.values() for n in names]
    assert len(everywhere) == len(set(everywhere)), "a message is in two places"
    assert set(everywhere) >= set(ids), f"lost: {sorted(set(ids) - set(everywhere))[:10]}"
    return where


def plugin_dist(tmp: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> dict:
    """A distribution on PYTHONPATH whose `qsup` entry points name *modules* (module
    name -> source). Returns the environment that makes qsup find it."""
    site = tmp / "site"
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[qsup]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


class Qsup:
    """Runs the real `qsup` console entry point as a subprocess."""

    def __init__(self, tmp: Path):
        self.state = tmp / "state"
        self.spool = tmp / "spool"

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "quarantine", "--state", str(self.state), *args]

    def __call__(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=str(self.state.parent))
        # Whatever the test is about, qsup answers in one line, never with a traceback.
        assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr[-3000:]
        return proc

    def drain(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return self("drain", "--spool", str(self.spool), "--json", *args, timeout=timeout)

    def summary(self, proc: subprocess.CompletedProcess) -> dict:
        return json.loads(proc.stdout[proc.stdout.index("{"):])

    def listing(self) -> list[dict]:
        proc = self("list", "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def qsup(tmp_path: Path) -> Qsup:
    return Qsup(tmp_path)


@pytest.fixture
def make_spool(qsup: Qsup):
    def make(count: int, poison: dict[int, str]) -> list[str]:
        return build_spool(str(qsup.spool), count, poison)

    return make
