"""Side by side, on the same generated spool and the same worker: how long each
policy takes to drain a backlog with poison in it, what it costs in crashes, and
what happens to the innocent messages.

    python benchmarks/run.py --preset quick    --json benchmarks/results/quick.json
    python benchmarks/run.py --preset headline --json benchmarks/results/headline.json

Policies (see benchmarks/README.md):
  clean          bare pool, the same spool with the poison removed: the floor
  clean-qsup     qsup (progress lines) on the clean spool: supervision alone
  retry-batch    bare pool: a crashed batch is retried whole
  attempt-count  bare pool: an attempt per message of a crashed batch, 6 => quarantine
  solo-all       bare pool: every member of a crashed batch is retried alone
  qsup-blind     qsup, worker writes no progress lines (bisection)
  qsup-progress  qsup, worker writes begin/done lines

Each policy gets a freshly built copy of the spool (same IDs, same content, same
mtimes), runs in its own process (benchmarks/drive.py) and stops at --time-limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_worker import WORKER

from quarantine.demo import build_spool

PRESETS = {
    # seed 003: 66,000 messages behind ~100 segfaulting ones, 20 children, batches of 30
    "headline": dict(count=66_000, poison=100, workers=20, batch_size=30, delay=0.005, startup=0.5,
                     time_limit=150.0),
    # the same shape, small enough for the whole run to take about a minute
    "quick": dict(count=3_000, poison=8, workers=8, batch_size=30, delay=0.005, startup=0.5,
                  time_limit=10.0),
    # the black-box case: a process per batch (clamscan, a vendor binary, an old
    # MailScanner child) that says nothing but its exit status
    "oneshot": dict(count=3_000, poison=20, workers=8, batch_size=30, delay=0.005, startup=0.5,
                    time_limit=60.0, mode="oneshot"),
}
# What each preset's qsup rows must reach (issue 15): drain / clean for progress and blind,
# and crashes per poison where the preset asks fewer than the contract's bound.
TARGETS = {
    "headline": {"qsup-progress": 1.10, "qsup-blind": 1.20},
    "quick": {"qsup-progress": 1.15, "qsup-blind": 1.25},
    "oneshot": {"qsup-blind": 1.25, "crashes": {"qsup-blind": 4}},
}
ALL = ("clean", "clean-qsup", "retry-batch", "attempt-count", "solo-all", "oracle", "qsup-blind",
       "qsup-progress")
SPOOL_START = 1_000_000_000.0  # fixed mtimes: message i is i ms younger than message i-1


def poison_map(count: int, n: int, seed: int = 3) -> dict[int, str]:
    """n poison messages spread at random over the queue (a fixed seed: the same spool
    for every policy and every run)."""
    import random

    return {i: "segv" for i in random.Random(seed).sample(range(count), n)}


def clone_spool(master: str, root: str, skip: set[str]) -> list[str]:
    """A fresh spool with the master's messages (hard links: same content, same
    mtimes, nothing rewritten), minus *skip*. Returns the IDs, oldest first."""
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = sorted(n for n in os.listdir(os.path.join(master, "incoming")) if n not in skip)
    for qid in ids:
        os.link(os.path.join(master, "incoming", qid), os.path.join(root, "incoming", qid))
    os.sync()  # nothing of the set-up is left to flush during the measured run
    return ids


def spec_for(policy: str, p: dict, spool: str, work: str, mode: str, limit: float, qsup_config: dict,
             bad: set[str]) -> dict:
    worker = WORKER + ["--delay", str(p["delay"]), "--startup", str(p["startup"])]
    base = dict(spool=spool, workers=p["workers"], batch_size=p["batch_size"], mode=mode,
                time_limit=limit)
    if policy.startswith("qsup") or policy == "clean-qsup":
        if policy == "qsup-blind":
            worker.append("--no-progress")
        return dict(base, kind="qsup", worker=worker, state=os.path.join(work, "state-" + policy),
                    config=qsup_config)
    name = "retry-batch" if policy == "clean" else policy
    args = {"poison": sorted(bad), "strikes": qsup_config.get("strikes", 2)} if policy == "oracle" else {}
    return dict(base, kind="pool", worker=worker + ["--no-progress"], policy=name, policy_args=args)


def drive(spec: dict, work: str, name: str) -> dict:
    spec_path, out_path = os.path.join(work, name + ".spec.json"), os.path.join(work, name + ".out.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "drive.py"), spec_path, out_path],
                          capture_output=True, text=True, timeout=spec["time_limit"] + 600, check=False)
    if proc.returncode != 0 or not os.path.exists(out_path):
        raise SystemExit(f"{name}: driver failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out_path) as fh:
        return json.load(fh)


def where_are(spool: str) -> dict[str, set[str]]:
    return {sub: set(os.listdir(os.path.join(spool, sub))) for sub in ("incoming", "outgoing", "quarantine")}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile; inf (never delivered) sorts last."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def measure(name: str, res: dict, ids: list[str], bad: set[str], spool: str,
            clean_times: dict[str, float] | None) -> dict:
    where = where_are(spool)
    seen = [n for names in where.values() for n in names]
    lost = len(set(ids) - set(seen)) + (len(seen) - len(set(seen)))
    t0 = res["t0"]
    events = list(res["delivered"].values()) + [t for t in res["quarantined"].values() if t]
    drained = len(set(ids) & (where["outgoing"] | where["quarantine"]))
    finished = not where["incoming"] and not res["stopped_at_limit"]
    drain_s = (max(events) - t0) if (finished and events) else None
    row = {
        "policy": name, "messages": len(ids), "poison": len(bad & set(ids)), "drained": drained,
        "finished": finished, "drain_s": drain_s, "process_s": res["elapsed"],
        "crashes": res["crashes"], "innocents_quarantined": len(where["quarantine"] - bad),
        "poison_quarantined": len(where["quarantine"] & bad), "poison_delivered": len(where["outgoing"] & bad),
        "lost": lost, "left_in_incoming": len(where["incoming"]), "supervisor_cpu_s": res["cpu_s"],
        "supervisor_rss_peak_mb": res["rss_peak_mb"], "stopped_at_limit": res["stopped_at_limit"],
        "exit_code": res["exit_code"],
    }
    # time to quarantine: for each poison message, its first crash to its quarantine
    ttq = [res["quarantined"][q] - res["first_crash"][q] for q in bad
           if res["quarantined"].get(q) and q in res.get("first_crash", {})]
    if ttq:
        row.update(ttq_p50_s=pct(ttq, 50), ttq_p99_s=pct(ttq, 99), ttq_max_s=max(ttq))
    if "summary" in res:
        row.update(breaker_openings=res["breaker_openings"], canary_runs=res["summary"]["canary_runs"],
                   unexplained=res["summary"]["unexplained"], qsup_counters=res["stats"])
    if "spawns" in res:
        row.update(worker_spawns=res["spawns"], batches=res["batches"])
    if clean_times is not None:
        extra, extra_delivered = [], []
        c0 = clean_times["__t0__"]
        for qid in ids:
            if qid in bad or qid not in clean_times:
                continue
            if qid in res["delivered"]:
                x = (res["delivered"][qid] - t0) - (clean_times[qid] - c0)
                extra.append(x)
                extra_delivered.append(x)
            else:
                extra.append(math.inf)
        row.update(p50_extra_s=pct(extra, 50), p99_extra_s=pct(extra, 99),
                   p50_extra_delivered_s=pct(extra_delivered, 50),
                   p99_extra_delivered_s=pct(extra_delivered, 99),
                   innocents_undelivered=sum(1 for x in extra if x == math.inf))
    return row


def fmt_s(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    if isinstance(x, float) and math.isnan(x):
        return "-"
    return f"{x:.2f}"


def table(rows: list[dict], clean_s: float | None) -> str:
    head = ("policy", "drained", "drain s", "x clean", "crashes", "crash/poison", "innoc. quar.",
            "lost", "p50 extra s", "p99 extra s", "ttq p50 s", "ttq p99 s")
    lines = [head]
    for r in rows:
        drained = f"{r['drained']}/{r['messages']}" + ("" if r["finished"] else " (limit)")
        ratio = f"{r['drain_s'] / clean_s:.2f}" if (r["drain_s"] and clean_s) else (
            "-" if r["finished"] else f">{r['process_s'] / clean_s:.1f}" if clean_s else "-")
        cpp = f"{r['crashes'] / r['poison']:.2f}" if r["poison"] else "-"
        lines.append((r["policy"], drained, fmt_s(r["drain_s"]), ratio, str(r["crashes"]), cpp,
                      str(r["innocents_quarantined"]), str(r["lost"]),
                      fmt_s(r.get("p50_extra_s")), fmt_s(r.get("p99_extra_s")),
                      fmt_s(r.get("ttq_p50_s")), fmt_s(r.get("ttq_p99_s"))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets(rows: dict[str, dict], batch_size: int, preset: str, strikes: int = 2) -> list[tuple[str, bool, str]]:
    checks = []
    clean = rows.get("clean", {}).get("drain_s")

    def ratio(name):
        r = rows.get(name)
        return r["drain_s"] / clean if (r and r["drain_s"] and clean) else math.inf

    goals = TARGETS.get(preset, TARGETS["headline"])
    for name in ("qsup-progress", "qsup-blind"):
        limit = goals.get(name)
        if limit and name in rows and clean:
            value = (f"{ratio(name):.2f}x" if rows[name]["finished"] else
                     f"did not drain within the time limit ({rows[name]['drained']}/{rows[name]['messages']})")
            checks.append((f"{name} drain <= {limit:.2f}x clean", ratio(name) <= limit, value))
    contract = {"qsup-progress": strikes, "qsup-blind": math.ceil(math.log2(batch_size)) + strikes}
    for name, bound in contract.items():
        bound = min(bound, goals.get("crashes", {}).get(name, bound))
        r = rows.get(name)
        if r:
            cpp = r["crashes"] / max(r["poison"], 1)
            checks.append((f"{name} crashes per poison <= {bound}", cpp <= bound, f"{cpp:.2f}"))
            ok = r["innocents_quarantined"] == 0 and r["lost"] == 0 and r["finished"]
            checks.append((f"{name}: 0 innocents quarantined, 0 lost, drained", ok,
                           (f"{r['innocents_quarantined']} quarantined, {r['lost']} lost, "
                            f"{r['drained']}/{r['messages']}")))
    for name in ("qsup-progress", "qsup-blind"):
        r = rows.get(name)
        if r and r["poison"]:
            checks.append((f"{name}: time to quarantine reported (p50 / p99)", "ttq_p99_s" in r,
                           f"{fmt_s(r.get('ttq_p50_s'))} s / {fmt_s(r.get('ttq_p99_s'))} s"))
    if "retry-batch" in rows:
        r = rows["retry-batch"]
        checks.append(("retry-batch does not drain", not r["finished"], f"{r['drained']}/{r['messages']}"))
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--time-limit", type=float, help="seconds per policy (default: the preset's)")
    ap.add_argument("--mode", choices=("persistent", "oneshot"),
                    help="worker mode, the same for every policy (default: the preset's, else persistent)")
    ap.add_argument("--policies", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--count", type=int, help="override the preset's message count")
    ap.add_argument("--poison", type=int, help="override the preset's poison count")
    ap.add_argument("--workers", type=int, help="override the preset's worker count")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a qsup config key for the qsup policies (repeatable), e.g. storm_limit=1000")
    ap.add_argument("--workdir", help="where spools, state and raw results go (default: a temp dir, removed)")
    ap.add_argument("--profile", action="store_true",
                    help="run the qsup policies under cProfile; the top functions go into the JSON")
    args = ap.parse_args()

    p = dict(PRESETS[args.preset])
    for key in ("count", "poison", "workers"):
        if getattr(args, key):
            p[key] = getattr(args, key)
    limit = args.time_limit or p["time_limit"]
    preset_mode = p.pop("mode", "persistent")
    args.mode = args.mode or preset_mode
    qsup_config = {}
    for item in args.set:
        key, _, value = item.partition("=")
        qsup_config[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    policies = [x for x in args.policies.split(",") if x]
    if "clean" in policies:
        policies = ["clean"] + [x for x in policies if x != "clean"]
    unknown = set(policies) - set(ALL)
    if unknown:
        ap.error(f"unknown policies: {', '.join(sorted(unknown))}")

    work = args.workdir or tempfile.mkdtemp(prefix="qsup-bench-")
    os.makedirs(work, exist_ok=True)
    poison = poison_map(p["count"], p["poison"])
    print(f"preset {args.preset}: {p['count']} messages, {p['poison']} poison (SIGSEGV), {p['workers']} "
          f"workers, batches of {p['batch_size']}, {p['delay'] * 1000:g} ms scan/message, "
          f"{p['startup']:g} s start-up; worker mode {args.mode} for every policy; time limit "
          f"{limit:g} s; qsup config {qsup_config or 'defaults'}", flush=True)
    rows, clean_times = {}, None
    try:
        master = os.path.join(work, "master")
        for old in [master] + [os.path.join(work, "spool-" + n) for n in policies]:
            shutil.rmtree(old, ignore_errors=True)
        all_ids = build_spool(master, p["count"], poison, start=SPOOL_START)
        bad = {all_ids[i] for i in poison}
        disk = fsync_probe(work)
        print(f"spool built; fsync on this disk: median {disk['median_ms']:.1f} ms, "
              f"p90 {disk['p90_ms']:.1f} ms", flush=True)
        for name in policies:
            spool = os.path.join(work, "spool-" + name)
            ids = clone_spool(master, spool, bad if name in ("clean", "clean-qsup") else set())
            t = time.monotonic()
            spec = spec_for(name, p, spool, work, args.mode, limit, qsup_config, bad)
            if spec["kind"] == "qsup":
                shutil.rmtree(spec["state"], ignore_errors=True)  # no strikes from an earlier run
            spec["profile"] = args.profile and spec["kind"] == "qsup"
            res = drive(spec, work, name)
            row = measure(name, res, ids, bad, spool, clean_times)
            if "timeline" in res:
                row["timeline_columns"], row["timeline"] = res["timeline_columns"], res["timeline"]
            if spec["profile"]:
                row["profile_cumulative"] = res["profile_cumulative"]
                row["profile_tottime"] = res["profile_tottime"]
            if name == "clean" and row["finished"]:
                clean_times = dict(res["delivered"], __t0__=res["t0"])
            rows[name] = row
            print(f"  {name}: {row['drained']}/{row['messages']} in {time.monotonic() - t:.1f}s wall, "
                  f"{row['crashes']} crashes", flush=True)
            shutil.rmtree(spool, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    clean_s = rows.get("clean", {}).get("drain_s")
    print()
    print(table(list(rows.values()), clean_s))
    print()
    print("drain s: first dispatch to the last message delivered or quarantined; x clean: drain s / "
          "clean's; ttq: time to quarantine, a poison message's first crash to its quarantine; "
          "extra latency: an innocent message's delivery time minus its delivery time in "
          "'clean' (both from the start of the run); 'never' = some innocent was not delivered "
          "(quarantined, or still queued at the time limit).")
    notes = [f"{r['policy']}: breaker opened {r['breaker_openings']}x, {r['canary_runs']} canary runs, "
             f"supervisor CPU {r['supervisor_cpu_s']:.1f}s"
             for r in rows.values() if "breaker_openings" in r]
    for n in notes:
        print("  " + n)
    checks = targets(rows, p["batch_size"], args.preset, qsup_config.get("strikes", 2))
    if checks:
        print("\ntargets:")
        for what, ok, value in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {what}: {value}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        doc = {"preset": args.preset, "parameters": p, "mode": args.mode, "time_limit": limit,
               "qsup_config": qsup_config, "poison_ids": sorted(bad), "host": host_info(),
               "fsync_probe": disk,
               "rows": [json_safe(r) for r in rows.values()],
               "targets": [{"target": w, "ok": ok, "value": v} for w, ok, v in checks]}
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=2)
        print(f"\nwrote {args.json}")


def fsync_probe(folder: str, n: int = 30) -> dict:
    """How long a small write + fsync takes here: qsup commits LMDB durably, so this
    bounds its batch rate on this disk (and it varies on a shared machine)."""
    path = os.path.join(folder, "fsync-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(n):
            os.pwrite(fd, os.urandom(4096), (i % 4) * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"median_ms": times[n // 2], "p90_ms": times[int(n * 0.9)], "n": n}


def json_safe(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else
                "inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}


def host_info() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_before": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


if __name__ == "__main__":
    main()
