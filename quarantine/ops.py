"""Operator actions on the quarantine: list, show, release, purge.

Release and purge change state, so they run inside the process that holds the
state directory: directly when no qsup runs, or handed to the running daemon
through ``STATE/requests/`` (see :func:`submit_request`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from quarantine import journal, moves
from quarantine.errors import EXIT_STATE, NotFound, QueueError, StateError
from quarantine.hookspecs import Queue
from quarantine.ids import is_queue_id
from quarantine.store import Store

log = logging.getLogger("qsup")


def records(store: Store) -> list[dict]:
    with store.read() as r:
        rows = [dict(rec, key=key) for key, rec in r.items("quarantine")]
    return sorted(rows, key=lambda rec: rec.get("when", 0), reverse=True)


def find(store: Store, qid: str) -> list[dict]:
    """Quarantine records of *qid* (several if the ID was reused), newest first."""
    if not is_queue_id(qid):
        raise NotFound(f"{qid!r} is not a queue ID")
    with store.read() as r:
        found = [dict(rec, key=key) for key, rec in r.items("quarantine", prefix=f"{qid}:")]
    return sorted(found, key=lambda rec: rec.get("when", 0), reverse=True)


def details(store: Store, qid: str) -> list[dict]:
    """Everything ``qsup show`` prints: the record, every attempt kept, the path; and
    the journal's entries of the message (its deliveries, releases …), oldest first,
    on each item (or on one item of its own, keyed by the bare ID, when the message
    has no record: a delivered one)."""
    if not is_queue_id(qid):
        raise NotFound(f"{qid!r} is not a queue ID")
    trail = [dict(_jsonable(row), note=entry.get("note", ""))
             for row, entry in journal.of_message(store, qid)]
    out = []
    with store.read() as r:
        quarantined = {key: rec for key, rec in r.items("quarantine", prefix=f"{qid}:")}
        for key, hist in r.items("history", prefix=f"{qid}:"):
            rec = quarantined.pop(key, None)
            out.append({"key": key, "quarantined": rec is not None, "record": rec or {},
                        "history": hist})
        for key, rec in quarantined.items():
            out.append({"key": key, "quarantined": True, "record": rec, "history": {}})
    if not out and trail:
        out.append({"key": qid, "quarantined": False, "record": {}, "history": {}})
    if not out:
        raise NotFound(f"{qid}: no quarantine record, no crash history and no journal entry")
    for item in out:
        item["journal"] = trail
    return sorted(out, key=lambda d: d["record"].get("when", 0), reverse=True)


def _jsonable(row: journal.Row) -> dict:
    return {f: getattr(row, f) for f in row.__slots__}


def _select(store: Store, ids: list[str], everything: bool) -> list[dict]:
    if everything:
        return records(store)
    chosen = []
    for qid in ids:
        found = find(store, qid)
        if not found:
            raise NotFound(f"{qid} is not in the quarantine")
        chosen += found
    return chosen


@dataclass
class Done:
    """What a release or purge did, a line each, and what it could not do (each an
    error line; the command then exits 4)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    released: int = 0  # messages put back or handed on (the metrics count them)

    def to_json(self) -> dict:
        return {"lines": self.lines, "problems": self.problems, "released": self.released}


def _present(queue: Queue) -> Callable[[str], bool]:
    """Is a quarantined file of that name in *queue*? (Yes if the queue cannot list
    its quarantine: the move finds out.)"""
    names = getattr(queue, "quarantine_names", None)
    if names is None:
        return lambda name: True
    found = set(names())
    return found.__contains__


def _missing(rec: dict) -> str:
    qid, name = rec["qid"], rec.get("name", rec["qid"])
    return (f"{qid}: its quarantined file {name} is missing from the queue; nothing released, "
            f"the record is kept (qsup purge {qid} --yes removes it)")


def release(store: Store, queue: Queue, ids: list[str], everything: bool, no_scan: bool) -> Done:
    """Put quarantined messages back into the queue (or straight on, with no_scan).
    A record whose file is missing stays: only purge removes it."""
    done, present = Done(), _present(queue)
    for rec in _select(store, ids, everything):
        name = rec.get("name", rec["qid"])
        if not present(name):
            done.problems.append(_missing(rec))
            continue
        dest = "outgoing" if no_scan else "incoming"
        mv = queue.plan(rec["qid"], rec["fp"], dest, origin="quarantine", source=name)
        result = moves.move(store, queue, f"release/{rec['key']}", [mv], time.time())[0]
        if result == "gone":  # the record stays (moves.complete keeps it)
            done.problems.append(_missing(rec))
            continue
        with store.write() as w:
            journal.Journal.operator(w, time.time(), "released", rec, "no scan" if no_scan else "")
        named = f" as {mv.name}" if mv.name != rec["qid"] else ""
        where = (f"delivered without a scan{named} (--no-scan)" if no_scan
                 else f"back in the queue{named} to be scanned again")
        done.lines.append(f"qsup: released {rec['qid']}: {where}")
        done.released += 1
    return done


