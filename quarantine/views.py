"""How qsup's state reads to a person: the quarantine of ``qsup list`` and ``qsup
demo``, the status of ``qsup status`` (and its live view), and the times, sizes and
reasons ``qsup show`` prints. Selecting and formatting only: no state, no I/O
(:func:`console` only decides how wide output is).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

KINDS = ("poison", "infected", "spam", "orphan")  # of a quarantine record; none is poison
LIST_LIMIT = 100  # rows `qsup list` shows unless told otherwise
PIPE_WIDTH = 120  # columns of tables written to a pipe or a file, unless $COLUMNS says


def console(**kwargs):
    """A rich Console as wide as the terminal, or, without one (a pipe, a file, a
    mail from cron), $COLUMNS or 120 columns, not rich's cramped 80."""
    from rich.console import Console

    if "width" not in kwargs and not sys.stdout.isatty():
        columns = os.environ.get("COLUMNS", "")
        kwargs["width"] = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return Console(**kwargs)


def format_when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def format_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_ending(ending: str | None, signal: str | None = None, exit_code: int | None = None) -> str:
    """How a worker run ended, said once: ``exit 3``, ``signal SIGSEGV``, ``killed
    (SIGKILL)``, ``timeout``, ``memory``."""
    ending = ending or "?"
    if ending == "exit":
        return f"exit {exit_code}" if exit_code is not None else "exit"
    if ending == "signal" and signal:
        return f"signal {signal}"
    if signal:
        return f"{ending} ({signal})"
    if exit_code is not None:
        return f"{ending} (exit {exit_code})"
    return ending


def format_why(rec: dict) -> str:
    """The crash kind, with its signal or exit code, and the peak of a memory kill."""
    why = rec.get("why", "?")
    if rec.get("kind") == "orphan":  # found in the quarantine without a record
        return f"orphan ({why})"
    if rec.get("kind") in ("infected", "spam"):  # the scanner's verdict, not a crash
        detail = (rec.get("verdict") or "").partition(" ")[2].strip()
        return f"{rec['kind']} ({detail})" if detail else rec["kind"]
    why = format_ending(why, rec.get("signal"), rec.get("exit_code"))
    if why.startswith("memory") and rec.get("peak_rss"):
        why += f" peak {format_size(rec['peak_rss'])}"
    return why


def format_path(path: list[str] | tuple[str, ...] | None) -> str:
    """How a message was isolated, from the batch sizes it went through: a real
    bisection (``bisection 30 -> 15 -> 8 -> 4 -> 2 -> 1``), straight from a batch to
    alone (progress lines named it, or every suspect ran alone), or alone from the
    start. Empty when there is nothing to say."""
    path = [str(p) for p in path or ()]
    if not path:
        return ""
    if path == ["1"]:
        return "alone from the start"
    if len(path) == 2 and path[-1] == "1":
        return f"from a batch of {path[0]} straight to alone (no bisection)"
    return "bisection " + " -> ".join(path)


# ---------------------------------------------------------------------- list
def kind_of(rec: dict) -> str:
    return rec.get("kind") or "poison"


def select(rows: list[dict], kind: str = "all", since: float | None = None) -> list[dict]:
    """The records of *kind* (``all`` for every one) quarantined at or after *since*."""
    return [r for r in rows if (kind == "all" or kind_of(r) == kind)
            and (since is None or (r.get("when") or 0) >= since)]


def quarantine_table(rows: list[dict], title: str | None = None):
    """A rich Table of quarantine records (as ``quarantine.ops.records`` gives them)."""
    from rich.table import Table

    table = Table(title=title or f"Quarantine ({len(rows)})", title_justify="left")
    for col in ("ID", "when", "why", "strikes", "size", "sender", "subject"):
        table.add_column(col, overflow="fold")
    for rec in rows:
        table.add_row(rec["qid"], format_when(rec.get("when")), format_why(rec), str(rec.get("strikes", "?")),
                      format_size(rec.get("size", 0)), rec.get("sender", ""), rec.get("subject", ""))
    return table


def format_evidence(evidence: dict | None, when: float | None) -> list[str]:
    """The lines of ``qsup show`` that say why a quarantine was judged beyond chance:
    the crashes, the environment's crash rate, and the run that proved it sound."""
    if not evidence:
        return []
    lines = [f"evidence {evidence.get('crashes', '?')} solo crash(es); the environment's crash rate "
             f"{evidence.get('crash_rate', 0):.2g} per scan over {evidence.get('scans', 0)} scan(s)"
             + (f", {evidence['run_crash_rate']:.2g} per run over {evidence.get('runs', 0)} run(s)"
                if "run_crash_rate" in evidence else "") + "; "
             f"chance {evidence.get('chance', 0):.2g} (convicts below {evidence.get('alpha', 0):.2g})"]
    proof = evidence.get("proof") or {}
    if proof:
        started = when - proof["seconds_before"] if when and "seconds_before" in proof else None
        pid = f" on worker pid {proof['pid']}" if proof.get("pid") else ""
        lines.append(f"proof    {proof.get('by', '?')} {proof.get('run', '')}{pid} passed, started "
                     f"{format_when(started)}")
    return lines


