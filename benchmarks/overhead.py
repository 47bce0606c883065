"""What qsup itself costs, with a worker that does nothing.

    python benchmarks/overhead.py --json benchmarks/results/overhead.json
    python benchmarks/overhead.py --skip-million          # no 1,000,000-file spool

1. Throughput: the same no-op persistent worker (benchmarks/bench_worker.py --noop:
   reads the batch, writes begin/done/end, opens no file) over the same spool,
   driven by qsup (real Supervisor, durable LMDB commits on) and by the bare pool of
   benchmarks/policies.py (no LMDB, no fingerprints, no isolation: rename on `end`).
   messages/s = messages / (last delivery - start). Median of --repeat runs.
2. qsup's own CPU seconds per 1,000 messages (getrusage of the supervisor process;
   the workers are other processes and are not counted), and the bare pool's.
3. qsup's RSS with 10,000 and with 1,000,000 IDs queued: a spool of that many small
   files, qsup draining it for at most --rss-seconds; peak RSS of the qsup process
   (sampled 5x a second from /proc/self/statm, and ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_worker import WORKER
from run import clone_spool, drive, fsync_probe, host_info

from quarantine.demo import build_spool

TINY = b"From: a@example.org\r\nSubject: x\r\n\r\nx\r\n"


def noop_worker() -> list[str]:
    return WORKER + ["--noop"]


def one_run(kind: str, master: str, work: str, workers: int, batch: int, limit: float,
            tag: str, profile: bool = False) -> dict:
    spool, state = os.path.join(work, f"spool-{tag}"), os.path.join(work, f"state-{tag}")
    for d in (spool, state):
        shutil.rmtree(d, ignore_errors=True)
    ids = clone_spool(master, spool, set())
    spec = dict(kind=kind, spool=spool, worker=noop_worker(), workers=workers, batch_size=batch,
                mode="persistent", time_limit=limit)
    if kind == "pool":
        spec["policy"] = "clean"
    else:
        spec.update(state=state, config={}, profile=profile)
    res = drive(spec, work, tag)
    shutil.rmtree(spool, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    n = len(res["delivered"])
    last = max(res["delivered"].values(), default=res["t0"])
    span = max(last - res["t0"], 1e-9)
    out = {"kind": kind, "batch_size": batch, "workers": workers, "messages": len(ids), "delivered": n,
           "seconds": span, "msgs_per_s": n / span, "cpu_s": res["cpu_s"],
           "cpu_s_per_1000": 1000 * res["cpu_s"] / max(n, 1), "rss_peak_mb": res["rss_peak_mb"],
           "maxrss_mb": res["maxrss_mb"]}
    if profile and "profile_tottime" in res:
        out["profile_tottime"] = res["profile_tottime"]
        out["profile_cumulative"] = res["profile_cumulative"]
    return out


def throughput(work: str, count: int, workers: int, batches: list[int], repeat: int, profile: bool) -> list[dict]:
    master = os.path.join(work, "master-tp")
    shutil.rmtree(master, ignore_errors=True)
    build_spool(master, count, {}, start=1_000_000_000.0)
    rows = []
    for batch in batches:
        runs = {"pool": [], "qsup": []}
        for i in range(repeat):
            for kind in ("pool", "qsup"):  # interleaved: both see the same disk weather
                r = one_run(kind, master, work, workers, batch, 300.0, f"tp-{kind}-{batch}-{i}",
                            profile=profile and kind == "qsup" and i == 0)
                runs[kind].append(r)
                print(f"  batch {batch} {kind} run {i + 1}: {r['msgs_per_s']:.0f} msg/s, "
                      f"{r['cpu_s_per_1000']:.2f} CPU s/1000", flush=True)
        med = {k: statistics.median(r["msgs_per_s"] for r in v) for k, v in runs.items()}
        cpu = {k: statistics.median(r["cpu_s_per_1000"] for r in v) for k, v in runs.items()}
        row = {"batch_size": batch, "workers": workers, "messages": count,
               "bare_msgs_per_s": med["pool"], "qsup_msgs_per_s": med["qsup"],
               "ratio": med["qsup"] / med["pool"], "bare_cpu_s_per_1000": cpu["pool"],
               "qsup_cpu_s_per_1000": cpu["qsup"], "runs": runs}
        rows.append(row)
    shutil.rmtree(master, ignore_errors=True)
    return rows


def tiny_spool(root: str, n: int) -> None:
    """n small messages straight into incoming/ (nothing else is running)."""
    inc = os.path.join(root, "incoming")
    for sub in ("tmp", "incoming", "outgoing", "quarantine"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(n):
        fd = os.open(os.path.join(inc, f"Q{i:07d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, TINY)
        os.close(fd)
    os.sync()


def scan_cost(spool: str, limit: int) -> dict:
    """What one refill costs qsup at this queue depth: SpoolQueue.pending() lists and
    stats all of incoming/ to keep the `limit` oldest (qsup asks for workers x batch x 4),
    and depth() (the status snapshot) lists it again."""
    from quarantine.spool import SpoolQueue

    queue = SpoolQueue(spool)
    queue.pending(limit, lambda q: False)  # warm the dentry/inode caches, as in a running qsup
    t = time.perf_counter()
    got = len(queue.pending(limit, lambda q: False))
    pending_s = time.perf_counter() - t
    t = time.perf_counter()
    queue.depth()
    return {"refill_limit": limit, "refill_got": got, "refill_scan_s": pending_s,
            "depth_scan_s": time.perf_counter() - t}


def rss(work: str, n: int, seconds: float, workers: int, batch: int, profile: bool) -> dict:
    spool, state = os.path.join(work, f"rss-{n}"), os.path.join(work, f"rss-state-{n}")
    for d in (spool, state):
        shutil.rmtree(d, ignore_errors=True)
    t = time.monotonic()
    tiny_spool(spool, n)
    built = time.monotonic() - t
    scan = scan_cost(spool, workers * batch * 4)
    spec = dict(kind="qsup", spool=spool, worker=noop_worker(), workers=workers, batch_size=batch,
                mode="persistent", time_limit=seconds, state=state, config={}, profile=profile)
    res = drive(spec, work, f"rss-{n}")
    n_done = len(res["delivered"])
    span = max(max(res["delivered"].values(), default=res["t0"]) - res["t0"], 1e-9)
    out = {"queued": n, "ran_s": res["elapsed"], "delivered": n_done, "msgs_per_s": n_done / span,
           "rss_before_mb": res["rss_before_mb"], "rss_peak_mb": res["rss_peak_mb"],
           "maxrss_mb": res["maxrss_mb"], "cpu_s": res["cpu_s"], "spool_build_s": built,
           "stopped_at_limit": res["stopped_at_limit"], "cpu_share": res["cpu_s"] / max(res["elapsed"], 1e-9),
           **scan}
    if profile:
        out["profile_tottime"] = res.get("profile_tottime")
        out["profile_cumulative"] = res.get("profile_cumulative")
    t = time.monotonic()
    shutil.rmtree(spool, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    out["cleanup_s"] = time.monotonic() - t
    return out


def enough_disk(folder: str, n: int) -> tuple[bool, str]:
    st = os.statvfs(folder)
    free_b, free_inodes = st.f_bavail * st.f_frsize, st.f_favail
    need_b, need_inodes = n * 4096 * 2, n * 2  # a block per file, with room to spare
    ok = free_b > need_b and free_inodes > need_inodes
    return ok, (f"free {free_b / 2**30:.1f} GiB / {free_inodes} inodes; need about "
                f"{need_b / 2**30:.1f} GiB / {need_inodes} inodes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--count", type=int, default=30_000, help="messages in the throughput spool "
                    "(enough for a run of about a second, not a start-up measurement)")
    ap.add_argument("--workers", type=int, default=5, help="workers (qsup's default is 5)")
    ap.add_argument("--batch-sizes", default="30", help="comma-separated, e.g. 1,10,30,100")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-seconds", type=float, default=20.0, help="how long qsup runs on each RSS spool")
    ap.add_argument("--skip-million", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one qsup run of each kind")
    ap.add_argument("--workdir", help="default: a temp dir, removed")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="qsup-overhead-")
    os.makedirs(work, exist_ok=True)
    disk = fsync_probe(work)
    print(f"fsync on this disk: median {disk['median_ms']:.2f} ms, p90 {disk['p90_ms']:.2f} ms", flush=True)
    doc = {"host": host_info(), "fsync_probe": disk}
    try:
        print(f"throughput: {args.count} messages, {args.workers} no-op persistent workers", flush=True)
        doc["throughput"] = [] if args.skip_throughput else throughput(
            work, args.count, args.workers, [int(b) for b in args.batch_sizes.split(",")], args.repeat,
            args.profile)
        doc["rss"] = []
        sizes = [10_000] + ([] if args.skip_million else [1_000_000])
        for n in sizes:
            ok, why = enough_disk(work, n)
            if not ok:
                print(f"rss with {n} queued: skipped ({why})")
                doc["rss"].append({"queued": n, "skipped": why})
                continue
            print(f"rss with {n} queued IDs ({why}) ...", flush=True)
            doc["rss"].append(rss(work, n, args.rss_seconds, args.workers, 30, args.profile))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("throughput (no-op persistent worker, durable commits on)")
    print(f"{'batch':>5}  {'bare msg/s':>10}  {'qsup msg/s':>10}  {'qsup/bare':>9}  "
          f"{'bare CPU s/1000':>15}  {'qsup CPU s/1000':>15}")
    for r in doc["throughput"]:
        print(f"{r['batch_size']:>5}  {r['bare_msgs_per_s']:>10.0f}  {r['qsup_msgs_per_s']:>10.0f}  "
              f"{r['ratio']:>9.2f}  {r['bare_cpu_s_per_1000']:>15.3f}  {r['qsup_cpu_s_per_1000']:>15.3f}")
    print()
    print("qsup RSS with queued IDs")
    print(f"{'queued':>9}  {'RSS at start MB':>15}  {'peak RSS MB':>11}  {'ran s':>6}  {'delivered':>9}  "
          f"{'msg/s':>7}  {'qsup CPU':>8}  {'one refill s':>12}")
    for r in doc["rss"]:
        if "skipped" in r:
            print(f"{r['queued']:>9}  skipped: {r['skipped']}")
            continue
        print(f"{r['queued']:>9}  {r['rss_before_mb']:>15.1f}  {max(r['rss_peak_mb'], r['maxrss_mb']):>11.1f}  "
              f"{r['ran_s']:>6.1f}  {r['delivered']:>9}  {r['msgs_per_s']:>7.0f}  {r['cpu_share']:>7.0%}  "
              f"{r['refill_scan_s']:>12.3f}")
    print("one refill: SpoolQueue.pending() at that depth (lists and stats all of incoming/ to keep "
          "workers x batch x 4 IDs)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
