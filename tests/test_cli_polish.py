"""The command line a person expects (issue 14, item 6): global options anywhere,
flags named like their keys with their defaults shown, list filters and paging,
a live status, completion and a man page, output that is not cramped in a pipe, a
demo that says how to look at what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import DEMO

from quarantine.config import FIELDS

pytestmark = pytest.mark.timeout(120)


def run(*args: str, cwd, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real qsup, with exactly the arguments given (no --state put first)."""
    return subprocess.run([sys.executable, "-m", "quarantine", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(cwd), env={**os.environ, **(env or {})})


def squeezed(text: str) -> str:
    """*text* without whitespace: help wraps lines (at spaces and after hyphens)."""
    return "".join(text.split())


# ------------------------------------------------------------- global options
def test_state_and_config_go_before_or_after_the_command(qsup, make_spool, tmp_path):
    ids = make_spool(20, {4: "segv"})
    state = str(tmp_path / "after")
    cfg = tmp_path / "qsup.toml"
    cfg.write_text(f"worker = '{DEMO}'\nworkers = 2\n")
    drained = run("drain", "--spool", str(qsup.spool), "--state", state, "--config", str(cfg), "--json",
                  cwd=tmp_path)
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout)["quarantined"] == 1
    assert os.path.isdir(state) and not qsup.state.exists()
    listed = run("list", "--json", "--state", state, cwd=tmp_path)
    assert [r["qid"] for r in json.loads(listed.stdout)] == [ids[4]]
    for args in (["show", ids[4]], ["status"], ["plugins"]):
        proc = run(*args, "--state", state, "--config", str(cfg), cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr)
    assert ids[4] in run("show", ids[4], "--state", state, cwd=tmp_path).stdout
    # after the command beats before it
    proc = run("--state", str(tmp_path / "nowhere"), "list", "--state", state, cwd=tmp_path)
    assert proc.returncode == 0 and ids[4] in proc.stdout, proc.stderr
    released = run("release", ids[4], "--state", state, cwd=tmp_path)
    assert released.returncode == 0, released.stderr
    assert (qsup.spool / "incoming" / ids[4]).exists()


def test_every_command_takes_the_global_options_after_its_name():
    from click.testing import CliRunner

    from quarantine.cli import cli

    for name in cli.commands:
        out = CliRunner().invoke(cli, [name, "--help"]).output
        assert "--state DIR" in out and "--config FILE" in out, name


# ------------------------------------------------------- flags and defaults
def test_flags_are_named_like_their_keys_and_show_their_defaults():
    from click.testing import CliRunner

    from quarantine.cli import cli

    for command in ("drain", "run", "release", "purge"):
        text = squeezed(CliRunner().invoke(cli, [command, "--help"]).output)
        for f in FIELDS:
            assert f.flag == "--" + f.name.replace("_", "-")
            assert f"{f.flag}" in text, (command, f.name)
            assert squeezed(f"[default: {f.shown_default}]") in text.split(f.flag, 1)[1], (command, f.name)
    by_name = {f.name: f for f in FIELDS}
    assert by_name["workers"].shown_default == "5" and by_name["timeout"].shown_default == "30"
    assert by_name["max_rss_mb"].aliases == ("--max-rss",)


@pytest.mark.parametrize("flag", ["--max-rss-mb", "--max-rss"])
def test_max_rss_mb_and_its_old_spelling_both_work(qsup, make_spool, flag):
    make_spool(10, {2: "memory"})
    proc = qsup.drain("--worker", DEMO, flag, "200", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    [rec] = qsup.listing()
    assert rec["why"] == "memory"


def test_a_bad_value_names_the_flag_of_the_key(qsup):
    proc = qsup("drain", "--max-rss-mb", "0")
    assert proc.returncode == 2 and "--max-rss-mb" in proc.stderr
