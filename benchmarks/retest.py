"""Re-test of 200 quarantined messages beside the traffic (issue 16): is retest_rate
respected, and does clean mail keep flowing meanwhile?

    python benchmarks/retest.py [--poison 200] [--clean 3000] [--rate 600] \
        [--json benchmarks/results/retest.json]

A scanner whose bug depends on its version (tests/workers/versioned.py) quarantines
--poison messages under version 1; the version file flips to 2 (fixed) and --clean
new messages arrive; one drain then re-tests the quarantine and scans the new mail.
The worker logs the time of every scan: the re-tests' start rate, and how many clean
messages were scanned per second while re-tests were going on against after.
PASS: re-test starts no faster than --rate a minute (mean gap), all re-tested once,
all delivered, and clean mail scanned while re-tests run at least half as fast as
the same mail without re-tests (measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from quarantine.demo import build_spool  # noqa: E402

WORKER = f"{sys.executable} {ROOT / 'tests' / 'workers' / 'versioned.py'}"


def drain(work: Path, env: dict, *flags: str) -> dict:
    cp = subprocess.run([sys.executable, "-m", "quarantine", "--state", str(work / "state"), "drain",
                         "--spool", str(work / "spool"), "--json", "--worker", WORKER, "--scanner-version",
                         f"{WORKER} --version", "--workers", "2", "--batch-size", "30",
                         "--storm-limit", "100000", "--log-level", "warning", *flags],
                        capture_output=True, text=True, env=env, timeout=1800)
    if cp.returncode != 0:
        raise SystemExit(f"drain failed ({cp.returncode}): {cp.stderr[-800:]}")
    return json.loads(cp.stdout[cp.stdout.index("{"):])


def baseline(work: Path, env: dict, count: int) -> float:
    """Messages a second for the same clean mail and worker with nothing to re-test."""
    alone = work / "alone"
    alone.mkdir()
    env = {**env, "VERSION_FILE": str(alone / "version"), "SCAN_LOG": str(alone / "scans.log")}
    (alone / "version").write_text("2\n")
    build_spool(str(alone / "spool"), count, {})
    drain(alone, env)
    times = sorted(float(line.split()[0]) for line in (alone / "scans.log").read_text().splitlines())
    return len(times) / (times[-1] - times[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--poison", type=int, default=200)
    ap.add_argument("--clean", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=600.0, help="retest_rate (a minute)")
    ap.add_argument("--json", default=str(HERE / "results" / "retest.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qsup-retest-bench-"))
    try:
        env = {**os.environ, "VERSION_FILE": str(work / "version"), "SCAN_LOG": str(work / "scans.log")}
        (work / "version").write_text("1\n")
        build_spool(str(work / "spool"), args.poison, {i: "segv" for i in range(args.poison)})
        first = drain(work, env)
        assert first["quarantined"] == args.poison, first
        (work / "version").write_text("2\n")
        fresh = build_spool(str(work / "fresh"), args.clean, {}, start=time.time())
        for qid in fresh:
            os.rename(work / "fresh" / "incoming" / qid, work / "spool" / "incoming" / f"N{qid}")
        (work / "scans.log").write_text("")
        t0 = time.monotonic()
        second = drain(work, env, "--retest-rate", str(args.rate))
        took = time.monotonic() - t0
        lines = [line.split() for line in (work / "scans.log").read_text().splitlines()]
        retests = sorted(float(t) for t, what, _ in lines if what == "retest")
        scans = sorted(float(t) for t, what, _ in lines if what == "scan")
        window = retests[-1] - retests[0]
        during = [t for t in scans if retests[0] <= t <= retests[-1]]
        rate_during = len(during) / (during[-1] - during[0]) if len(during) > 1 else 0.0
        mean_gap = window / (len(retests) - 1) if len(retests) > 1 else 0.0
        rate_alone = baseline(work, env, args.clean)
        outgoing = len(os.listdir(work / "spool" / "outgoing"))
        checks = {
            f"re-test starts at most {args.rate:g}/min (mean gap ≥ {60 / args.rate:.3f}s)": mean_gap >= 0.95 * 60 / args.rate,
            f"each of {args.poison} re-tested once": second.get("retests") == args.poison == len(retests),
            "all delivered, nothing quarantined": outgoing == args.poison + args.clean
            and not os.listdir(work / "spool" / "quarantine"),
            "clean mail scanned while re-tests run ≥ 0.5× without re-tests": rate_during >= 0.5 * rate_alone,
        }
        print(f"re-tests {len(retests)} over {window:.1f}s: mean gap {mean_gap:.3f}s "
              f"(retest_rate {args.rate:g}/min = {60 / args.rate:.3f}s), drain {took:.1f}s")
        print(f"clean mail: {len(during)} of {args.clean} scanned while re-tests ran, at {rate_during:.0f}/s; "
              f"the same mail without re-tests: {rate_alone:.0f}/s ({rate_during / rate_alone:.2f}×)")
        for what, ok in checks.items():
            print(f"  [{'PASS' if ok else 'FAIL'}] {what}")
        out = {"poison": args.poison, "clean": args.clean, "rate": args.rate, "mean_gap": mean_gap,
               "window": window, "clean_during": len(during), "clean_rate_during": rate_during,
               "clean_rate_without_retests": rate_alone, "drain_seconds": took, "summary": second,
               "checks": {k: bool(v) for k, v in checks.items()}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return 0 if all(checks.values()) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