def purge(store: Store, queue: Queue, ids: list[str], everything: bool) -> Done:
    """Delete quarantined messages for good: the only place qsup deletes mail."""
    done = Done()
    for rec in _select(store, ids, everything):
        existed = queue.purge(rec.get("name", rec["qid"]))
        with store.write() as w:
            w.delete("quarantine", rec["key"])
            journal.Journal.operator(w, time.time(), "purged", rec)
        gone = f" (its quarantined file {rec.get('name', rec['qid'])} was already gone; record removed)"
        done.lines.append(f"qsup: purged {rec['qid']}" + ("" if existed else gone))
    return done


# ------------------------------------------------------------ daemon requests
# A request is STATE/requests/NAME.req, written by the client with its deadline. The
# daemon takes it by renaming it to NAME.work, runs it and answers in NAME.ans. A
# client that gives up withdraws it by renaming NAME.req away: of the two renames
# exactly one wins, so a request reported as timed out never runs later (§5.9). If
# the daemon won, the client waits for its answer instead. The deadline covers a
# client that died waiting: the daemon answers a request past it without running it.
WAIT = 30.0  # seconds a client waits for the daemon to take its request


def requests_dir(state: str) -> str:
    return os.path.join(state, "requests")


def _answer(path: str) -> dict | None:
    try:
        with open(path) as fh:
            result = json.load(fh)
    except FileNotFoundError:
        return None
    os.unlink(path)
    return result


def submit_request(state: str, request: dict, timeout: float = WAIT) -> dict:
    """Hand a release/purge to the running qsup and wait for its answer. If it has
    not taken the request within *timeout* seconds, withdraw it (StateError)."""
    folder = requests_dir(state)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    holder = Store.holder(state)
    name = uuid.uuid4().hex
    base = os.path.join(folder, name)
    with open(f"{folder}/.{name}.tmp", "w") as fh:
        json.dump({**request, "deadline": time.time() + timeout}, fh)
    os.rename(f"{folder}/.{name}.tmp", f"{base}.req")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (result := _answer(f"{base}.ans")) is not None:
            return result
        time.sleep(0.05)
    try:
        os.rename(f"{base}.req", f"{folder}/.{name}.withdrawn")
    except FileNotFoundError:  # the daemon took it meanwhile: it will answer
        return _await_answer(state, base, holder, timeout)
    os.unlink(f"{folder}/.{name}.withdrawn")
    raise StateError(f"the running qsup (pid {holder}) did not answer within {timeout:g}s; "
                     f"the request is withdrawn and nothing was done")


def _await_answer(state: str, base: str, holder: int | None, timeout: float) -> dict:
    """The answer to a request the daemon took: it comes however long the work takes,
    unless the daemon stops first."""
    if (result := _answer(f"{base}.ans")) is not None:
        return result
    log.warning("the running qsup (pid %s) took the request after %gs; waiting for its answer",
                holder, timeout)
    while (result := _answer(f"{base}.ans")) is None:
        if Store.holder(state) != holder:
            if (result := _answer(f"{base}.ans")) is not None:
                return result
            raise StateError(f"the running qsup (pid {holder}) took the request but stopped before "
                             f"answering; it may have been carried out in part (see qsup list)")
        time.sleep(0.05)
    return result


def serve_requests(state: str, store: Store, queue: Queue, stats: Counter | None = None,
                   on_retest: Callable[[], str] | None = None) -> int:
    """Run the requests waiting in STATE/requests (called by the daemon's loop);
    *stats* counts the messages released; *on_retest* answers ``qsup retest``."""
    folder = requests_dir(state)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".req"))
    except FileNotFoundError:
        return 0
    served = 0
    for name in names:
        base = os.path.join(folder, name[:-4])
        try:
            os.rename(f"{base}.req", f"{base}.work")
        except FileNotFoundError:
            continue  # withdrawn by its client
        served += 1
        result = _serve(f"{base}.work", store, queue, on_retest)
        if stats is not None:
            stats["released"] += result.get("released", 0)
        with open(f"{base}.tmp", "w") as fh:
            json.dump(result, fh)
        os.rename(f"{base}.tmp", f"{base}.ans")
        os.unlink(f"{base}.work")
    return served


def _serve(path: str, store: Store, queue: Queue, on_retest: Callable[[], str] | None = None) -> dict:
    name = os.path.basename(path)
    try:
        with open(path) as fh:
            req = json.load(fh)
        if time.time() > float(req.get("deadline", math.inf)):
            log.warning("request %s is past its deadline (its client gave up): not carried out", name)
            return {"ok": False, "code": EXIT_STATE,
                    "error": "the running qsup took the request past its deadline; nothing was done"}
        if req.get("op") == "retest":
            return {"ok": True, **Done(lines=[on_retest() if on_retest else "qsup: re-test is not "
                                              "served by this qsup"]).to_json()}
        return {"ok": True, **execute(store, queue, req).to_json()}
    except (NotFound, QueueError) as exc:  # a refused move says why; the daemon goes on
        return {"ok": False, "error": str(exc), "code": exc.exit_code}
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return {"ok": False, "error": f"bad request {name}: {exc}", "code": 2}


def execute(store: Store, queue: Queue, req: dict) -> Done:
    ids, everything = list(req.get("ids", [])), bool(req.get("all"))
    if req["op"] == "release":
        return release(store, queue, ids, everything, bool(req.get("no_scan")))
    if req["op"] == "purge":
        return purge(store, queue, ids, everything)
    raise ValueError(f"unknown operation {req['op']!r}")
