"""How quarantine records read to a person: the table of ``qsup list`` and of
``qsup demo``, and the times, sizes and reasons ``qsup show`` and ``qsup status`` print.
Formatting only: no state, no I/O.
"""

from __future__ import annotations

from datetime import datetime


def format_when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def format_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_why(rec: dict) -> str:
    """The crash kind, with its signal or exit code, and the peak of a memory kill."""
    why = rec.get("why", "?")
    if rec.get("kind") == "orphan":  # found in the quarantine without a record
        return f"orphan ({why})"
    if rec.get("signal"):
        why += f" ({rec['signal']})"
    elif rec.get("exit_code") is not None:
        why += f" (exit {rec['exit_code']})"
    if why.startswith("memory") and rec.get("peak_rss"):
        why += f" peak {format_size(rec['peak_rss'])}"
    return why


def quarantine_table(rows: list[dict]):
    """A rich Table of quarantine records (as ``quarantine.ops.records`` gives them)."""
    from rich.table import Table

    table = Table(title=f"Quarantine ({len(rows)})", title_justify="left")
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
             f"{evidence.get('crash_rate', 0):.2g} per scan over {evidence.get('scans', 0)} scan(s); "
             f"chance {evidence.get('chance', 0):.2g} (convicts below {evidence.get('alpha', 0):.2g})"]
    proof = evidence.get("proof") or {}
    if proof:
        started = when - proof["seconds_before"] if when and "seconds_before" in proof else None
        pid = f" on worker pid {proof['pid']}" if proof.get("pid") else ""
        lines.append(f"proof    {proof.get('by', '?')} {proof.get('run', '')}{pid} passed, started "
                     f"{format_when(started)}")
    return lines
