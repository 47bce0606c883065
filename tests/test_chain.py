"""Scanner chains (config key `scanners`): each message through each link in order,
verdicts combined, and a crash or hang in any link pinned on the message it was
scanning. The links are real workers (tests/workers/chainlink.py) offered as scanner
kinds by a test plugin; what each does to a message is set in its headers."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from conftest import WORKERS, assert_conserved, plugin_dist

from quarantine.chain import combine

pytestmark = pytest.mark.timeout(60)

PLUGIN = f'''
import sys
from quarantine.hookspecs import hookimpl
from quarantine.scanner import CommandScanner

def kind(name):
    def make(config):
        mode = config.plugin_options("link-" + name).get("mode", "persistent")
        return CommandScanner([sys.executable, {str(WORKERS / "chainlink.py")!r}], mode=mode,
                              extra_env={{"LINK_NAME": name}}, name="link-" + name)
    return make

@hookimpl
def qsup_scanner_types():
    return {{"link-" + n: kind(n) for n in ("a", "b")}}
'''


@pytest.fixture
def links(tmp_path: Path) -> dict:
    """The environment that gives qsup the scanner kinds link-a and link-b."""
    env = plugin_dist(tmp_path, "qsup-chainlinks", {"chainlinks": "chainlinks"}, {"chainlinks": PLUGIN})
    return {**env, "CHAIN_LOG": str(tmp_path / "chain.log")}


def write_spool(spool: Path, headers: list[dict[str, str]]) -> list[str]:
    """One message per entry of *headers* (field -> value), oldest first."""
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, fields in enumerate(headers):
        qid = f"C{i:04d}"
        head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        (spool / "tmp" / qid).write_bytes(
            f"From: a{i}@example.org\r\nTo: b@example.org\r\nSubject: chain {i}\r\n{head}\r\nbody {i}\r\n".encode())
        os.rename(spool / "tmp" / qid, spool / "incoming" / qid)
        ids.append(qid)
    return ids


def drain(qsup, links, *args, timeout=50):
    proc = qsup("drain", "--spool", str(qsup.spool), "--json", "--scanners", "link-a",
                "--scanners", "link-b", *args, env=links, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def scans(links) -> list[tuple[str, int, str]]:
    """(link, pid, qid) of every scan, in the order they happened."""
    rows = [line.split() for line in Path(links["CHAIN_LOG"]).read_text().splitlines()]
    return [(name, int(pid), qid) for name, pid, qid in rows]


def by_message(rows) -> dict[str, list[str]]:
    seen = defaultdict(list)
    for name, _, qid in rows:
        seen[qid].append(name)
    return seen


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exported(qsup) -> dict[str, dict]:
    proc = qsup("export", "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["qid"]: row for row in json.loads(proc.stdout)}


def test_combine_infected_wins_then_spam_then_any_other_word():
    assert combine(["spam 9.0/5.0", "infected Eicar"]) == "infected Eicar"
    assert combine(["infected A", "infected B"]) == "infected A"
    assert combine(["ham 1.0/5.0", "spam 6.0/5.0"]) == "spam 6.0/5.0"
    assert combine(["clean", "unscanned too-big", "ham 0.1/5.0"]) == "unscanned too-big"
    assert combine(["clean", "ham 0.1/5.0"]) == "ham 0.1/5.0"
    assert combine(["", "clean"]) == "clean" and combine([]) == ""


@pytest.mark.parametrize("mode_a, mode_b", [("persistent", "persistent"), ("persistent", "oneshot"),
                                            ("oneshot", "oneshot")])  # the last: a one-shot chain
def test_each_message_goes_through_each_link_in_order(qsup, links, mode_a, mode_b):
    ids = write_spool(qsup.spool, [{}] * 12)
    drain(qsup, links, "--workers", "2", "--batch-size", "4", "--plugin-option", f"link-a.mode={mode_a}",
          "--plugin-option", f"link-b.mode={mode_b}")
    assert set(os.listdir(qsup.spool / "outgoing")) == set(ids)
    rows = scans(links)
    seen = by_message(rows)
    assert all(seen[qid] == ["a", "b"] for qid in ids), dict(seen)
    pids_b = {pid for name, pid, qid in rows if name == "b" and qid in ids}
    if mode_b == "oneshot":
        assert len(pids_b) == len(ids)  # a process per message
    else:
        assert len(pids_b) <= 2 + 1  # kept warm: one per chain worker (and a spare at most)


def test_verdicts_are_combined_and_infected_wins(qsup, links):
    cases = [({"X-Link-a": "spam 9.0/5.0", "X-Link-b": "infected Eicar"}, "infected Eicar"),
             ({"X-Link-a": "infected Marker", "X-Link-b": "spam 8.0/5.0"}, "infected Marker"),
             ({"X-Link-a": "ham 1.0/5.0"}, "ham 1.0/5.0"),
             ({"X-Link-b": "spam 7.5/5.0"}, "spam 7.5/5.0"),
             ({}, "clean")]
    ids = write_spool(qsup.spool, [fields for fields, _ in cases])
    drain(qsup, links, "--workers", "1", "--batch-size", "5")
    rows = exported(qsup)
    assert {qid: rows[qid]["verdict"] for qid in ids} == {qid: v for qid, (_, v) in zip(ids, cases)}
    assert {rows[qid]["scanner"] for qid in ids} == {"link-a+link-b"}  # the chain's identity


@pytest.mark.parametrize("mode", ["persistent", "oneshot"])  # of both links, so of the chain
def test_a_segfault_in_the_second_link_quarantines_only_that_message(qsup, links, mode):
    headers = [{}] * 24
    headers[17] = {"X-Link-b": "segv"}
    ids = write_spool(qsup.spool, headers)
    proc = drain(qsup, links, "--workers", "2", "--batch-size", "8", "--strikes", "2",
                 "--plugin-option", f"link-a.mode={mode}", "--plugin-option", f"link-b.mode={mode}")
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[17]}
    assert where["outgoing"] == set(ids) - {ids[17]}
    summary = qsup.summary(proc)
    assert summary["crashes"] <= 2  # the runner said `begin`: each crash is pinned, K at most
    (entry,) = qsup.listing()
    assert (entry["why"], entry["signal"]) == ("signal", "SIGSEGV"), entry
    rows = scans(links)
    # the canary ran through the whole chain, in order, before the quarantine
    assert by_message(rows)["qsup-canary"][:2] == ["a", "b"]
    assert not [pid for _, pid, _ in rows if alive(pid)], "a link outlived its chain"


def test_a_hang_in_a_link_is_a_timeout_of_that_message_and_leaves_no_link(qsup, links):
    headers = [{}] * 12
    headers[5] = {"X-Link-a": "hang"}
    ids = write_spool(qsup.spool, headers)
    drain(qsup, links, "--workers", "2", "--batch-size", "6", "--timeout", "1",
          "--plugin-option", "link-b.mode=oneshot")
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[5]}
    assert qsup.listing()[0]["why"] == "timeout"
    assert not [pid for _, pid, _ in scans(links) if alive(pid)], "a link outlived its chain"


def test_a_link_that_exits_non_zero_is_a_crash_of_that_message(qsup, links):
    headers = [{}] * 8
    headers[2] = {"X-Link-b": "exit"}
    ids = write_spool(qsup.spool, headers)
    drain(qsup, links, "--workers", "1", "--batch-size", "8", "--plugin-option", "link-b.mode=oneshot")
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[2]}
    entry = qsup.listing()[0]
    assert (entry["why"], entry["exit_code"]) == ("exit", 3), entry


@pytest.mark.parametrize("table, named", [
    ('scanners = ["link-a", "nosuch"]', "nosuch"),
    ('scanners = "link-a"', "scanners"),
    ('scanner = "link-b"\nscanners = ["link-a"]', "scanners"),
])
def test_a_bad_scanners_value_is_exit_2_with_one_line(qsup, links, tmp_path, table, named):
    write_spool(qsup.spool, [{}])
    config = tmp_path / "qsup.toml"
    config.write_text(table + "\n")
    proc = qsup("--config", str(config), "drain", "--spool", str(qsup.spool), env=links)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert os.listdir(qsup.spool / "incoming") == ["C0000"]


def test_a_bad_scanners_flag_is_exit_2_with_one_line(qsup, links):
    write_spool(qsup.spool, [{}])
    proc = qsup("drain", "--spool", str(qsup.spool), "--scanners", "link-a,nosuch", env=links)
    assert proc.returncode == 2 and "'nosuch'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
