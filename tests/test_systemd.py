"""systemd (docs/reference.md §8): `qsup run` under a NOTIFY_SOCKET the test binds: READY=1
once serving, STATUS= lines, WATCHDOG=1 at half of $WATCHDOG_USEC from the loop
itself (a stuck loop stops pinging), RELOADING=1 on SIGHUP, STOPPING=1 on stop. And
the shipped unit passes `systemd-analyze verify`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO, plugin_dist, wait_for
from sockets import DatagramSink

from quarantine.demo import make_message
from quarantine.sdnotify import SdNotifier

pytestmark = pytest.mark.timeout(120)
UNIT = Path(__file__).parent.parent / "examples" / "systemd" / "qsup.service"


class Notified:
    """The notifications qsup sent to *sink*: (arrival time, {KEY: value})."""

    def __init__(self, sink: DatagramSink):
        self.sink = sink

    def all(self) -> list[tuple[float, dict[str, str]]]:
        return [(t, dict(line.split("=", 1) for line in data.decode().splitlines()))
                for t, data in list(self.sink.received)]

    def times(self, key: str, value: str | None = None, since: float = 0.0) -> list[float]:
        return [t for t, msg in self.all() if key in msg and (value is None or msg[key] == value) and t >= since]

    def wait(self, key: str, value: str | None = None, since: float = 0.0, timeout: float = 30) -> float:
        wait_for(lambda: self.times(key, value, since), timeout, f"{key}={value or '…'}")
        return self.times(key, value, since)[0]


def start_run(qsup, *args: str, env: dict | None = None, log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--poll-interval", "0.1", *args),
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})},
                                cwd=str(qsup.state.parent))


def add_messages(spool: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (spool / "tmp" / name).write_bytes(make_message(1000 + i))
        os.rename(spool / "tmp" / name, spool / "incoming" / name)


def test_run_says_ready_pings_the_watchdog_reports_status_reloads_and_stops(qsup, make_spool, tmp_path):
    make_spool(60, {5: "segv"})
    seen_env = tmp_path / "worker-env"
    worker = tmp_path / "envworker.py"
    worker.write_text("import os, sys\n"
                      "with open(os.environ['SEEN_ENV'], 'a') as fh:\n"
                      "    fh.write(repr([os.environ.get(k) for k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC')]) + '\\n')\n"
                      "os.execv(sys.executable, [sys.executable, '-m', 'quarantine.demo_scanner', *sys.argv[1:]])\n")
    with DatagramSink("notify") as sink:
        note = Notified(sink)
        run = start_run(qsup, "--worker", f"{sys.executable} {worker}", log=tmp_path / "err",
                        env={"NOTIFY_SOCKET": sink.path, "WATCHDOG_USEC": "2000000", "SEEN_ENV": str(seen_env)})
        try:
            ready = note.wait("READY", "1")
            time.sleep(4.5)
            pings = note.times("WATCHDOG", "1", since=ready)
            gaps = [b - a for a, b in zip(pings, pings[1:])]
            # at half of 2 s (plus what a busy machine adds to a pass), from the loop
            assert len(pings) >= 4 and max(gaps) <= 1.25, gaps
            statuses = [(t, m["STATUS"]) for t, m in note.all() if "STATUS" in m]
            assert statuses and all(b - a >= 0.9 for (a, _), (b, _) in zip(statuses, statuses[1:]))
            assert "in flight" in statuses[-1][1] and "breaker closed" in statuses[-1][1]
            wait_for(lambda: "quarantined 1" in [m for t, m in note.all() if "STATUS" in m][-1]["STATUS"], 20,
                     "the status to show the quarantine")

            hup = time.monotonic()
            run.send_signal(signal.SIGHUP)
            reloading = note.wait("RELOADING", "1", since=hup)
            msg = next(m for t, m in note.all() if t == reloading and "RELOADING" in m)
            assert abs(int(msg["MONOTONIC_USEC"]) / 1e6 - hup) < 5  # CLOCK_MONOTONIC, as systemd's
            note.wait("READY", "1", since=reloading)

            term = time.monotonic()
            run.send_signal(signal.SIGTERM)
            note.wait("STOPPING", "1", since=term)
            assert run.wait(30) == 0, (tmp_path / "err").read_text()[-2000:]
        finally:
            run.kill()
            run.wait()
    assert note.times("READY", "1")[0] == ready  # READY=1: once at start, once after the reload
    assert len(note.times("READY", "1")) == 2
    assert seen_env.read_text() and set(seen_env.read_text().splitlines()) == {"[None, None]"}  # not inherited


def test_an_abstract_notify_socket_is_used_and_without_watchdog_usec_nothing_pings(qsup, make_spool, tmp_path):
    make_spool(5, {})
    with DatagramSink(abstract=True) as sink:
        note = Notified(sink)
        run = start_run(qsup, "--worker", DEMO, env={"NOTIFY_SOCKET": sink.address}, log=tmp_path / "err")
        try:
            note.wait("READY", "1")
            time.sleep(1.5)
            run.send_signal(signal.SIGTERM)
            note.wait("STOPPING", "1")
            assert run.wait(30) == 0
        finally:
            run.kill()
            run.wait()
    assert note.times("WATCHDOG") == []


STUCK_PLUGIN = """\
import os, time
from quarantine.hookspecs import hookimpl

