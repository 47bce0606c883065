"""The pid lock of the state directory and of the Postfix hold queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from quarantine.errors import StateLocked
from quarantine.lock import PidLock

pytestmark = pytest.mark.timeout(60)


def test_one_holder_named_by_pid_until_it_releases(tmp_path):
    path = str(tmp_path / "lock")
    assert PidLock.holder(path) is None  # no file yet
    first = PidLock(path)
    first.acquire("state directory X")
    assert first.held and PidLock.holder(path) == os.getpid()
    with pytest.raises(StateLocked, match=rf"^the queue Y is in use by another qsup \(pid {os.getpid()}\): one per queue$"):
        PidLock(path).acquire("the queue Y", rule="one per queue")
    first.release()
    first.release()  # twice is harmless
    assert not first.held and PidLock.holder(path) is None
    assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"  # a stale pid locks nobody out
    second = PidLock(path)
    second.acquire("state directory X")
    second.release()


def test_a_holder_killed_with_sigkill_leaves_the_lock_free(tmp_path):
    path = str(tmp_path / "lock")
    child = subprocess.Popen(
        [sys.executable, "-c", f"from quarantine.lock import PidLock; PidLock({path!r}).acquire('x');"
                               "print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        assert PidLock.holder(path) == child.pid
        with pytest.raises(StateLocked, match=f"pid {child.pid}"):
            PidLock(path).acquire("x")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert PidLock.holder(path) is None
    PidLock(path).acquire("x")


def test_a_symlink_is_never_taken_for_the_lock_file(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    os.symlink(target, tmp_path / "lock")
    with pytest.raises(OSError):
        PidLock(str(tmp_path / "lock")).acquire("x")
    assert PidLock.holder(str(tmp_path / "lock")) is None and target.read_text() == "keep me\n"
