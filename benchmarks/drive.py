"""Run ONE policy over ONE spool in a fresh interpreter and write what happened as JSON.

    python benchmarks/drive.py SPEC.json RESULT.json

run.py and overhead.py start this once per policy so every run gets a fresh
process: its CPU seconds (getrusage RUSAGE_SELF, workers excluded) and peak RSS
are the supervisor's own, and nothing carries over between runs.

SPEC keys: kind ("pool" | "qsup"), spool, worker (argv list), workers, batch_size,
mode ("persistent" | "oneshot"), time_limit, and
  pool:  policy (a name of policies.POLICIES), policy_args (dict)
  qsup:  state (LMDB directory), config (extra qsup config keys), profile (bool)

qsup is run through its real code path: the Supervisor is built by
quarantine.app.build_supervisor exactly as `qsup drain` builds it, with the same
signal handling; the only addition is an on_tick hook that asks for a cold stop once
the time limit has passed. Delivery times come from qsup's own LMDB records:
``done`` (``{"t": wall time}``, written when the message was moved to outgoing/)
and ``quarantine`` (``when``).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shlex
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler(threading.Thread):
    """Samples this process's RSS (from /proc/self/statm) a few times a second."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.samples.append(self.current())

    def current(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page / (1024 * 1024)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def drive_pool(spec: dict) -> dict:
    from policies import POLICIES, BarePool, oldest_first

    rss = RssSampler()
    rss.start()
    # The clock starts before the pool lists the queue, as qsup's starts before its
    # first listing: both begin knowing nothing of the spool.
    t0, cpu0 = time.time(), _cpu()
    ids = oldest_first(os.path.join(spec["spool"], "incoming"))
    policy = POLICIES[spec["policy"]](ids, spec["batch_size"], **spec.get("policy_args", {}))
    pool = BarePool(spool=spec["spool"], argv=spec["worker"], workers=spec["workers"], policy=policy,
                    persistent=spec["mode"] == "persistent", time_limit=spec["time_limit"])
    res = pool.run()
    cpu = _cpu() - cpu0
    rss.stop()
    return {"t0": t0, "elapsed": res.elapsed + (res.t0 - t0), "delivered": res.delivered,
            "quarantined": res.quarantined, "first_crash": res.first_crash, "crashes": res.crashes,
            "batches": res.batches,
            "spawns": res.spawns, "stopped_at_limit": res.stopped_at_limit, "cpu_s": cpu,
            "rss_peak_mb": max(rss.samples, default=rss.current()), "maxrss_mb": _maxrss_mb(),
            "exit_code": 0}


def drive_qsup(spec: dict) -> dict:
    import logging

    from quarantine.app import build_supervisor, handle_signals, setup_logging
    from quarantine.config import load

    overrides = {"spool": spec["spool"], "worker": shlex.join(spec["worker"]),
                 "worker_mode": spec["mode"], "workers": spec["workers"],
                 "batch_size": spec["batch_size"], "log_level": "warning", **spec.get("config", {})}
    config = load(None, overrides)
    setup_logging(config.log_level)
    lines = io.StringIO()
    counter = logging.StreamHandler(lines)
    counter.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("qsup").addHandler(counter)
    rss = RssSampler()
    rss_before = rss.current()
    sup, store = build_supervisor(spec["state"], config, "drain")
    handle_signals(sup)
    limit, start = spec["time_limit"], time.monotonic()
    stopped, timeline, last = [], [], [-1.0]

    def tick(s) -> None:
        now = time.monotonic() - start
        if now - last[0] >= 0.1:  # what the supervisor is doing, 10 times a second
            last[0] = now
            lanes = [r.batch.lane.value for r in s.pool.runs.values()]
            timeline.append([round(now, 2), len(lanes), lanes.count("suspect"), len(s.pool.idle),
                             len(s.intake.buffer), s.isolation.suspect_ids, len(s.isolation.candidates),
                             int(s.pool.canary is not None), int(s.env.is_open), s.stats["delivered"],
                             s.stats["crashes"]])
        if not stopped and now > limit:
            stopped.append(time.monotonic() - start)
            s.request_stop()
            s.request_stop()  # cold: kill what is in flight (a planned kill, no strike)

    sup.on_tick = tick
    rss.start()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    t0, cpu0 = time.time(), _cpu()
    try:
        if profiler:
            profiler.enable()
        code = sup.serve(follow=False)
        if profiler:
            profiler.disable()
        elapsed, cpu = time.monotonic() - start, _cpu() - cpu0
        rss.stop()
        summary = sup.summary()
        delivered, quarantined = {}, {}
        with store.read() as r:
            for _, rec in r.items("done"):  # one record per group of deliveries
                for qid in rec["names"]:
                    delivered[qid] = rec["t"]
            for key, rec in r.items("quarantine"):
                quarantined[key.rsplit(":", 1)[0]] = rec.get("when")
            first_crash = {}  # qid -> wall time of its first recorded crash
            for _, rec in r.items("history"):
                times = [a["when"] for a in rec.get("attempts", []) if a.get("when")]
                if times:
                    first_crash[rec["qid"]] = min(times)
    finally:
        store.close()
    log = lines.getvalue()
    out = {"t0": t0, "elapsed": elapsed, "delivered": delivered, "quarantined": quarantined,
           "first_crash": first_crash, "crashes": summary["crashes"], "summary": summary,
           "stopped_at_limit": bool(stopped),
           "cpu_s": cpu, "rss_before_mb": rss_before,
           "rss_peak_mb": max(rss.samples, default=rss.current()), "maxrss_mb": _maxrss_mb(),
           "exit_code": code, "breaker_openings": log.count("breaker open:"),
           "log_tail": log[-3000:], "stats": dict(sup.stats),
           "timeline_columns": ["t", "runs", "suspect_runs", "idle", "buffer", "suspect_ids", "awaiting",
                                "canary", "breaker_open", "delivered", "crashes"],
           "timeline": timeline}
    if profiler:
        import pstats

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        out["profile_cumulative"] = text.getvalue()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        out["profile_tottime"] = text.getvalue()
    return out


def main() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # thousands of real segfaults: no cores
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as fh:
        spec = json.load(fh)
    result = drive_pool(spec) if spec["kind"] == "pool" else drive_qsup(spec)
    with open(out_path + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main()
