"""The command line a person expects (issue 14, item 6): global options anywhere,
flags named like their keys with their defaults shown, list filters and paging,
a live status, completion and a man page, output that is not cramped in a pipe, a
demo that says how to look at what it did."""

from __future__ import annotations

import json
import os
import shutil
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


# ----------------------------------------------------------------- list
def write_records(state, records: list[dict], status: dict | None = None) -> None:
    """Quarantine records as qsup writes them (the fields `list` reads), in *state*."""
    from quarantine.store import Store

    store = Store(str(state))
    try:
        with store.write() as w:
            for rec in records:
                w.put("quarantine", f"{rec['qid']}:fp{rec['qid']}", rec)
            if status is not None:
                w.put("meta", "status", status)
    finally:
        store.close()


def record(qid: str, when: float, **extra) -> dict:
    return {"qid": qid, "when": when, "why": "signal", "signal": "SIGSEGV", "exit_code": None,
            "strikes": 2, "size": 900, "sender": f"{qid.lower()}@example.org", "subject": f"About {qid}",
            **extra}


@pytest.fixture
def mixed(qsup):
    """One of each kind, an hour apart, newest first: P1 (poison, no kind), I1, S1, O1,
    then 250 old poison records (days old)."""
    import time

    now = time.time()
    recs = [record("P1", now - 60), record("I1", now - 3600 - 60, kind="infected", why="Eicar-Test"),
            record("S1", now - 2 * 3600 - 60, kind="spam", why="spam 9.1/5"),
            record("O1", now - 3 * 3600 - 60, kind="orphan", why="no record: state lost or reset")]
    recs += [record(f"OLD{i:03d}", now - 3 * 86400 - i) for i in range(250)]
    write_records(qsup.state, recs)
    return recs


