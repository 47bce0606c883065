"""The audit trail (docs/reference.md §2.6, `export`): what happened to every message, in a
window of time, as `qsup export` and `qsup show` tell it."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import lmdb
import pytest
from conftest import DEMO

from quarantine import journal
from quarantine.errors import ConfigError
from quarantine.export import parse_time
from quarantine.hookspecs import Move
from quarantine.policy import Batch
from quarantine.store import DBS, LATER, Store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(tmp_path):
    st = Store(str(tmp_path / "state"))
    yield st
    st.close()


def _ended(batch_id: str, ids: list[str], verdicts: dict | None = None):
    return SimpleNamespace(batch_id=batch_id, batch=Batch(ids=tuple(ids)), verdicts=verdicts or {})


def _deliver(store: Store, t: float, batch_id: str, ids: list[str], **kw) -> None:
    planned = [Move(q, "fp", "outgoing", q) for q in ids]
    with store.write() as w:
        journal.Journal(lambda: "clamd 1.0").delivered(w, t, f"deliver/{batch_id}", planned,
                                                      [_ended(batch_id, ids, **kw)])


def test_a_window_is_a_cursor_range_read_in_chunks(store):
    t0 = 1_700_000_000.0
    for n in range(2 * journal.CHUNK + 100):  # more entries than one read transaction takes
        _deliver(store, t0 + n, f"b{n}", [f"Q{n}a", f"Q{n}b"], verdicts={f"Q{n}b": "spam 7.1/5"})
    got = [r for k, e in journal.entries(store, t0 + 10, t0 + 2010) for r in journal.rows(k, e)]
    assert len(got) == 2 * 2000 and got[0].qid == "Q10a" and got[-1].qid == "Q2009b"
    assert [r.time for r in got] == sorted(r.time for r in got)
    assert {r.verdict for r in got} == {"clean", "spam 7.1/5"} and got[0].scanner == "clamd 1.0"
    assert got[0].batch == "b10" and got[0].fate == "delivered"
    assert journal.prune(store, t0 + 1000) == 1000
    assert next(journal.entries(store))[0] == journal.key(t0 + 1000, "b1000")


def test_times_and_durations():
    now = 1_700_000_000.0
    assert parse_time("2h", now) == now - 7200
    assert parse_time("1d12h", now) == now - 86400 - 43200
    assert parse_time("90s", now) == now - 90
    assert parse_time("2026-03-01T14:00:00+00:00", now) == 1772373600.0
    with pytest.raises(ConfigError, match="--since"):
        parse_time("yesterday", now)


def test_show_and_export_tell_the_whole_life_of_a_message(qsup, make_spool):
    ids = make_spool(30, {4: "segv"})
    assert qsup.drain("--worker", DEMO).returncode == 0
    bad = ids[4]

    shown = qsup("show", ids[0], "--json")  # delivered: no record, no history, a journal entry
    assert shown.returncode == 0, shown.stderr
    item = json.loads(shown.stdout)[0]
    assert not item["quarantined"] and [r["fate"] for r in item["journal"]] == ["delivered"]
    assert item["journal"][0]["sender"] and item["journal"][0]["message_id"] == "<demo-0@example.org>"
    text = qsup("show", ids[0]).stdout
    assert "delivered" in text and "<demo-0@example.org>" in text and "batch " in text

    text = qsup("show", bad).stdout  # quarantined: the evidence and the proof behind it
    assert "evidence 2 solo crash(es)" in text and "chance" in text
    assert "proof    canary canary-" in text or "proof    a fresh worker" in text
    record = json.loads(qsup("show", bad, "--json").stdout)[0]["record"]
    assert record["evidence"]["proof"]["pid"] > 0 and record["headers"]["Message-Id"]

    assert qsup("release", bad).returncode == 0
    assert qsup("drain", "--spool", str(qsup.spool), "--worker", DEMO).returncode == 0  # poison again
    assert qsup("purge", bad, "--yes").returncode == 0
    rows = json.loads(qsup("export", "--json").stdout)
    mine = [r["fate"] for r in rows if r["qid"] == bad]
    assert mine == ["quarantined", "released", "quarantined", "purged"]
    assert all(r["sender"] and r["message_id"] for r in rows if r["qid"] == bad)
    assert len([r for r in rows if r["fate"] == "delivered"]) == 29
    since = json.loads(qsup("export", "--json", "--since", "1h", "--until",
                            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 60))).stdout)
    assert since == rows
    bad_flag = qsup("export", "--since", "last tuesday")
    assert bad_flag.returncode == 2 and "--since" in bad_flag.stderr


def test_a_state_from_before_the_journal_reads_as_an_empty_one(qsup, tmp_path):
    env = lmdb.open(str(qsup.state), max_dbs=len(DBS), subdir=True)
    with env.begin(write=True) as txn:
        for name in DBS:
            if name not in LATER:
                env.open_db(name.encode(), txn=txn)
        txn.put(b"schema", b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    listed = qsup("list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    out = qsup("export", "--json")
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_a_delivery_whose_message_vanished_is_said_to_have_not_happened(store):
    from quarantine import moves

    t = 1_700_000_000.0
    _deliver(store, t, "b1", ["Q1", "Q2"])
    planned = [Move(q, "fp", "outgoing", q) for q in ("Q1", "Q2")]
    with store.write() as w:
        moves.complete(w, "deliver/b1", planned, ["moved", "gone"], t + 1)
    fates = [(r.qid, r.fate) for k, e in journal.entries(store) for r in journal.rows(k, e)]
    assert fates == [("Q1", "delivered"), ("Q2", "delivered"), ("Q2", "vanished")]
