"""examples/mailscanner: the scanner really segfaults on the crafted message, and
`qsup drain` with the example config quarantines exactly the crafted messages."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from quarantine.config import FIELDS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mailscanner"
SCANNER = EXAMPLE / "scanner.py"
BACKLOG = EXAMPLE / "make_backlog.py"
CONFIG = EXAMPLE / "qsup.toml"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux mmap/mprotect")

_spec = importlib.util.spec_from_file_location("mailscanner_make_backlog", BACKLOG)
make_backlog = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_backlog)


def env_with_status_fd(fd: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSUP_")}
    env["QSUP_STATUS_FD"] = str(fd)
    return env


def scan_one(path: Path, *options: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run scanner.py one-shot on one message; return the process and its status lines."""
    r, w = os.pipe()
    try:
        proc = subprocess.run([sys.executable, str(SCANNER), *options, str(path)],
                              env=env_with_status_fd(w), pass_fds=(w,), capture_output=True,
                              timeout=60)
    finally:
        os.close(w)
    with os.fdopen(r) as fh:
        lines = fh.read().splitlines()
    return proc, lines


def write(tmp_path: Path, name: str, kind: str, i: int = 1) -> Path:
    import random

    path = tmp_path / name
    path.write_bytes(make_backlog.make_message(i, random.Random(i), 1_700_000_000.0, kind))
    return path


def test_crafted_message_segfaults_for_real(tmp_path):
    path = write(tmp_path, "CRAFTED0001", "poison")
    proc, lines = scan_one(path)
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stderr[-500:])
    assert lines == ["begin CRAFTED0001"]  # begun, never done: qsup blames it at once
    assert b"Traceback" not in proc.stderr  # a real crash, not a Python exception


def test_normal_message_gets_a_verdict(tmp_path):
    path = write(tmp_path, "NORMAL0001", "plain")
    proc, lines = scan_one(path)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert lines == ["begin NORMAL0001", "done NORMAL0001 clean"]


@pytest.mark.parametrize("kind, verdict", [
    ("dangerous", "dangerous-attachment"),
    ("phishing", "phishing"),
    ("truncated", "malformed-mime"),  # malformed but harmless: no Content-Length
    ("html", "clean html=1"),
    ("forward", "clean"),
])
def test_verdicts(tmp_path, kind, verdict):
    path = write(tmp_path, "V" + kind.upper(), kind, i=3)
    proc, lines = scan_one(path)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert lines[-1].startswith(f"done V{kind.upper()} {verdict}"), lines


def test_checked_decoder_survives_the_crafted_message(tmp_path):
    path = write(tmp_path, "CRAFTED0002", "poison")
    proc, lines = scan_one(path, "--checked-decoder")
    assert proc.returncode == 0, proc.stderr[-500:]
    assert lines[-1] == "done CRAFTED0002 malformed-mime CloseBoundaryNotFoundDefect"


def test_example_config_keys_are_known():
    with open(CONFIG, "rb") as fh:
        data = tomllib.load(fh)
    table = data.get("qsup", data)
    known = {f.name for f in FIELDS}
    assert set(table) <= known, set(table) - known
    assert table["batch_size"] == 30


def test_drain_quarantines_exactly_the_crafted_messages(tmp_path):
    spool, state, manifest = tmp_path / "spool", tmp_path / "state", tmp_path / "manifest.json"
    out = subprocess.run([sys.executable, str(BACKLOG), str(spool), "--messages", "300",
                          "--poison", "5", "--manifest", str(manifest)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(manifest.read_text())
    ids, crafted = set(data["ids"]), set(data["poison"])
    assert len(ids) == 300 and len(crafted) == 5
    assert set(os.listdir(spool / "incoming")) == ids

    # The example config as an administrator runs it: from the top of the tree, with
    # the interpreter that has qsup first on PATH (the config says `python3 …`).
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSUP_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "quarantine", "--config", str(CONFIG), "--state", str(state),
         "drain", "--spool", str(spool), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)

    incoming = set(os.listdir(spool / "incoming"))
    outgoing = set(os.listdir(spool / "outgoing"))
    quarantined = set(os.listdir(spool / "quarantine"))
    assert quarantined == crafted, proc.stderr[-2000:]
    assert outgoing == ids - crafted
    assert incoming == set() and os.listdir(spool / "tmp") == []
    assert summary["quarantined"] == 5 and summary["delivered"] == 295
    assert summary["breaker"]["state"] == "closed"
    # with progress lines each crafted message costs at most `strikes` (2) crashes
    assert 5 <= summary["crashes"] <= 10
    assert summary["unexplained"] == 0

    listed = subprocess.run([sys.executable, "-m", "quarantine", "--state", str(state), "list", "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["qid"] for r in rows} == crafted
    assert all(r.get("signal") == "SIGSEGV" for r in rows), rows


def test_drain_persistent_mode(tmp_path):
    """The same scanner as long-lived workers (batches on stdin)."""
    spool, state = tmp_path / "spool", tmp_path / "state"
    ids, crafted = make_backlog.build_backlog(str(spool), 90, 2, seed=99)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSUP_")}
    proc = subprocess.run(
        [sys.executable, "-m", "quarantine", "--config", str(CONFIG), "--state", str(state),
         "drain", "--spool", str(spool), "--worker", f"{sys.executable} {SCANNER}",
         "--worker-mode", "persistent", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(os.listdir(spool / "quarantine")) == set(crafted)
    assert set(os.listdir(spool / "outgoing")) == set(ids) - set(crafted)
    assert os.listdir(spool / "incoming") == []
