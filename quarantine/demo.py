"""`qsup demo`: a throw-away spool, real crashes, a live progress display."""

from __future__ import annotations

import os
import random
import shlex
import shutil
import tempfile
import time

from quarantine.config import demo_worker_command, load
from quarantine.errors import ConfigError

# (poison kind, how many) in a demo spool
POISON = (("segv", 4), ("abort", 2), ("memory", 2), ("hang", 1), ("exit", 1))


def make_message(i: int, poison: str | None = None, rng: random.Random | None = None) -> bytes:
    rng = rng or random.Random(i)
    words = ["invoice", "meeting", "report", "newsletter", "order", "holiday", "update", "offer"]
    subject = f"{rng.choice(words).title()} {i}"
    lines = [
        f"From: sender{i % 37}@example.org",
        f"To: user{i % 11}@example.net",
        f"Subject: {subject}",
        f"Date: Thu, 19 Nov 2026 10:{i % 60:02d}:00 +0000",
        f"Message-ID: <demo-{i}@example.org>",
    ]
    if poison:
        lines.append(f"X-Demo-Poison: {poison}")
    body = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def build_spool(root: str, count: int, poison: dict[int, str], start: float | None = None) -> list[str]:
    """Write *count* messages through tmp/ into incoming/ (maildir rule); message i
    is poison of kind poison[i]. Returns the IDs, oldest first."""
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    start = start if start is not None else time.time() - count
    ids = []
    for i in range(count):
        qid = f"M{i:06d}"
        tmp = os.path.join(root, "tmp", qid)
        with open(tmp, "wb") as fh:
            fh.write(make_message(i, poison.get(i)))
        os.utime(tmp, (start + i * 0.001, start + i * 0.001))
        os.rename(tmp, os.path.join(root, "incoming", qid))
        ids.append(qid)
    return ids


def progress_table(snap: dict, total: int):
    """The live table, from a Supervisor.snapshot()."""
    from rich.table import Table

    counts = snap["counters"]
    delivered, quarantined = counts.get("delivered", 0), counts.get("quarantined", 0)
    table = Table(title="qsup demo: draining", title_justify="left", show_header=False)
    table.add_column(justify="right")
    table.add_column()
    done = delivered + quarantined
    bar = int(30 * done / max(total, 1))
    table.add_row("progress", f"[green]{'█' * bar}[/]{'░' * (30 - bar)} {done}/{total}")
    table.add_row("delivered", str(delivered))
    table.add_row("quarantined", f"[red]{quarantined}[/]")
    table.add_row("worker crashes", str(counts.get("crashes", 0)))
    workers = snap["workers"]
    table.add_row("in flight", f"{sum(w['size'] for w in workers)} in {len(workers)} batch(es)")
    table.add_row("suspects", str(snap["suspects"] + snap["awaiting_canary"]))
    breaker = snap["breaker"]
    state = breaker["state"]
    table.add_row("breaker", state if state == "closed" else f"[red]{state}: {breaker['reason']}[/]")
    return table


def run_demo(count: int, where: str | None, clean: bool = False) -> int:
    from rich.live import Live

    # here, not at the top: tests and benchmarks import build_spool() without all of qsup
    from quarantine.app import build_supervisor, handle_signals, setup_logging
    from quarantine.ops import records
    from quarantine.views import console as make_console
    from quarantine.views import quarantine_table

    console = make_console()
    if where:
        if os.path.isdir(where) and os.listdir(where):
            raise ConfigError(f"--dir {where} is not empty: the demo builds a new spool; name a new directory")
        os.makedirs(where, exist_ok=True)
    base = where or tempfile.mkdtemp(prefix="qsup-demo-")
    spool, state = os.path.join(base, "spool"), os.path.join(base, "state")
    rng = random.Random(2026)
    kinds = [k for k, n in POISON for _ in range(n)]
    slots = rng.sample(range(count), len(kinds))
    poison = dict(zip(slots, kinds))
    build_spool(spool, count, poison)
    console.print(f"[bold]qsup demo[/]: {count} messages in {spool}, {len(poison)} of them poison "
                  f"({', '.join(sorted(set(kinds)))}); bundled demo scanner, 4 workers, batches of 20")
    config = load(None, {
        "spool": spool, "worker": demo_worker_command() + " --delay 0.002",
        "workers": 4, "batch_size": 20, "timeout": 2.0, "startup_allowance": 3.0,
        "max_rss_mb": 300, "storm_limit": 50, "max_wait": 30.0, "log_level": "warning",
    })
    setup_logging(config.log_level, rich_console=console)
    sup, store = build_supervisor(state, config, "demo")
    handle_signals(sup)

    def view():
        return progress_table(sup.snapshot(sup.clock()), count)

    try:
        if console.is_terminal:
            with Live(view(), console=console, refresh_per_second=8) as live:
                sup.on_tick = lambda s: live.update(view())
                code = sup.serve(follow=False)
                live.update(view())
        else:  # no terminal to redraw on: the final table only
            code = sup.serve(follow=False)
            console.print(view())
        rows = records(store)
    finally:
        store.close()
    summary = sup.summary()
    console.print(quarantine_table(rows))
    outgoing = len(os.listdir(os.path.join(spool, "outgoing")))
    console.print(f"delivered {outgoing} to outgoing/, quarantined {len(rows)}, "
                  f"{summary['crashes']} worker crashes, {summary['seconds']:.1f}s.")
    if clean:
        shutil.rmtree(base, ignore_errors=True)
        console.print(f"Removed {base} (--clean).")
    else:
        for line in inspect_lines(base, state, spool, rows[0]["qid"] if rows else "ID"):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return code


def inspect_lines(base: str, state: str, spool: str, qid: str) -> list[str]:
    """What to type to look at what the demo did (it keeps its spool and state)."""
    st, q = shlex.quote(state), shlex.quote
    commands = [
        (f"qsup --state {st} list", "the quarantine, newest first"),
        (f"qsup --state {st} show {qid}", "every attempt, how it was isolated, its headers"),
        (f"qsup --state {st} status", "how the run ended"),
        (f"ls {q(os.path.join(spool, 'quarantine'))}", "the quarantined files themselves"),
    ]
    width = max(len(c) for c, _ in commands)
    return ([f"Kept in {base} (spool/ and state/). To look at what the demo did:"]
            + [f"  {c.ljust(width)}   # {why}" for c, why in commands]
            + [f"Remove it with: rm -r {q(base)}"])