@hookimpl
def qsup_verdict(qid, verdict, queue):
    # holds the supervisor loop (it calls this hook) while the flag file exists
    flag = os.environ['STUCK_FLAG']
    while os.path.exists(flag):
        open(flag + '.held', 'w').close()
        time.sleep(0.05)
"""


def test_the_watchdog_stops_while_the_loop_is_stuck_and_resumes_after(qsup, make_spool, tmp_path):
    make_spool(3, {})
    flag = tmp_path / "stuck"
    env = plugin_dist(tmp_path, "qsup_stuck", {"stuck": "qsup_stuck"}, {"qsup_stuck": STUCK_PLUGIN})
    with DatagramSink("notify") as sink:
        note = Notified(sink)
        env.update(NOTIFY_SOCKET=sink.path, WATCHDOG_USEC="1000000", STUCK_FLAG=str(flag))
        # metrics on: the server's thread lives on while the loop is stuck, and must not ping
        run = start_run(qsup, "--worker", DEMO, "--metrics-listen", "127.0.0.1:0", env=env, log=tmp_path / "err")
        try:
            ready = note.wait("READY", "1")
            wait_for(lambda: not os.listdir(qsup.spool / "incoming"), 20, "the first messages delivered")
            note.wait("WATCHDOG", "1", since=ready + 1)
            flag.touch()
            add_messages(qsup.spool, ["STUCK1"])
            wait_for(Path(f"{flag}.held").exists, 20, "the loop to be held in the hook")
            held = time.monotonic()
            time.sleep(3)
            assert note.times("WATCHDOG", since=held + 0.1) == []  # 3 s, with a ping due every 0.5 s
            assert run.poll() is None
            flag.unlink()
            resumed = note.wait("WATCHDOG", "1", since=time.monotonic(), timeout=5)
            assert note.wait("WATCHDOG", "1", since=resumed + 0.01, timeout=5) - resumed <= 0.8
            run.send_signal(signal.SIGTERM)
            assert run.wait(30) == 0, (tmp_path / "err").read_text()[-2000:]
        finally:
            run.kill()
            run.wait()
    assert (qsup.spool / "outgoing" / "STUCK1").exists()


def test_the_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "1":
            pytest.fail("systemd-analyze not installed: .ci/run installs systemd")
        pytest.skip("systemd-analyze not installed")
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "ExecReload=/bin/kill -HUP $MAINPID",
                 "Restart=on-failure", "KillMode=mixed"):
        assert f"\n{line}\n" in text, line
    # verify checks that ExecStart's binary exists: point it at the qsup installed here
    qsup_bin = shutil.which("qsup") or str(Path(sys.executable).with_name("qsup"))
    unit = tmp_path / "qsup.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/qsup ", f"ExecStart={qsup_bin} "))
    # --man=no: the man page is installed by a package, not by pip install -e
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_the_service_managers_variables_leave_the_environment_and_a_foreign_watchdog_is_ignored():
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1", "PATH": "/bin"}
    foreign = SdNotifier.from_environ(env)
    assert env == {"PATH": "/bin"}  # workers inherit none of them
    assert foreign.enabled and foreign.watchdog_interval is None  # pid 1's watchdog, not ours
    mine = SdNotifier.from_environ({"NOTIFY_SOCKET": "@qsup", "WATCHDOG_USEC": "30000000",
                                  "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 15.0
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append
    logging.getLogger("qsup").addHandler(handler)
    try:
        assert not foreign.send("READY=1") and not foreign.send("WATCHDOG=1")
    finally:
        logging.getLogger("qsup").removeHandler(handler)
    assert len([r for r in said if "cannot notify" in r.getMessage()]) == 1  # said once
    assert SdNotifier.from_environ({}).send("READY=1") is False  # no service manager: nothing to do
