"""The command line as users and scripts see it (docs/reference.md §2, §3, §6)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import time

import pytest
from conftest import DEMO, assert_conserved

pytestmark = pytest.mark.timeout(120)


def test_odd_entries_in_incoming_are_left_alone_and_reported_once(qsup, make_spool, tmp_path):
    ids = make_spool(20, {})
    incoming = qsup.spool / "incoming"
    secret = tmp_path / "secret"
    secret.write_text("X-Demo-Poison: segv\n\nnot yours\n")
    os.symlink(secret, incoming / "LINK1")
    (incoming / "adir").mkdir()
    (incoming / "..x").write_text("dots")
    (incoming / "with space").write_text("space")
    (incoming / "new\nline").write_text("newline")
    os.mkfifo(incoming / "FIFO1")
    before = {n: os.lstat(incoming / n) for n in os.listdir(incoming) if n not in ids}
    atime = os.stat(secret).st_atime
    proc = qsup.drain("--worker", DEMO, "--poll-interval", "0.1")
    assert proc.returncode == 0, proc.stderr
    for name, st in before.items():
        now = os.lstat(incoming / name)
        assert (now.st_ino, now.st_mode) == (st.st_ino, st.st_mode), name
    assert os.stat(secret).st_atime == atime  # the symlink's target was never read
    for name, why in (("LINK1", "symlink"), ("adir", "directory"), ("..x", "not a queue ID"),
                      ("with space", "not a queue ID"), ("FIFO1", "FIFO"), ("new\\nline", "not a queue ID")):
        lines = [ln for ln in proc.stderr.splitlines() if name in ln]
        assert len(lines) == 1, (name, proc.stderr)
        assert why in lines[0]
    where = assert_conserved(qsup.spool, ids)
    assert where["outgoing"] == set(ids)


def test_release_puts_it_back_and_purge_needs_yes(qsup, make_spool):
    ids = make_spool(30, {3: "segv"})
    assert qsup.drain("--worker", DEMO).returncode == 0
    bad = ids[3]
    qfile = qsup.spool / "quarantine" / bad
    assert stat.S_IMODE(os.stat(qfile).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(qsup.spool / "quarantine").st_mode) == 0o700

    refused = qsup("purge", bad, "--spool", str(qsup.spool))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert qfile.exists()

    released = qsup("release", bad, "--spool", str(qsup.spool))
    assert released.returncode == 0, released.stderr
    assert (qsup.spool / "incoming" / bad).exists() and not qfile.exists()
    assert qsup.listing() == []

    assert qsup.drain("--worker", DEMO).returncode == 0  # still poison: back in quarantine
    assert qfile.exists()
    gone = qsup("purge", bad, "--yes", "--spool", str(qsup.spool))
    assert gone.returncode == 0, gone.stderr
    assert not qfile.exists() and qsup.listing() == []
    missing = qsup("release", "NOPE1", "--spool", str(qsup.spool))
    assert missing.returncode == 2 and "NOPE1" in missing.stderr


def test_show_lists_attempts_path_and_headers(qsup, make_spool):
    ids = make_spool(30, {12: "abort"})
    assert qsup.drain("--worker", DEMO + " --no-progress", "--batch-size", "30").returncode == 0
    shown = qsup("show", ids[12], "--json")
    assert shown.returncode == 0, shown.stderr
    item = json.loads(shown.stdout)[0]
    attempts = item["history"]["attempts"]
    assert [a["size"] for a in attempts][0] == 30 and attempts[-1]["size"] == 1
    assert all(a["signal"] == "SIGABRT" and a["pid"] > 0 for a in attempts)
    assert item["record"]["path"][0] == "30" and item["record"]["headers"]["Subject"]
    text = qsup("show", ids[12]).stdout
    assert "SIGABRT" in text and "Subject:" in text
    # the path that isolated it: from the batch of 30, through the parts it was split into, to alone
    assert re.search(r"bisection 30( -> \d+)+ -> 1\b", text), text


def test_release_while_the_daemon_runs(qsup, make_spool):
    ids = make_spool(10, {2: "segv"})
    daemon = subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--worker", DEMO,
                                        "--poll-interval", "0.2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (qsup.spool / "quarantine" / ids[2]).exists():
            assert time.monotonic() < deadline, "never quarantined"
            time.sleep(0.1)
        status = qsup("status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
        rel = qsup("release", ids[2], "--no-scan")
        assert rel.returncode == 0, rel.stderr
        assert (qsup.spool / "outgoing" / ids[2]).exists()
    finally:
        daemon.terminate()
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert_conserved(qsup.spool, ids)


def test_a_second_qsup_on_the_same_state_exits_4(qsup, make_spool):
    make_spool(5, {})
    daemon = subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--worker", DEMO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        second = qsup.drain("--worker", DEMO)
        assert second.returncode == 4
        assert "in use by another qsup" in second.stderr
    finally:
        daemon.terminate()
        daemon.communicate(timeout=30)


@pytest.mark.parametrize("content,key", [
    ("workers = 'five'\n", "workers"),
    ("batch_size = -3\n", "batch_size"),
    ("colour = 'blue'\n", "colour"),
    ("timeout = true\n", "timeout"),
    ("worker_mode = 'sometimes'\n", "worker_mode"),
])
def test_bad_config_exits_2_naming_the_key(qsup, tmp_path, content, key):
    cfg = tmp_path / "qsup.toml"
    cfg.write_text(content)
    proc = qsup("--config", str(cfg), "drain", "--spool", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_bad_flag_exits_2(qsup):
    proc = qsup("drain", "--workers", "0")
    assert proc.returncode == 2 and "workers" in proc.stderr


def test_help_documents_exit_codes_and_commands(qsup):
    out = qsup("--help").stdout
    for word in ("demo", "drain", "run", "list", "show", "release", "purge", "status", "Exit codes", "breaker"):
        assert word in out
    drain_help = qsup("drain", "--help").stdout
    for flag in ("--spool", "--worker", "--workers", "--batch-size", "--timeout", "--max-rss",
                 "--strikes", "--max-wait", "--json"):
        assert flag in drain_help


def test_unwritable_state_exits_4(qsup, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    (tmp_path / "s").mkdir()
    proc = qsup("--state", str(blocker / "sub"), "drain", "--spool", str(tmp_path / "s"), "--worker", DEMO)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr


def test_list_without_state_says_so(qsup):
    proc = qsup("list")
    assert proc.returncode == 4 and "no qsup state" in proc.stderr


def test_python_dash_m_and_version(qsup):
    proc = qsup("--version")
    assert proc.returncode == 0 and "qsup" in proc.stdout


def test_config_file_is_found_in_the_working_directory(qsup, make_spool):
    ids = make_spool(5, {})
    (qsup.state.parent / "qsup.toml").write_text(
        f"spool = '{qsup.spool}'\nworker = '{DEMO}'\nworkers = 1\n")
    proc = qsup("drain")
    assert proc.returncode == 0, proc.stderr
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)


def test_socket_in_incoming_is_reported(qsup, make_spool):
    make_spool(3, {})
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(qsup.spool / "incoming" / "SOCK1"))
    try:
        proc = qsup.drain("--worker", DEMO)
    finally:
        sock.close()
    assert proc.returncode == 0 and "SOCK1" in proc.stderr and "socket" in proc.stderr


def test_every_config_key_is_a_flag_and_a_config_attribute(tmp_path):
    import dataclasses

    from click.testing import CliRunner

    from quarantine.cli import cli
    from quarantine.config import BY_NAME, FIELDS, Config, load

    assert [f.name for f in FIELDS] == [f.name for f in dataclasses.fields(Config)][:-3]
    assert list(BY_NAME) == [f.name for f in FIELDS]
    assert {f.type for f in FIELDS} == {str, int, float, tuple}  # tuple: a list-valued key (scanners)
    help_text = CliRunner().invoke(cli, ["drain", "--help"], terminal_width=200).output
    for f in FIELDS:
        assert f.flag in help_text and f.flag == "--" + f.name.replace("_", "-")
    path = tmp_path / "qsup.toml"
    path.write_text('workers = 3\ntimeout = 2\n[plugin.x]\nk = "v"\n')
    config = load(str(path), {"batch_size": 7})
    assert (config.workers, config.timeout, config.batch_size, config.strikes) == (3, 2.0, 7, 2)
    changed = dataclasses.replace(config, strikes=5)
    assert changed.strikes == 5 and changed.plugin_options("x") == {"k": "v"} and changed.source == str(path)
    assert config.given == {"workers", "timeout", "batch_size", "plugin.x"}  # not the defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 1  # type: ignore[misc]


def test_the_demo_display_is_drawn_from_the_snapshot_alone():
    from rich.console import Console

    from quarantine.demo import progress_table

    snap = {"workers": [{"size": 20}, {"size": 1}], "suspects": 3, "awaiting_canary": 1,
            "breaker": {"state": "open", "reason": "canary died"},
            "counters": {"delivered": 40, "crashes": 5}}  # a Counter's zeros are absent
    console = Console(width=100, record=True, color_system=None)
    console.print(progress_table(snap, 100))
    text = console.export_text()
    for row in ("40/100", "delivered │ 40 ", "quarantined │ 0 ", "worker crashes │ 5 ",
                "in flight │ 21 in 2 batch(es)", "suspects │ 4 ", "breaker │ open: canary died"):
        assert row in text, (row, text)