def listed(qsup, *args: str) -> list[str]:
    proc = qsup("list", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return [r["qid"] for r in json.loads(proc.stdout)]


def test_list_kind_filters_and_a_record_without_kind_is_poison(qsup, mixed):
    assert listed(qsup, "--kind", "infected") == ["I1"]
    assert listed(qsup, "--kind", "spam") == ["S1"]
    assert listed(qsup, "--kind", "orphan") == ["O1"]
    poison = listed(qsup, "--kind", "poison")
    assert poison[0] == "P1" and len(poison) == 251 and "I1" not in poison
    assert len(listed(qsup, "--kind", "all")) == len(listed(qsup)) == 254
    bad = qsup("list", "--kind", "virus")
    assert bad.returncode == 2 and "virus" in bad.stderr


@pytest.mark.parametrize("since,expected", [
    ("30m", ["P1"]), ("2h", ["P1", "I1"]), ("1h30m", ["P1", "I1"]), ("1d", ["P1", "I1", "S1", "O1"])])
def test_list_since_a_duration(qsup, mixed, since, expected):
    assert listed(qsup, "--since", since) == expected


def test_list_since_an_iso_time_and_a_bad_one(qsup, mixed):
    from datetime import datetime, timedelta

    cut = (datetime.now() - timedelta(minutes=90)).isoformat(timespec="seconds")
    assert listed(qsup, "--since", cut) == ["P1", "I1"]
    assert listed(qsup, "--since", cut, "--kind", "spam") == []
    bad = qsup("list", "--since", "last tuesday")
    assert bad.returncode == 2 and "last tuesday" in bad.stderr and "2h" in bad.stderr


def test_list_pages_long_lists_and_says_how_many_more(qsup, mixed):
    text = qsup("list").stdout
    assert "P1" in text and "OLD095" in text and "OLD096" not in text  # the newest 100
    assert "154 more not shown" in text and "--offset 100" in text
    nxt = qsup("list", "--offset", "100", "--limit", "10").stdout
    assert "OLD096" in nxt and "OLD105" in nxt and "OLD106" not in nxt and "144 more" in nxt
    everything = qsup("list", "--limit", "0").stdout
    assert "OLD249" in everything and "more not shown" not in everything
    assert len(listed(qsup)) == 254  # --json: all, unless --limit is given
    assert listed(qsup, "--limit", "2") == ["P1", "I1"]
    assert listed(qsup, "--limit", "2", "--offset", "1") == ["I1", "S1"]
    nothing = qsup("list", "--kind", "spam", "--since", "30m")
    assert nothing.returncode == 0 and "Nothing matches (kind spam, since" in nothing.stdout
    assert "254" in nothing.stdout


def test_tables_are_not_cramped_without_a_terminal(qsup, mixed):
    text = qsup("list", "--limit", "3", env={"COLUMNS": ""}).stdout  # a pipe, and no $COLUMNS (xdist sets one)
    widths = {len(line) for line in text.splitlines() if line.startswith(("┏", "│", "└"))}
    assert widths and max(widths) > 80
    assert any("p1@example.org" in line and "About P1" in line for line in text.splitlines())
    narrow = qsup("list", "--limit", "3", env={"COLUMNS": "60"}).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 60


# ------------------------------------------------------------ status --watch
def snapshot(depth: int) -> dict:
    import time

    return {"pid": 1, "mode": "run", "updated": time.time(), "queue_depth": depth, "suspects": 1,
            "awaiting_canary": 0, "throughput": 12.5, "workers": [
                {"pid": 4321, "batch": "b-7", "lane": "normal", "size": 30, "age": 1.5}],
            "breaker": {"state": "closed", "reason": ""}, "counters": {"delivered": 900, "crashes": 3}}


def read_until(fd: int, needle: str, seen: list[str], timeout: float = 20.0) -> None:
    import select
    import time

    deadline = time.monotonic() + timeout
    while needle not in "".join(seen):
        assert time.monotonic() < deadline, f"never saw {needle!r} in {''.join(seen)[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty whose other side closed
                chunk = b""
            assert chunk, f"output ended before {needle!r}: {''.join(seen)[-2000:]!r}"
            seen.append(chunk.decode("utf-8", "replace"))


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "pty"])
def test_status_watch_redraws_from_the_snapshot_and_ctrl_c_exits_0(qsup, terminal):
    import signal

    write_records(qsup.state, [record("P1", 1.0)], status=snapshot(77))
    argv = qsup.argv("status", "--watch", "--interval", "0.2")
    if terminal:
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, cwd=str(qsup.state.parent))
        os.close(slave)
        fd = master
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(qsup.state.parent))
        fd = proc.stdout.fileno()
    seen: list[str] = []
    try:
        for word in ("qsup status", "breaker", "closed", "queue depth", "77", "900", "4321", "b-7"):
            read_until(fd, word, seen)  # a frame may come in several reads
        write_records(qsup.state, [], status=snapshot(4242))
        read_until(fd, "4242", seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        if terminal:
            os.close(master)
    assert b"Traceback" not in proc.stderr.read()


def test_status_watch_and_json_do_not_go_together(qsup):
    write_records(qsup.state, [], status=snapshot(1))
    proc = qsup("status", "--watch", "--json")
    assert proc.returncode == 2 and "--watch" in proc.stderr


# ---------------------------------------------------------------------- demo
def test_the_demo_keeps_its_spool_and_state_and_says_how_to_look(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run("demo", "--messages", "40", cwd=tmp_path, env={"TMPDIR": str(tmp)}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    [base] = list(tmp.iterdir())
    assert base.name.startswith("qsup-demo-")
    state = base / "state"
    lines = proc.stdout.splitlines()
    assert any(f"Kept in {base}" in ln for ln in lines), proc.stdout
    assert any(f"qsup --state {state} list" in ln for ln in lines)
    [show] = [ln.split("#")[0].split() for ln in lines if f"qsup --state {state} show" in ln]
    assert f"rm -r {base}" in proc.stdout
    quarantined = sorted(os.listdir(base / "spool" / "quarantine"))
    assert len(quarantined) == 10 and show[-1] in quarantined
    # the printed commands work as printed
    listed = run(*show[1:3], "list", "--json", cwd=tmp_path)
    assert sorted(r["qid"] for r in json.loads(listed.stdout)) == quarantined
    shown = run(*show[1:], cwd=tmp_path)
    assert shown.returncode == 0 and show[-1] in shown.stdout and "attempts" in shown.stdout


def test_the_demo_cleans_up_when_asked_and_refuses_a_used_directory(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = run("demo", "--messages", "20", "--clean", cwd=tmp_path, env={"TMPDIR": str(tmp)}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp.iterdir()) == [] and "Removed" in proc.stdout
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    for flag in ("--dir", "--keep"):
        refused = run("demo", flag, str(used), cwd=tmp_path)
        assert refused.returncode == 2 and "not empty" in refused.stderr
    assert os.listdir(used) == ["something"]


# ------------------------------------------------------------------ wording
def test_show_says_each_ending_once_and_how_the_message_was_isolated(qsup, make_spool):
    ids = make_spool(20, {5: "exit"})
    assert qsup.drain("--worker", DEMO, "--batch-size", "20").returncode == 0
    text = qsup("show", ids[5]).stdout
    assert "exit exit" not in text and "exit 3" in text, text
    assert "path     bisection" not in text and "from a batch of 20 straight to alone (no bisection)" in text, text
    # strikes as README and the example config say: with progress lines the batch
    # crash that names the message is its first strike, the crash alone the last
    attempts = json.loads(qsup("show", ids[5], "--json").stdout)[0]["history"]["attempts"]
    assert [(a["size"], a["strike"]) for a in attempts] == [(20, True), (1, True)]
    listing = qsup("list").stdout
    assert "exit 3" in listing and "exit (exit" not in listing


def test_show_of_a_message_that_was_alone_from_the_start(qsup, make_spool):
    ids = make_spool(4, {1: "segv"})
    assert qsup.drain("--worker", DEMO, "--batch-size", "1").returncode == 0
    text = qsup("show", ids[1]).stdout
    assert "alone from the start" in text and "bisection" not in text, text
    assert "signal SIGSEGV" in text and "path   STRIKE" not in text


# ------------------------------------------------- completion and man page
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANPAGE = os.path.join(ROOT, "docs", "qsup.8")
REFERENCE = os.path.join(ROOT, "docs", "reference.md")


def test_shell_completion_as_documented(tmp_path):
    script = run(cwd=tmp_path, env={"_QSUP_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "_qsup_completion" in script.stdout and "complete " in script.stdout

    def complete(words: str) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        proc = run(cwd=tmp_path, env={"_QSUP_COMPLETE": "bash_complete", "COMP_WORDS": words,
                                      "COMP_CWORD": str(cword)})
        assert proc.returncode == 0, proc.stderr
        return [line.split(",", 1)[1] for line in proc.stdout.splitlines()]

    assert complete("qsup dr") == ["drain"]
    assert complete("qsup list --kind ") == ["poison", "infected", "spam", "orphan", "all"]
    assert set(complete("qsup drain --max-r")) == {"--max-rss-mb", "--max-rss"}
    assert "--state" in complete("qsup status --st")  # the global options after the command too
    for doc in (MANPAGE, REFERENCE, os.path.join(ROOT, "README.md")):
        with open(doc) as fh:
            assert "_QSUP_COMPLETE=bash_source qsup" in fh.read().replace("\\-", "-"), doc


def test_the_man_page_is_what_the_code_would_write():
    from quarantine.cli import cli
    from quarantine.manpage import page

    with open(MANPAGE) as fh:
        assert fh.read() == page(cli), "docs/qsup.8 is stale: python -m quarantine.manpage > docs/qsup.8"


def test_the_man_page_names_every_command_and_option():
    import click

    from quarantine.cli import cli

    with open(MANPAGE) as fh:
        text = fh.read().replace("\\-", "-").replace("\\e", "\\")
    for opt in (o for p in cli.params if isinstance(p, click.Option) for o in p.opts):
        assert opt in text, opt
    for name, cmd in cli.commands.items():
        assert f'.SS "qsup {name} ' in text, name
        for param in cmd.params:
            for opt in [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]:
                if opt.startswith("-"):
                    assert opt in text, (name, opt)
    for f in FIELDS:
        assert f"Key \\fB{f.name}\\fR" in text.replace("\\\\fB", "\\fB"), f.name
    for section in ("EXIT STATUS", "CONFIGURATION", "SHELL COMPLETION", "FILES", "ENVIRONMENT"):
        assert f".SH {section}" in text


@pytest.mark.skipif(not shutil.which("man"), reason="man not installed (apt-get install man-db groff)")
def test_the_man_page_renders_without_warnings():
    proc = subprocess.run(["man", "--warnings", "-l", MANPAGE], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert "qsup - a poison-message quarantine supervisor" in " ".join(proc.stdout.replace("‐", "-").split())


# ------------------------------------------------------------- the reference
def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def test_the_key_tables_of_the_reference_are_current():
    from quarantine import reference

    text = read(REFERENCE)
    assert reference.update(text) == text, "docs/reference.md is stale: python -m quarantine.reference"
    keys = text.split("<!-- BEGIN KEYS", 1)[1].split("<!-- END KEYS -->", 1)[0]
    for f in FIELDS:
        row = next(line for line in keys.splitlines() if line.startswith(f"| `{f.name}` |"))
        assert f.flag in row and f.type_name in row and f.shown_default in row, row
    assert reference.main(["--check", REFERENCE]) == 0


def test_the_reference_covers_the_command_line_and_the_contract():
    from quarantine.cli import cli

    text = read(REFERENCE)
    for name in cli.commands:
        assert f"| `qsup {name}" in text, name
    for code in ("`0`", "`2`", "`3`", "`4`"):
        assert f"| {code} |" in text
    for metric in ("qsup_messages_total", "qsup_worker_crashes_total", "qsup_queue_depth_messages",
                   "qsup_inflight_messages", "qsup_quarantine_messages", "qsup_breaker_open",
                   "qsup_canary_runs_total"):
        assert f"`{metric}`" in text, metric
    for word in ("QSUP_BATCH_ID", "QSUP_STATUS_FD", "QSUP_PERSISTENT", "`begin ID`", "end BATCH_ID",
                 "SPOOL/incoming/", "SPOOL/quarantine/", "--kind", "--since", "--watch", "--max-rss-mb"):
        assert word in text, word
    assert "docs/reference.md" in read(os.path.join(ROOT, "README.md"))


def _sections(text: str) -> set[str]:
    import re

    found = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))
    guarantees = text.split("## 5. Guarantees", 1)[1].split("\n## ", 1)[0]
    found |= {f"5.{n}" for n in re.findall(r"^ ?(\d+)\. \*\*", guarantees, re.M)}
    return found


def test_every_citation_of_the_reference_names_a_section_of_it():
    import re

    sections = _sections(read(REFERENCE))
    assert {"2", "2.3", "3", "4", "5.1", "5.10", "6", "8"} <= sections
    cited, gone = {}, "CONTRACT" + " §"  # (so that this file does not cite it)
    for top in ("quarantine", "plugins", "tests", "docs"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith((".py", ".md")):
                    path = os.path.join(folder, name)
                    text = read(path)
                    assert gone not in text, f"{path} cites a file the project does not have"
                    for ref in re.findall(r"docs/reference\.md §(\d+(?:\.\d+)?)", text):
                        cited.setdefault(ref, path)
                    for more in re.findall(r"docs/reference\.md §[\d.]+((?:, §\d+(?:\.\d+)?)+)", text):
                        for ref in re.findall(r"§(\d+(?:\.\d+)?)", more):
                            cited.setdefault(ref, path)
    assert cited and not {ref: path for ref, path in cited.items() if ref not in sections}
