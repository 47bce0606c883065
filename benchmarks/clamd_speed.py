"""qsup with clamd against clamd alone (issue 13): the same messages scanned by a
private clamd (tests/realsys/harness.py, the test's signature file only), once by
``clamdscan --multiscan --fdpass`` over the directory, once by ``qsup drain
--scanner clamd`` (persistent workers streaming each message with INSTREAM), side
by side in one run, alternating, best of --rounds.

    python benchmarks/clamd_speed.py [--messages 3000] [--workers 4] [--rounds 2] \
        [--json benchmarks/results/clamd_speed.json]

Target: qsup ≥ 0.8 × clamd alone (messages per second).
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
sys.path.insert(0, str(ROOT / "tests" / "realsys"))

import harness  # noqa: E402
import mail  # noqa: E402

TARGET = 0.8


def messages(count: int, kb: int = 2, tag: str = "") -> dict[str, bytes]:
    """Mail of about *kb* KB, 1 % infected with the test's signature. Each *tag* gives
    other content: clamd caches what it found clean by content, and a gateway's mail
    is new, so every run scans mail clamd has not seen."""
    filler = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * max(1, kb * 1024 // 59)
    return {f"CS{i:06d}": mail.infected(i) if i % 100 == 7
            else mail.plain(i, body=f"{tag} {i}\r\n".encode() + filler) for i in range(count)}


def write_files(folder: Path, msgs: dict[str, bytes]) -> None:
    folder.mkdir()
    for qid, data in msgs.items():
        (folder / qid).write_bytes(data)


def cpu_of(pid: int) -> float:
    """CPU seconds used so far by process *pid* and its children (clamd's threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clamd_alone(clamd, folder: Path) -> float:
    program = harness.require("clamdscan", "clamdscan")
    t0 = time.monotonic()
    cp = subprocess.run([program, "-c", str(clamd.config_path), "--multiscan", "--fdpass", "--no-summary",
                         "--infected", str(folder)], capture_output=True, timeout=600)
    took = time.monotonic() - t0
    if cp.returncode not in (0, 1):  # 1: something infected
        raise SystemExit(f"clamdscan failed: {cp.stderr.decode()[-500:]}")
    return took


def qsup_drain(clamd, spool: Path, state: Path, workers: int) -> tuple[float, dict]:
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "quarantine", "--state", str(state), "drain", "--spool",
                         str(spool), "--json", "--scanner", "clamd", "--plugin-option",
                         f"clamd.socket={clamd.socket_path}", "--plugin-option", f"clamd.conf={clamd.config_path}",
                         "--workers", str(workers), "--batch-size", "50", "--log-level", "warning"],
                        capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    if cp.returncode != 0:
        raise SystemExit(f"qsup drain failed ({cp.returncode}): {cp.stderr[-800:]}")
    return took, json.loads(cp.stdout[cp.stdout.index("{"):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kb", type=int, default=2, help="message size")
    ap.add_argument("--json", default=str(HERE / "results" / "clamd_speed.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qsup-clamd-bench-"))
    try:
        sigdir = work / "sigs"
        harness.write_clamav_signature(sigdir, mail.AV_MARKER)
        alone, ours, summary = [], [], {}
        with harness.clamd_instance(work, sigdir) as clamd:
            warm = work / "warm"
            write_files(warm, messages(200, args.kb, "warm-up"))
            clamd_alone(clamd, warm)  # clamd's threads started, the signatures in memory
            cpu_alone, cpu_ours = [], []
            for r in range(args.rounds):
                files = work / f"files{r}"
                write_files(files, messages(args.messages, args.kb, f"alone {r}"))
                c0 = cpu_of(clamd.pid)
                alone.append(clamd_alone(clamd, files))
                cpu_alone.append(cpu_of(clamd.pid) - c0)
                spool, state = work / f"spool{r}", work / f"state{r}"
                mail.write_spool(spool, messages(args.messages, args.kb, f"qsup {r}"))
                c0, r0 = cpu_of(clamd.pid), os.times()
                took, summary = qsup_drain(clamd, spool, state, args.workers)
                r1 = os.times()
                ours.append(took)
                cpu_ours.append((cpu_of(clamd.pid) - c0, r1.children_user + r1.children_system
                                 - r0.children_user - r0.children_system))
        best_alone, best_ours = min(alone), min(ours)
        rate_alone, rate_ours = args.messages / best_alone, args.messages / best_ours
        ratio = rate_ours / rate_alone
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(f"{'':24} {'seconds':>9} {'msgs/s':>9}")
        print(f"{'clamd alone (clamdscan)':24} {best_alone:9.2f} {rate_alone:9.0f}   runs {', '.join(f'{t:.2f}' for t in alone)}")
        print(f"{'qsup drain, clamd':24} {best_ours:9.2f} {rate_ours:9.0f}   runs {', '.join(f'{t:.2f}' for t in ours)}")
        print(f"ratio {ratio:.2f} (target ≥ {TARGET}): {verdict}")
        print(f"CPU per 1,000 messages: clamd {1000 * min(cpu_alone) / args.messages:.3f} s alone; "
              f"with qsup clamd {1000 * cpu_ours[-1][0] / args.messages:.3f} s, qsup and its workers "
              f"{1000 * cpu_ours[-1][1] / args.messages:.3f} s")
        print(f"qsup: delivered {summary.get('delivered')}, quarantined {summary.get('quarantined')}, "
              f"crashes {summary.get('crashes')}")
        out = {"messages": args.messages, "workers": args.workers, "clamd_alone_s": alone, "qsup_s": ours,
               "kb": args.kb, "clamd_cpu_alone": cpu_alone, "cpu_with_qsup": cpu_ours, "rate_alone": rate_alone, "rate_qsup": rate_ours, "ratio": ratio, "target": TARGET,
               "verdict": verdict, "summary": summary}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return 0 if verdict == "PASS" else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
