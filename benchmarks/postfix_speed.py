"""Postfix at Postfix speed (issue 13): release 3,000 held messages with Postfix
alone, then drain 3,000 with qsup and a no-op scanner, on one private Postfix
instance (tests/realsys/harness.py; root only), and compare.

    python benchmarks/postfix_speed.py [--messages 3000] [--json benchmarks/results/postfix_speed.json]

Mail is injected with Postfix's own smtp-source and put on hold by header_checks
(``/^Received:/ HOLD``). Released mail goes to the ``discard`` transport (the
harness's ``discard:qsup-test-discarded``): what is timed is Postfix's queue, not a
network. Each side's clock runs from its first command until the Postfix log shows
every message delivered. Target: qsup ≥ 300 msgs/s and ≥ 0.5 × Postfix alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "realsys"))

import harness  # noqa: E402

SENT = re.compile(r"postfix/discard\[\d+\]: \w+: to=<[^>]*>.*status=sent \(qsup-test-discarded\)")
WORKER = f"{sys.executable} -S {HERE / 'postfix_noop_worker.py'}"
TARGET_RATE, TARGET_RATIO = 300.0, 0.5


def sent(pf) -> int:
    return len(SENT.findall(pf.log_text()))


def held(pf) -> int:
    return sum(1 for _ in os.scandir(pf.queue_dir / "hold"))


def inject(pf, count: int) -> float:
    """*count* messages on hold, through smtp-source (4 sessions); seconds taken."""
    t0 = time.monotonic()
    program = harness.require("smtp-source", "postfix")
    subprocess.run([program, "-s", "4", "-l", "1024", "-m", str(count), "-f", "sender@example.org",
                    "-t", "rcpt@example.net", f"{pf.host}:{pf.port}"], check=True, timeout=300)
    harness.wait_until(lambda: held(pf) >= count, 120, interval=0.1, what=f"{count} held")
    return time.monotonic() - t0


def until_sent(pf, total: int, t0: float) -> float:
    harness.wait_until(lambda: sent(pf) >= total, 300, interval=0.02, what=f"{total} delivered")
    return time.monotonic() - t0


def postfix_alone(pf, count: int) -> float:
    before = sent(pf)
    t0 = time.monotonic()
    pf.run("postsuper", "-H", "ALL", "hold")
    pf.run("postqueue", "-f")
    return until_sent(pf, before + count, t0)


def qsup_drain(pf, count: int, work: Path) -> tuple[float, dict]:
    before = sent(pf)
    argv = [sys.executable, "-m", "quarantine", "--state", str(work / "state"), "drain", "--json",
            "--queue", "postfix", "--worker", WORKER, "--workers", "2", "--batch-size", "200",
            "--plugin-option", f"postfix.config_directory={pf.config_dir}",
            "--plugin-option", f"postfix.quarantine_dir={work / 'quarantine'}"]
    t0 = time.monotonic()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=work)
    if run.returncode != 0:
        raise SystemExit(f"qsup drain exited {run.returncode}: {run.stderr[-2000:]}")
    seconds = until_sent(pf, before + count, t0)
    return seconds, json.loads(run.stdout[run.stdout.index("{"):])


def measure(count: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="qsup-pfspeed-"))
    try:
        with harness.postfix_instance(work / "postfix") as pf:
            inject_a = inject(pf, count)
            alone = postfix_alone(pf, count)
            inject_b = inject(pf, count)
            drained, summary = qsup_drain(pf, count, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"messages": count, "delivery": "discard transport",
            "postfix_alone": {"seconds": round(alone, 3), "rate": round(count / alone, 1),
                              "inject_seconds": round(inject_a, 1)},
            "qsup_noop": {"seconds": round(drained, 3), "rate": round(count / drained, 1),
                          "inject_seconds": round(inject_b, 1), "delivered": summary.get("delivered"),
                          "qsup_seconds": summary.get("seconds"),  # inside qsup, start-up excluded
                          "workers": 2, "batch_size": 200}}


def verdict(result: dict) -> dict:
    rate = result["qsup_noop"]["rate"]
    ratio = rate / result["postfix_alone"]["rate"]
    return {"ratio": round(ratio, 3), "target_rate": TARGET_RATE, "target_ratio": TARGET_RATIO,
            "pass": rate >= TARGET_RATE and ratio >= TARGET_RATIO}


def table(result: dict) -> str:
    rows = [("Postfix alone (postsuper -H ALL + postqueue -f)", result["postfix_alone"]),
            ("qsup drain, no-op scanner", result["qsup_noop"])]
    lines = [f"{result['messages']:,} held messages, delivered to the {result['delivery']}",
             f"{'':50} {'seconds':>8} {'msgs/s':>8}"]
    lines += [f"{name:50} {row['seconds']:8.2f} {row['rate']:8.0f}" for name, row in rows]
    v = result["verdict"]
    lines.append(f"ratio qsup / Postfix alone: {v['ratio']:.2f}   "
                 f"{'PASS' if v['pass'] else 'FAIL'} (≥ {TARGET_RATE:.0f} msgs/s and ≥ {TARGET_RATIO}×)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--json", default=str(HERE / "results" / "postfix_speed.json"))
    args = ap.parse_args()
    result = measure(args.messages)
    result["verdict"] = verdict(result)
    print(table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["verdict"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
