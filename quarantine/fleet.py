"""The fleet: gateways that learn from each other through Redis (docs/reference.md §10).

A message's *fleet fingerprint* (:mod:`quarantine.fleetprint`) is a hash of its
body, so the same message relayed through other gateways matches.

A confirmed poison message (the canary agreed) is published as one field of the
Redis hash ``qsup:fleet:FP``, named for the gateway: its crash kind, signal,
scanner identity and time, with ``verdict = confirmed``; a known message that
passed alone here is the same field with ``verdict = disputed``. The hash expires
``fleet_ttl`` seconds after its last write. What is to be published waits in the
``fleet`` database of the state (key: the fingerprint, the latest word wins), so
a Redis that is down loses nothing: it is sent once Redis is back.

Redis never slows the loop: every round trip is bounded (``ROUND_TRIP``), the
lookup of a batch is one pipelined round trip, and after a failure Redis is not
asked again until a backoff (:func:`quarantine.backoff.fleet_delay`) has passed.
Only this module imports redis, and only when ``fleet`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from quarantine.backoff import fleet_delay
from quarantine.config import Config
from quarantine.errors import ConfigError
from quarantine.fleetprint import body_fingerprint
from quarantine.ledger import Candidate, History
from quarantine.policy import Batch, Ending, Lane
from quarantine.ratecap import RateCap
from quarantine.store import Store, Txn

log = logging.getLogger("qsup")

DB = "fleet"
PREFIX = "qsup:fleet:"
ROUND_TRIP = 0.05  # seconds a lookup or publication may take before Redis counts as down
START_TIMEOUT = 2.0  # seconds the check at start may take (a TLS handshake, a slow link)
FLUSH_MAX = 500  # publications per round trip
PATH = ("fleet",)  # the isolation path of a message the fleet sent to run alone


# ------------------------------------------------------------------ entries
@dataclass(slots=True)
class Entry:
    """What the fleet says of one fingerprint: each gateway's word."""

    fp: str
    words: dict[str, dict] = field(default_factory=dict)  # gateway -> its publication

    @classmethod
    def parse(cls, fp: str, raw: dict) -> Entry:
        words = {}
        for gateway, text in raw.items():
            try:
                word = json.loads(text)
            except (ValueError, TypeError):
                continue  # not ours to read: ignored, never trusted
            if isinstance(word, dict):
                words[_text(gateway)] = word
        return cls(fp, words)

    def by(self, verdict: str) -> list[str]:
        return sorted(g for g, w in self.words.items() if w.get("verdict") == verdict)

    @property
    def trusted(self) -> bool:
        """Confirmed by more gateways than disputed it."""
        return len(self.by("confirmed")) > len(self.by("disputed"))

    def summary(self) -> dict:
        """What a quarantine record or a log line says of it."""
        first = next((self.words[g] for g in self.by("confirmed")), {})
        return {"fp": self.fp, "confirmed_by": self.by("confirmed"), "disputed_by": self.by("disputed"),
                "kind": first.get("kind"), "signal": first.get("signal"), "scanner": first.get("scanner")}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -------------------------------------------------------------- connection
def credentials(config: Config) -> tuple[str | None, str | None]:
    """(username, password) for Redis: the URL's own, else fleet_auth_file (the
    password on one line, or a user and a password on two), else
    $QSUP_FLEET_PASSWORD. Never the command line (config.check refuses it there)."""
    url = urlsplit(config.fleet or "")
    if url.password:
        return url.username or None, url.password
    if config.fleet_auth_file:
        try:
            with open(config.fleet_auth_file) as fh:
                lines = [line for line in fh.read().splitlines() if line]
        except OSError as exc:
            raise ConfigError(f"fleet_auth_file: cannot read {config.fleet_auth_file}: {exc.strerror}") from None
        if not 1 <= len(lines) <= 2:
            raise ConfigError(f"fleet_auth_file: {config.fleet_auth_file} must hold the password, or a "
                              "user and the password on two lines")
        return (lines[0], lines[1]) if len(lines) == 2 else (None, lines[0])
    return None, os.environ.get("QSUP_FLEET_PASSWORD") or None


