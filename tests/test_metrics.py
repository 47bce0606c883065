"""Prometheus metrics (docs/reference.md §8): /metrics scraped from a real qsup over HTTP on
127.0.0.1 while it drains, the contract's names, the counts equal to the drain's
summary, `promtool check metrics` clean; the example alerts pass promtool."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import DEMO, wait_for
from prometheus_client.parser import text_string_to_metric_families

from quarantine.metrics import parse_listen
from quarantine.telemetry import Histogram

pytestmark = pytest.mark.timeout(180)
ALERTS = Path(__file__).parent.parent / "examples" / "prometheus"
POISON = {40: "segv", 150: "segv", 260: "abort"}

# Runs the real command line, then holds the exit (the metrics server lives on)
# until the test has scraped the final values: qsup serves them until it exits.
HOLD_EXIT = """\
import os, sys, time
from quarantine.cli import main
try:
    main()
finally:
    sys.stdout.flush()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["RELEASE_EXIT"]) and time.monotonic() < deadline:
        time.sleep(0.02)
"""


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "1":
            pytest.fail("promtool not installed: .ci/run installs the prometheus package")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return resp.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None  # not serving yet, or no more


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def by_label(values: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in values.items() if n == name}


def one(values: dict, name: str) -> float:
    return values[(name, ())]


def test_metrics_during_a_300_message_drain_match_its_summary_and_pass_promtool(qsup, make_spool, tmp_path):
    check = promtool()
    make_spool(300, POISON)
    port, release = free_port(), tmp_path / "release-exit"
    hold = tmp_path / "hold_exit.py"
    hold.write_text(HOLD_EXIT)
    out, err = tmp_path / "out", tmp_path / "err"
    argv = [sys.executable, str(hold), "--state", str(qsup.state), "drain", "--spool", str(qsup.spool),
            "--worker", f"{DEMO} --delay 0.02", "--metrics-listen", f"127.0.0.1:{port}", "--json"]
    with open(out, "w") as o, open(err, "w") as e:
        drain = subprocess.Popen(argv, stdout=o, stderr=e, env={**os.environ, "RELEASE_EXIT": str(release)},
                                 cwd=str(tmp_path))
    during = []
    try:
        while not out.read_text().rstrip().endswith("}"):  # the summary is printed at the end
            assert drain.poll() is None, err.read_text()[-2000:]
            if (text := scrape(port)) is not None:
                during.append(text)
            time.sleep(0.1)
        final = scrape(port)
        release.touch()
        assert drain.wait(30) == 0, err.read_text()[-2000:]
    finally:
        drain.kill()
        drain.wait()
    summary = json.loads(out.read_text())
    assert final is not None
    mid = [samples(t) for t in during]
    assert any(one(s, "qsup_inflight_messages") > 0 for s in mid)  # scraped while batches ran
    delivered = [by_label(s, "qsup_messages_total", "outcome")["delivered"] for s in mid]
    assert delivered == sorted(delivered) and delivered[0] < 297  # counters only go up

    end = samples(final)
    assert summary["delivered"] == 297 and summary["quarantined"] == 3
    assert by_label(end, "qsup_messages_total", "outcome") == {
        "delivered": summary["delivered"], "tagged": 0, "quarantined": summary["quarantined"], "released": 0}
    crashes = by_label(end, "qsup_worker_crashes_total", "kind")
    assert set(crashes) == {"signal", "exit", "memory", "timeout", "killed"}
    assert sum(crashes.values()) == summary["crashes"] == crashes["signal"] > 0
    canary = by_label(end, "qsup_canary_runs_total", "result")
    assert sum(canary.values()) == summary["canary_runs"] and canary["failed"] == 0
    assert by_label(end, "qsup_quarantine_messages", "kind") == {"poison": 3, "infected": 0, "spam": 0}
    assert one(end, "qsup_queue_depth_messages") == 0 and one(end, "qsup_inflight_messages") == 0
    assert one(end, "qsup_breaker_open") == 0
    batches = one(end, "qsup_batch_duration_seconds_count")
    assert batches >= 10 and by_label(end, "qsup_batch_duration_seconds_bucket", "le")["+Inf"] == batches
    assert one(end, "qsup_batch_duration_seconds_sum") > 0

    for text in (during[len(during) // 2], final):
        lint = subprocess.run([check, "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=60)
        assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), lint.stdout + lint.stderr


def test_a_release_while_running_is_counted_and_the_quarantine_gauge_drops(qsup, make_spool, tmp_path):
    ids = make_spool(30, {3: "segv"})
    port = free_port()
    with open(tmp_path / "err", "w") as err:
        run = subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--worker", DEMO, "--poll-interval",
                                         "0.1", "--metrics-listen", f"127.0.0.1:{port}"),
                               stdout=subprocess.DEVNULL, stderr=err, cwd=str(tmp_path))
    try:
        def gauge() -> float | None:
            text = scrape(port)
            return by_label(samples(text), "qsup_quarantine_messages", "kind")["poison"] if text else None

        wait_for(lambda: gauge() == 1, 60, "the poison message in the quarantine gauge")
        # --no-scan: scanned again, the poison would crash its way back into the quarantine
        released = qsup("release", ids[3], "--no-scan", "--spool", str(qsup.spool))
        assert released.returncode == 0, released.stderr
        wait_for(lambda: gauge() == 0, 20, "the gauge to drop")
        counted = by_label(samples(scrape(port)), "qsup_messages_total", "outcome")
        assert counted["released"] == 1 and counted["quarantined"] == 1
    finally:
        run.terminate()
        run.wait(30)


def test_the_breaker_gauge_is_1_while_the_scanner_cannot_start(qsup, make_spool, tmp_path):
    make_spool(10, {})
    port = free_port()
    with open(tmp_path / "err", "w") as err:
        run = subprocess.Popen(qsup.argv("run", "--spool", str(qsup.spool), "--worker", str(tmp_path / "missing"),
                                         "--metrics-listen", f"127.0.0.1:{port}"),
                               stdout=subprocess.DEVNULL, stderr=err, cwd=str(tmp_path))
    try:
        wait_for(lambda: (t := scrape(port)) is not None and one(samples(t), "qsup_breaker_open") == 1, 30,
                 "qsup_breaker_open 1")
        end = samples(scrape(port))
        assert by_label(end, "qsup_messages_total", "outcome")["quarantined"] == 0
    finally:
        run.terminate()
        run.wait(30)


@pytest.mark.parametrize("listen, why", [
    ("nonsense", "metrics_listen: expected HOST:PORT, not 'nonsense'"),
    ("127.0.0.1:99999", "metrics_listen: expected HOST:PORT, not '127.0.0.1:99999'"),
    ("busy", "metrics_listen: cannot listen on 127.0.0.1:{port}: Address already in use"),
])
def test_a_bad_or_busy_metrics_listen_is_exit_2_naming_it(qsup, make_spool, listen, why):
    make_spool(3, {})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if listen == "busy":
            listen = f"127.0.0.1:{port}"
        proc = qsup.drain("--worker", DEMO, "--metrics-listen", listen)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"qsup: error: {why.format(port=port)}"


def test_the_example_alerts_pass_promtool_check_and_their_unit_tests():
    check = promtool()
    rules = subprocess.run([check, "check", "rules", "alerts.yml"], cwd=ALERTS, capture_output=True, text=True,
                           timeout=60)
    assert rules.returncode == 0 and "SUCCESS: 3 rules found" in rules.stdout, rules.stdout + rules.stderr
    names = [line.split(":", 1)[1].strip() for line in (ALERTS / "alerts.yml").read_text().splitlines()
             if line.strip().startswith("- alert:")]
    assert names == ["QsupBreakerOpen", "QsupQuarantineGrowing", "QsupWorkerCrashRate"]
    tests = subprocess.run([check, "test", "rules", "alerts_test.yml"], cwd=ALERTS, capture_output=True,
                           text=True, timeout=60)
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_listen_addresses_and_histogram_buckets():
    assert parse_listen("127.0.0.1:9640") == ("127.0.0.1", 9640)
    assert parse_listen("[::1]:9640") == ("::1", 9640)
    assert parse_listen(":9640") == ("0.0.0.0", 9640)  # every address, as exporters write it
    hist = Histogram((0.5, 1.0))
    for value in (0.5, 0.7, 1.0, 3.0):
        hist.observe(value)
    assert hist.state == ((1, 2, 1), 5.2)  # "le": 0.5 is in the first bucket, 1.0 in the second
