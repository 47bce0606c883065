"""The fleet (docs/reference.md §10): two gateways, each with its own spool and
state, sharing poison fingerprints through a real redis-server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import redis
from conftest import DEMO, Qsup, assert_conserved, wait_for

from quarantine.demo import build_spool, make_message
from quarantine.fleet import PREFIX
from quarantine.fleetprint import MIN_BODY, body_fingerprint

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
BLIND = DEMO + " --no-progress"  # a one-shot worker without progress lines: bisection
COMMON = ("--worker", BLIND, "--workers", "4", "--batch-size", "30", "--storm-limit", "100",
          "--timeout", "5")
POISON_A = {i * 25 + 3: ("segv" if i % 2 else "abort") for i in range(20)}  # 20 of 500

pytestmark = [pytest.mark.skipif(not os.path.exists(REDIS), reason="no redis-server"),
              pytest.mark.timeout(120)]


class RedisServer:
    """A throw-away redis-server on a free port, without persistence."""

    def __init__(self, where: Path, password: str | None = None):
        self.where, self.password = where, password
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.where)]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        wait_for(lambda: _answers(client), 10, "redis-server to answer")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2,
                           decode_responses=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def server(tmp_path):
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()


def gateway(tmp_path: Path, name: str) -> Qsup:
    (tmp_path / name).mkdir()
    return Qsup(tmp_path / name)


def relayed(src: Path, dst: Path, qid: str, hop: str) -> None:
    """The message in *src* as another gateway receives it: a new queue ID, a new
    Received line and Message-ID, LF line ends; the same body."""
    head, _, body = src.read_bytes().partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"message-id:")]
    lines = [f"Received: from {hop}.example.com by mx.{hop}.example.net; id {qid}".encode(),
             f"Message-ID: <{qid}.{hop}@example.net>".encode()] + lines
    tmp = dst / "tmp" / qid
    tmp.write_bytes(b"\n".join(lines) + b"\n\n" + body.replace(b"\r\n", b"\n"))
    os.rename(tmp, dst / "incoming" / qid)


def spool_b(gw: Qsup, a_spool: Path, a_ids: list[str], poison: dict[int, str], others: int = 480) -> set[str]:
    """*others* innocents of gateway B's own, and A's poison relayed: the poison IDs."""
    build_spool(str(gw.spool), 0, {})
    for i in range(others):
        qid = f"B{i:06d}"
        (gw.spool / "tmp" / qid).write_bytes(make_message(10_000 + i))
        os.rename(gw.spool / "tmp" / qid, gw.spool / "incoming" / qid)
    bad = set()
    for n, i in enumerate(sorted(poison)):
        qid = f"BP{n:04d}"
        relayed(a_spool / "quarantine" / a_ids[i], gw.spool, qid, "relay-b")
        bad.add(qid)
    return bad


def drain(gw: Qsup, srv_url: str | None, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    fleet = ("--fleet", srv_url, "--fleet-name", name) if srv_url else ()
    proc = gw.drain(*COMMON, *fleet, *extra, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, gw.summary(proc)


def entries(srv: RedisServer) -> dict[str, dict[str, dict]]:
    client = srv.client()
    return {k[len(PREFIX):]: {g: json.loads(v) for g, v in client.hgetall(k).items()}
            for k in client.scan_iter(PREFIX + "*")}


@pytest.fixture
def gateway_a(tmp_path, server):
    """Gateway A has drained 500 messages, 20 of them poison, and told the fleet."""
    gw = gateway(tmp_path, "a")
    ids = build_spool(str(gw.spool), 500, POISON_A)
    drain(gw, server.url, "A")
    where = assert_conserved(gw.spool, ids)
    assert where["quarantine"] == {ids[i] for i in POISON_A}
    return gw, ids


# ------------------------------------------------------------------ tests
def test_fingerprint_is_the_body_whatever_the_relay(tmp_path):
    msg = make_message(7)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(msg)
    b.write_bytes(b"Received: from elsewhere\nMessage-ID: <x@y>\n\n" + msg.partition(b"\r\n\r\n")[2]
                  .replace(b"\r\n", b"\n"))
    assert body_fingerprint(str(a)) == body_fingerprint(str(b)) is not None
    short = tmp_path / "short"
    short.write_bytes(b"Subject: hi\r\n\r\n" + b"x " * (MIN_BODY // 2 - 1) + b"\r\n")
    assert body_fingerprint(str(short)) is None  # too short to tell apart: never matched
    (tmp_path / "empty").write_bytes(b"Subject: only headers\r\n")
    assert body_fingerprint(str(tmp_path / "empty")) is None


@pytest.mark.parametrize("trust", ["solo", "quarantine"])
def test_gateway_b_learns_from_a(tmp_path, server, gateway_a, trust):
    a, a_ids = gateway_a
    published = entries(server)
    assert len(published) == 20 and all(set(w) == {"A"} for w in published.values())
    assert {w["A"]["verdict"] for w in published.values()} == {"confirmed"}
    b = gateway(tmp_path, "b")
    bad = spool_b(b, a.spool, a_ids, POISON_A)
    _, summary = drain(b, server.url, "B", "--fleet-trust", trust)
    where = assert_conserved(b.spool, [f"B{i:06d}" for i in range(480)] + sorted(bad))
    assert where["quarantine"] == bad and len(where["outgoing"]) == 480
    assert summary["crashes"] <= (20 if trust == "solo" else 0), summary
    print(f"gateway B, fleet_trust={trust}: {summary['crashes']} worker crashes")
    rows = b.listing()
    assert all(r["evidence"]["fleet"]["confirmed_by"] == ["A"] for r in rows), rows[:2]
    words = entries(server)
    if trust == "solo":  # B ran each and confirmed it: both gateways named
        assert all(set(w) == {"A", "B"} and w["B"]["qid"] in bad for w in words.values())
    else:  # quarantined unrun: B has not confirmed anything itself
        assert all(set(w) == {"A"} for w in words.values())
        assert all(r["why"] == "fleet" for r in rows)


def test_redis_down_mid_drain_loses_nothing(tmp_path, server, gateway_a):
    a, a_ids = gateway_a
    b = gateway(tmp_path, "b")
    bad = spool_b(b, a.spool, a_ids, POISON_A)
    argv = b.argv("drain", "--spool", str(b.spool), "--json", *COMMON, "--fleet", server.url,
                  "--fleet-name", "B")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(b.state.parent))
    wait_for(lambda: len(os.listdir(b.spool / "outgoing")) >= 100, 60, "B under way")
    server.stop()  # Redis dies in the middle of B's drain
    out, err = proc.communicate(timeout=100)
    assert proc.returncode == 0, err[-3000:]
    where = assert_conserved(b.spool, [f"B{i:06d}" for i in range(480)] + sorted(bad))
    assert where["quarantine"] == bad and len(where["outgoing"]) == 480
    assert err.count("is not answering") == 1, err[-2000:]  # said once
    # Gateway A confirms new poison while Redis is down: kept, sent once it is back.
    new = {f"A2{i:04d}": make_message(20_000 + i, {5: "segv", 40: "abort"}.get(i)) for i in range(60)}
    for qid, data in new.items():
        (a.spool / "tmp" / qid).write_bytes(data)
        os.rename(a.spool / "tmp" / qid, a.spool / "incoming" / qid)
    drain(a, server.url, "A")
    assert assert_conserved(a.spool, list(new))["quarantine"] >= {"A20005", "A20040"}
    server.start()  # back, empty (no persistence)
    drain(a, server.url, "A")  # nothing to scan: the outbox goes out
    words = entries(server)
    assert len(words) == 2 and all(set(w) == {"A"} for w in words.values())
    assert {w["A"]["qid"] for w in words.values()} == {"A20005", "A20040"}


def test_poisoned_fleet_delivers_innocents_alone(tmp_path, server):
    c = gateway(tmp_path, "c")
    ids = build_spool(str(c.spool), 90, {})
    client = server.client()
    lies = [body_fingerprint(str(c.spool / "incoming" / q)) for q in ids[:10]]
    for fp in lies:  # someone wrote innocent fingerprints into the fleet
        client.hset(PREFIX + fp, "X", json.dumps({"verdict": "confirmed", "kind": "signal",
                                                  "signal": "SIGSEGV"}))
    _, summary = drain(c, server.url, "C")
    where = assert_conserved(c.spool, ids)
    assert not where["quarantine"] and len(where["outgoing"]) == 90
    assert summary["crashes"] == 0
    words = entries(server)
    assert all(words[fp]["C"]["verdict"] == "disputed" for fp in lies)
    assert all(set(words[fp]) == {"X", "C"} for fp in lies)


def test_wrong_password_is_one_line_exit_2(tmp_path):
    srv = RedisServer(tmp_path, password="right-one").start()
    try:
        gw = gateway(tmp_path, "g")
        build_spool(str(gw.spool), 3, {})
        secret = tmp_path / "fleet.secret"
        secret.write_text("wrong-one\n")
        proc = gw.drain("--worker", DEMO, "--fleet", srv.url, "--fleet-auth-file", str(secret))
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and "credentials" in proc.stderr, proc.stderr
        proc = gw.drain("--worker", DEMO, "--fleet", f"redis://:right-one@127.0.0.1:{srv.port}/0")
        assert proc.returncode == 2 and "no password on the command line" in proc.stderr
        assert "right-one" not in proc.stderr
        proc = gw.drain("--worker", DEMO, "--fleet", f"rediss://127.0.0.1:{srv.port}/0")
        assert proc.returncode == 2 and "TLS failed" in proc.stderr, proc.stderr  # a plain server
        secret.write_text("right-one\n")
        proc = gw.drain("--worker", DEMO, "--fleet", srv.url, "--fleet-auth-file", str(secret))
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        srv.stop()