def connect(config: Config, timeout: float):
    """A Redis client for *config*.fleet, every round trip bounded by *timeout*,
    with no retries of its own (the loop decides when to ask again)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if urlsplit(config.fleet).scheme not in ("redis", "rediss"):
        raise ConfigError(f"fleet: expected a redis:// or rediss:// URL, not {_safe(config.fleet)!r}")
    username, password = credentials(config)
    try:
        return redis.Redis.from_url(config.fleet, username=username, password=password,
                                    socket_timeout=timeout, socket_connect_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    except ValueError as exc:
        raise ConfigError(f"fleet: {_safe(config.fleet)}: {exc}") from None


def _safe(url: str) -> str:
    """*url* without its password, for a message."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}"
                          + (f":{parts.port}" if parts.port else "")).geturl()


def refusal(exc: Exception) -> str | None:
    """Why *exc* is a configuration error (a password or TLS setting Redis refuses),
    or None when it only says Redis is not there now."""
    import redis

    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return f"the server refused the credentials ({text.splitlines()[0] if text else 'auth'})"
    if "SSL" in text or "TLS" in text or "certificate" in text:
        return f"TLS failed ({text.splitlines()[0]})"
    return None


def _no_tls(url: str, exc: Exception) -> str | None:
    """A rediss:// handshake that timed out although the port takes connections:
    the server does not speak TLS (a setting to fix, not an outage)."""
    import redis

    parts = urlsplit(url)
    if parts.scheme != "rediss" or not isinstance(exc, (redis.TimeoutError, TimeoutError)):
        return None
    try:
        socket.create_connection((parts.hostname or "localhost", parts.port or 6379), START_TIMEOUT).close()
    except OSError:
        return None
    return "TLS failed (no TLS handshake from a server that takes connections: is it a redis:// one?)"


