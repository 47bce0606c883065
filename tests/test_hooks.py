"""The hooks: each one documented, each one called; a plugin that raises in an event
hook is reported and qsup goes on delivering."""

from __future__ import annotations

import inspect
import json

import pytest
from conftest import DEMO, assert_conserved, plugin_dist

from quarantine import hookspecs

pytestmark = pytest.mark.timeout(120)

HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("qsup_") and callable(fn)]


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc) > 40, f"{name} needs a docstring saying when it fires and what it means"


@pytest.fixture
def event_plugin(tmp_path):
    """A distribution whose hooks record every event to a file, or raise."""
    source = (
        "import json, os\n"
        "from quarantine.hookspecs import hookimpl\n\n"
        "def note(kind, **data):\n"
        "    with open(os.environ['EVENTS'], 'a') as fh:\n"
        "        fh.write(json.dumps({'kind': kind, **data}) + '\\n')\n"
        "    if os.environ.get('EVENTS_RAISE'):\n"
        "        raise RuntimeError('notification service is down')\n\n"
        "@hookimpl\ndef qsup_verdict(qid, verdict, queue):\n    note('verdict', qid=qid, verdict=verdict)\n\n"
        "@hookimpl\ndef qsup_quarantined(record):\n    note('quarantined', qid=record['qid'])\n\n"
        "@hookimpl\ndef qsup_breaker(state, reason):\n    note('breaker', state=state)\n")
    env = plugin_dist(tmp_path, "qsup_events", {"events": "qsup_events"}, {"qsup_events": source})
    events = tmp_path / "events"
    return {**env, "EVENTS": str(events)}, events


@pytest.mark.parametrize("raising", [False, True], ids=["recording", "raising"])
def test_event_hooks_fire_once_per_message_and_a_raising_plugin_does_not_stop_qsup(
        qsup, make_spool, event_plugin, raising):
    env, events = event_plugin
    if raising:
        env = {**env, "EVENTS_RAISE": "1"}
    ids = make_spool(40, {7: "segv"})
    proc = qsup("drain", "--spool", str(qsup.spool), "--worker", DEMO, "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    where = assert_conserved(qsup.spool, ids)
    assert where["quarantine"] == {ids[7]} and len(where["outgoing"]) == 39
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    verdicts = [e["qid"] for e in seen if e["kind"] == "verdict"]
    assert sorted(verdicts) == sorted(set(ids) - {ids[7]})  # once per delivered message
    assert [e["qid"] for e in seen if e["kind"] == "quarantined"] == [ids[7]]
    if raising:
        errors = [ln for ln in proc.stderr.splitlines() if "hook failed" in ln]
        assert 1 <= len(errors) <= 6  # rate-capped: not one line per message
        assert "notification service is down" in errors[0]
