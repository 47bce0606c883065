"""qsup worker: each message through ``spamc -c -x``; the score is the verdict.

    python -m qsup_spamassassin.spamc_worker --spamc /usr/bin/spamc [--host H --port P] -- PATH…

Works one-shot (paths as arguments) and persistent (``QSUP_PERSISTENT=1``).
``spam S/T`` (exit 1) and ``ham S/T`` (exit 0) are verdicts; any other exit status
of spamc (69: spamd unreachable, 74, 75, …) ends this worker: a crash, never a
silent "ham".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess

from quarantine.worker import serve

_SCORE = re.compile(r"(-?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)")


def connection(args: argparse.Namespace) -> list[str]:
    """spamc's arguments for reaching spamd; -x: never "fail safe" into ham, -l: say why."""
    argv = [args.spamc, "-x", "-l", "-t", str(args.timeout)]
    if args.socket:
        return argv + ["-U", args.socket]
    return argv + (["-d", args.host] if args.host else []) + (["-p", str(args.port)] if args.port else [])


def ping(argv: list[str]) -> None:
    """Start-up: spamd must answer (``spamc -K``), else this is no message's fault."""
    cp = subprocess.run(argv + ["-K"], stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                        check=False)
    if cp.returncode != 0:
        err = cp.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SystemExit(f"spamd does not answer (spamc -K exit {cp.returncode}): {err[-1] if err else ''}")


def check(argv: list[str], path: str, timeout: float, max_size: int) -> str:
    if os.path.getsize(path) > max_size:
        return "unscanned too-big"
    with open(path, "rb") as fh:
        try:
            cp = subprocess.run(argv, stdin=fh, capture_output=True, timeout=timeout + 30, check=False)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"spamc gave no answer within {timeout + 30:.0f}s") from None
    out = cp.stdout.decode("ascii", "replace").strip()
    score = _SCORE.fullmatch(out)
    if cp.returncode in (0, 1) and score:
        return f"{'spam' if cp.returncode == 1 else 'ham'} {out}"
    err = cp.stderr.decode("utf-8", "replace").strip().splitlines()
    raise SystemExit(f"spamc exit {cp.returncode} ({out or 'no output'}): {err[-1] if err else ''}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qsup-spamc-worker")
    parser.add_argument("--spamc", default="spamc")
    parser.add_argument("--host", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--socket", default="")
    parser.add_argument("--username", default="")
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--max-size", type=int, default=512000)
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)
    reach = connection(args)
    command = reach + ["-c", "-s", str(args.max_size)] + (["-u", args.username] if args.username else [])
    serve(lambda path, qid: check(command, path, args.timeout, args.max_size),
          setup=lambda: ping(reach), argv=args.paths)


if __name__ == "__main__":
    main()