# -------------------------------------------------------------------- fleet
class Fleet:
    """The gateway's side of the fleet: lookups, publications, the link's health.
    With no ``fleet`` configured every method does nothing and reads nothing."""

    def __init__(self, config: Config, store: Store, scanner: Callable[[], str],
                 clock: Callable[[], float], wall: Callable[[], float]):
        self.config, self.store, self.scanner = config, store, scanner
        self.clock, self.wall = clock, wall
        self.on = bool(config.fleet)
        self.name = config.fleet_name or socket.gethostname()
        self._client = None
        self._down_since: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._waiting = True  # publications may wait in the outbox: look once at start
        self._said = RateCap(log, per_window=2, window=600.0, clock=clock)

    # ------------------------------------------------------------- start, stop
    def start(self) -> None:
        """Check the URL and the credentials (ConfigError, exit 2, when Redis refuses
        them), then send what an earlier run could not."""
        if not self.on:
            return
        client = connect(self.config, START_TIMEOUT)
        try:
            client.ping()
        except Exception as exc:  # redis.RedisError and the socket's own errors
            why = refusal(exc) or _no_tls(self.config.fleet, exc)
            if why:
                raise ConfigError(f"fleet: {_safe(self.config.fleet)}: {why}") from None
            self._went_down(exc)
        finally:
            client.close()
        self._client = connect(self.config, ROUND_TRIP)
        self.flush()

    def close(self) -> None:
        if self._client is not None:
            self.flush()
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ health
    @property
    def up(self) -> bool:
        """Whether Redis may be asked now: it answered last, or its backoff passed."""
        return self._client is not None and (self._down_since is None or self.clock() >= self._retry_at)

    def _went_down(self, exc: Exception) -> None:
        now = self.clock()
        self._failures += 1
        self._retry_at = now + fleet_delay(self._failures)
        if self._down_since is None:
            self._down_since = now
            self._said(logging.WARNING, "fleet: %s is not answering (%s): going on alone, publishing "
                       "later", _safe(self.config.fleet), str(exc).splitlines()[0] if str(exc) else
                       type(exc).__name__)

    def _came_back(self) -> None:
        if self._down_since is not None:
            self._said(logging.INFO, "fleet: %s answers again after %.0fs", _safe(self.config.fleet),
                       self.clock() - self._down_since)
        self._down_since, self._failures = None, 0

    def _round_trip(self, build: Callable) -> list | None:
        """One pipelined round trip (*build* queues the commands); None if Redis
        failed (said once, asked again after the backoff)."""
        if not self.up:
            return None
        pipe = self._client.pipeline(transaction=False)
        build(pipe)
        try:
            out = pipe.execute()
        except Exception as exc:  # down, slow, a reply that is not Redis's
            self._went_down(exc)
            return None
        self._came_back()
        return out

    # ------------------------------------------------------------------ lookup
    def lookup(self, paths: dict[str, str]) -> dict[str, Entry]:
        """The messages (queue ID -> a path to read it) the fleet confirms as
        poison, in one round trip."""
        if not self.on or not self.up:
            return {}
        fps = {qid: fp for qid, path in paths.items() if (fp := body_fingerprint(path))}
        if not fps:
            return {}
        order = list(fps.items())
        replies = self._round_trip(lambda p: [p.hgetall(PREFIX + fp) for _, fp in order])
        found = {}
        for (qid, fp), raw in zip(order, replies or ()):
            entry = Entry.parse(fp, raw or {})
            if entry.trusted:
                found[qid] = entry
        return found

    def hold(self, w: Txn, isolation, qid: str, fp: str, size: int, entry: Entry, pid: str,
             now: float) -> Candidate | None:
        """Act on a match in *w*. Trust ``solo``: *qid* runs alone at once, one crash
        short of K strikes, so one crash there convicts it (the environment's proof
        still needed). Trust ``quarantine``: the Candidate to quarantine unrun."""
        seen = entry.summary()
        hist = History.load(w, qid, fp)
        hist.extra["fleet"] = seen
        log.info("%s is known to the fleet (confirmed by %s): %s", qid, ", ".join(seen["confirmed_by"]),
                 "quarantined without running" if self.config.fleet_trust == "quarantine" else
                 "it runs alone", extra={"qid": qid})
        if self.config.fleet_trust == "quarantine":
            hist.attempt({"ending": "fleet", "signal": seen["signal"], "when": self.wall(), "batch": "",
                          "by": seen["confirmed_by"]}, False, self.config.history)
            hist.save(w)
            isolation.held[qid] = fp
            return Candidate(qid, fp, now, "", PATH, size)
        lent = max(0, self.config.strikes - 1 - hist.strikes)
        hist.strikes += lent
        hist.save(w)
        isolation.hold(w, Batch(ids=(qid,), lane=Lane.SUSPECT, path=PATH), {qid: fp}, pid)
        isolation.lent[qid] = lent
        return None

    # ------------------------------------------------------------ publications
    def before_quarantine(self, queue, cand: Candidate, evidence: dict) -> tuple[dict, str | None]:
        """Before *cand* is moved: its evidence with what the fleet said of it, and
        the fingerprint to publish once it is quarantined (None: nothing to publish,
        as for a message quarantined unrun on the fleet's word)."""
        if not self.on:
            return evidence, None
        if tuple(cand.path[:1]) == PATH:
            with self.store.read() as r:
                seen = History.load(r, cand.qid, cand.fp).extra.get("fleet")
            if seen:
                evidence = {**evidence, "fleet": seen}
        if evidence.get("fleet_trust") == "quarantine":
            return evidence, None
        return evidence, body_fingerprint(queue.scan_path(cand.qid))

    def confirmed(self, fp: str, record: dict) -> None:
        """A poison message quarantined here after the canary agreed: published."""
        if fp:
            word = {"verdict": "confirmed", "kind": record.get("why"), "signal": record.get("signal"),
                    "scanner": record.get("scanner") or self.scanner(), "time": self.wall(),
                    "qid": record.get("qid")}
            with self.store.write() as w:
                self._queue(w, fp, word)

    def disputed(self, w: Txn, path: str, qid: str) -> None:
        """A message the fleet sent to run alone passed here: disputed (in *w*)."""
        fp = body_fingerprint(path) if self.on else None
        if fp:
            log.info("%s passed alone: the fleet's entry is disputed by %s", qid, self.name, extra={"qid": qid})
            self._queue(w, fp, {"verdict": "disputed", "scanner": self.scanner(), "time": self.wall(),
                                "qid": qid})

    def _queue(self, w: Txn, fp: str, word: dict) -> None:
        w.put(DB, fp, word)
        self._waiting = True

    def tick(self, now: float) -> None:
        if self.on and self._waiting and self.up:
            self.flush()

    def flush(self) -> int:
        """Send what waits in the outbox; returns how many went."""
        if not (self.on and self.up):
            return 0
        with self.store.read() as r:
            batch = [item for _, item in zip(range(FLUSH_MAX), r.items(DB))]
        if not batch:
            self._waiting = False
            return 0
        ttl = max(1, int(self.config.fleet_ttl))

        def build(pipe):
            for fp, word in batch:
                pipe.hset(PREFIX + fp, self.name, json.dumps(word, separators=(",", ":")))
                pipe.expire(PREFIX + fp, ttl)

        if self._round_trip(build) is None:
            return 0
        with self.store.write() as w:
            for fp, word in batch:
                if w.get(DB, fp) == word:  # a newer word written meanwhile goes next time
                    w.delete(DB, fp)
        self._waiting = len(batch) == FLUSH_MAX
        return len(batch)


