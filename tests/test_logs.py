"""Log lines (docs/reference.md §8): a timestamp on each, syslog through the local socket with
the mail facility, the journal's native protocol with the queue ID as a field. The
sockets are real ones the tests bind; the drains are real, with a real crash."""

from __future__ import annotations

import io
import logging
import re

import pytest
from conftest import DEMO, wait_for
from sockets import DatagramSink, journal_entry

from quarantine import logs
from quarantine.ratecap import RateCap

pytestmark = pytest.mark.timeout(120)

STDERR_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ qsup\[(\d+)\]: (DEBUG|INFO|WARNING|ERROR): \S")
RFC3164 = re.compile(r"<(\d{1,3})>(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ 123]\d) "
                     r"\d\d:\d\d:\d\d qsup\[(\d+)\]: (DEBUG|INFO|WARNING|ERROR): (.+)")
POISON = 7


def test_stderr_lines_have_a_timestamp_and_the_pid(qsup, make_spool):
    make_spool(40, {POISON: "segv"})
    proc = qsup.drain("--worker", DEMO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(f"quarantined M{POISON:06d}" in line for line in lines), proc.stderr
    for line in lines:
        assert STDERR_LINE.match(line), line
    assert len({STDERR_LINE.match(line).group(1) for line in lines}) == 1  # qsup's pid, not a worker's


def test_syslog_gets_rfc3164_lines_with_the_mail_facility_and_the_queue_id(qsup, make_spool):
    make_spool(40, {POISON: "segv"})
    with DatagramSink("log") as sink:
        proc = qsup.drain("--worker", DEMO, "--log", "syslog", "--log-socket", sink.path)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: any(b"quarantined" in m for m in sink.messages()), 10, "the quarantine line")
        lines = [m.decode() for m in sink.messages()]
    assert proc.stderr == ""  # everything went to the socket
    assert qsup.summary(proc)["quarantined"] == 1
    parsed = [RFC3164.fullmatch(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed) if not m]
    for m in parsed:
        pri, level = int(m.group(1)), m.group(5)
        assert pri // 8 == 2, m.group(0)  # facility mail
        assert pri % 8 == {"ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}[level]
    quarantined = [m for m in parsed if m.group(6).startswith("quarantined ")]
    assert len(quarantined) == 1 and f"M{POISON:06d}" in quarantined[0].group(6)
    assert quarantined[0].group(5) == "WARNING"


def test_journald_gets_structured_fields_with_qsup_queue_id(qsup, make_spool):
    make_spool(40, {POISON: "segv"})
    with DatagramSink("journal") as sink:
        proc = qsup.drain("--worker", DEMO, "--log", "journald", "--log-socket", sink.path)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: any(b"quarantined" in m for m in sink.messages()), 10, "the quarantine entry")
        entries = [journal_entry(m) for m in sink.messages()]
    assert proc.stderr == ""
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == "qsup" and entry["SYSLOG_FACILITY"] == "2"
        assert entry["PRIORITY"] in {"3", "4", "6"} and entry["CODE_FILE"].endswith(".py")
    quarantined = [e for e in entries if e["MESSAGE"].startswith("quarantined ")]
    assert len(quarantined) == 1
    assert quarantined[0]["QSUP_QUEUE_ID"] == f"M{POISON:06d}" and quarantined[0]["PRIORITY"] == "4"
    crashes = [e for e in entries if "crashed" in e["MESSAGE"]]
    assert crashes and all("QSUP_QUEUE_ID" not in e for e in crashes)  # about a batch, not a message


def test_an_unreachable_log_socket_is_exit_2_naming_it(qsup, make_spool, tmp_path):
    make_spool(5, {})
    proc = qsup.drain("--worker", DEMO, "--log", "syslog", "--log-socket", str(tmp_path / "nobody"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"qsup: error: log_socket: cannot log to syslog socket {tmp_path / 'nobody'}: No such file or directory"]
    assert not (qsup.state / "data.mdb").exists()  # refused before the state was touched


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(f"qsup.test.{name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_rate_capped_lines_keep_their_queue_id_and_the_count_line_has_none():
    with DatagramSink("journal") as sink:
        handler = logs.handler_for("journald", sink.path)
        said = RateCap(_logger(handler, "cap"), per_window=3, window=60.0, clock=iter(range(0, 1000, 10)).__next__)
        for n in range(7):  # the clock moves 10 s a line: lines 0-2 said, 3-5 counted, 6 says the count
            said(logging.WARNING, "%s is infected (EICAR)", f"Q{n}", qid=f"Q{n}")
        wait_for(lambda: len(sink.messages()) == 5, 5, "five entries")
        entries = [journal_entry(m) for m in sink.messages()]
        handler.close()
    assert [e.get("QSUP_QUEUE_ID") for e in entries] == ["Q0", "Q1", "Q2", None, "Q6"]
    assert entries[3]["MESSAGE"].startswith("… and 3 more like it")


def test_a_multi_line_message_is_one_event_everywhere():
    record = logging.makeLogRecord({"msg": "first\nsecond", "levelno": logging.ERROR, "levelname": "ERROR",
                                    "qid": "ABC123"})
    with DatagramSink("journal") as sink:
        handler = logs.handler_for("journald", sink.path)
        handler.emit(record)
        wait_for(lambda: sink.messages(), 5, "the entry")
        entry = journal_entry(sink.messages()[0])
        handler.close()
    assert entry["MESSAGE"] == "first\nsecond" and entry["QSUP_QUEUE_ID"] == "ABC123"  # the binary form
    line = logs.rfc3164(record).decode()
    assert "\n" not in line and line.endswith("ERROR: ABC123: first\\nsecond")  # the ID named, once


def test_when_the_syslog_daemon_goes_away_lines_go_to_stderr_and_it_is_tried_again():
    err = io.StringIO()
    now = [0.0]
    with DatagramSink("log") as sink:
        handler = logs.SocketHandler("syslog", sink.path, clock=lambda: now[0])
        handler.fallback.setStream(err)
        logger = _logger(handler, "gone")
        logger.warning("one")
        wait_for(lambda: sink.messages(), 5, "the first line")
    logger.warning("two")  # the socket is gone: stderr, and a line saying so
    now[0] = logs.RETRY_AFTER / 2
    logger.warning("three")  # not tried again yet
    lines = err.getvalue().splitlines()
    assert lines[0].endswith("WARNING: two") and "cannot log to" in lines[1] and lines[2].endswith("WARNING: three")
    with DatagramSink("log") as again:
        handler.path = again.path
        now[0] = logs.RETRY_AFTER + 1
        logger.warning("four")
        wait_for(lambda: again.messages(), 5, "the line after the retry")
        assert again.messages()[0].decode().endswith("WARNING: four")
    assert len(err.getvalue().splitlines()) == 3
    handler.close()