def filters_text(kind: str, since: float | None) -> str:
    said = ([f"kind {kind}"] if kind != "all" else []) + ([f"since {format_when(since)}"] if since else [])
    return ", ".join(said)


def list_title(shown: int, matching: int, offset: int, kind: str, since: float | None) -> str:
    what = filters_text(kind, since)
    title = f"Quarantine{': ' + what if what else ''} ({matching})"
    if shown < matching:
        first = offset + 1
        title += f", {first}-{offset + shown} shown" if shown else f", none shown past {offset}"
    return title


def more_line(shown: int, matching: int, offset: int) -> str:
    """The line under a page of the list: how many more, and how to see them."""
    rest = matching - offset - shown
    if rest <= 0:
        return ""
    return (f"{rest} more not shown: qsup list --offset {offset + shown} for the next ones, "
            f"--limit 0 for all, --kind or --since to narrow.")


# -------------------------------------------------------------------- status
def status_lines(out: dict) -> list[str]:
    """``qsup status`` as text, from what the command read (``--json`` prints *out*)."""
    snap, recovery, holder = out["last"], out["recovery"], out["pid"]
    lines = [f"qsup: {'running, pid ' + str(holder) if holder else 'not running'}"
             f" (status of {format_when(snap.get('updated'))})"]
    br = snap.get("breaker") or {}
    line = f"breaker: {br.get('state', '?')}"
    if br.get("state") == "open":
        line += f" since {format_when(br.get('since_wall'))}: {br.get('reason')}"
    lines.append(line)
    lines.append(f"queue depth: {snap.get('queue_depth', '?')}, suspects: {snap.get('suspects', 0)}, "
                 f"awaiting canary: {snap.get('awaiting_canary', 0)}, quarantined: {out['quarantined']}, "
                 f"throughput: {snap.get('throughput', 0)} msg/s")
    workers = snap.get("workers") or []
    lines.append(f"workers busy: {len(workers)}")
    for w in workers:
        lines.append(f"  pid {w['pid']}  batch {w['batch']}  {w['lane']} lane  {w['size']} message(s)  "
                     f"age {w['age']}s")
    counters = snap.get("counters") or {}
    if counters:
        lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    if recovery:
        lines.append(f"last recovery at {format_when(recovery.get('at'))}: {recovery.get('why', '')}; "
                     f"{recovery.get('messages', 0)} message(s) in {recovery.get('batches', 0)} batch(es), "
                     f"{recovery.get('intents', 0)} interrupted move(s) finished, "
                     f"{recovery.get('killed_workers', 0)} stale worker(s) killed")
    return lines


def status_view(out: dict, now: float):
    """The live view of ``qsup status --watch``, like the demo's: a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    snap, holder = out["last"], out["pid"]
    counts = snap.get("counters") or {}
    age = f", {now - snap['updated']:.0f}s ago" if snap.get("updated") else ""
    head = Text.from_markup(f"[bold]qsup status[/]: {'running, pid ' + str(holder) if holder else 'not running'}"
                            f" (as of {format_when(snap.get('updated'))}{age}; Ctrl-C ends this view)")
    table = Table(show_header=False)
    table.add_column(justify="right")
    table.add_column()
    br = snap.get("breaker") or {}
    state = br.get("state", "?")
    table.add_row("breaker", state if state in ("closed", "?") else
                  f"[red]{state} since {format_when(br.get('since_wall'))}: {br.get('reason')}[/]")
    workers = snap.get("workers") or []
    table.add_row("queue depth", str(snap.get("queue_depth", "?")))
    table.add_row("in flight", f"{sum(w['size'] for w in workers)} in {len(workers)} batch(es)")
    table.add_row("suspects", f"{snap.get('suspects', 0)}, awaiting canary {snap.get('awaiting_canary', 0)}")
    table.add_row("throughput", f"{snap.get('throughput', 0)} msg/s")
    table.add_row("delivered", str(counts.get("delivered", 0)))
    table.add_row("quarantined", f"[red]{out['quarantined']}[/]" if out["quarantined"] else "0")
    table.add_row("worker crashes", str(counts.get("crashes", 0)))
    parts = [head, table]
    if workers:
        busy = Table(title="workers busy", title_justify="left")
        for col in ("pid", "batch", "lane", "messages", "age"):
            busy.add_column(col, justify="right" if col in ("pid", "messages", "age") else "left")
        for w in workers:
            busy.add_row(str(w["pid"]), str(w["batch"]), str(w["lane"]), str(w["size"]), f"{w['age']}s")
        parts.append(busy)
    return Group(*parts)