class FleetLane:
    """Where the fleet meets the loop: a clean batch's known messages leave it (alone
    at once, or quarantined unrun), and a known message that passed alone disputes
    its entry (docs/reference.md §10)."""

    def __init__(self, fleet: Fleet, queue, isolation, judge, clock: Callable[[], float]):
        self.fleet, self.queue, self.isolation, self.judge, self.clock = fleet, queue, isolation, judge, clock
        self._unrun: list[Candidate] = []  # what fleet_trust = "quarantine" convicts unrun

    def known(self, w: Txn, inflight, new_id: Callable[[], str]):
        """*inflight* without the messages the fleet confirms as poison (one round trip)."""
        batch = inflight.batch
        if not self.fleet.on or batch.lane is not Lane.CLEAN or not batch.ids:
            return inflight
        found = self.fleet.lookup({q: self.queue.scan_path(q) for q in batch.ids})
        for qid, entry in found.items():
            unrun = self.fleet.hold(w, self.isolation, qid, inflight.fps[qid], inflight.sizes.get(qid, 0),
                                    entry, f"fleet.{new_id()}", self.clock())
            if unrun is not None:
                self._unrun.append(unrun)
        if not found:
            return inflight
        keep = tuple(q for q in batch.ids if q not in found)
        return dataclasses.replace(inflight, batch=dataclasses.replace(batch, ids=keep),
                                   fps={q: inflight.fps[q] for q in keep},
                                   sizes={q: inflight.sizes[q] for q in keep})

    def quarantine_unrun(self) -> None:
        """Quarantine what the fleet convicts unrun (after the pass's commit)."""
        unrun, self._unrun = self._unrun, []
        for cand in unrun:
            self.judge.quarantine(cand, {"fleet_trust": "quarantine"})

    def passed(self, w: Txn, e, decision) -> None:
        """A message the fleet sent to run alone passed: its entry is disputed."""
        if self.fleet.on and e.batch.path[:1] == PATH and e.outcome.ending is Ending.OK:
            for qid in decision.deliver:
                self.fleet.disputed(w, self.queue.scan_path(qid), qid)


__all__ = ["DB", "Entry", "Fleet", "FleetLane", "PATH", "credentials"]
