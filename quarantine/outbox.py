"""The operator's outbox: what the next digest mail names, kept in LMDB so that a
``kill -9`` neither loses an event nor names it in two digests.

Keys of the ``outbox`` database:

  e:TIME:TAG  an event waiting for a digest (a quarantine, a breaker opening), TIME
              as in the journal. A quarantine's is written in the transaction that
              writes its record.
  d:MSGID     a digest on its way: its text and the events it names. Written before
              the mail is handed to the server; removed, with those events, in the
              transaction after the server accepted it. One that a killed qsup left
              is sent again as it is, under the same Message-ID: still one digest.
  sent        wall times of the digests sent within the last hour (the hourly cap,
              and the period, across restarts).
"""

from __future__ import annotations

from dataclasses import dataclass

from quarantine import journal
from quarantine.store import Txn
from quarantine.views import format_why

DB = "outbox"
EVENT, DIGEST, SENT = "e:", "d:", "sent"
HOUR = 3600.0


@dataclass(slots=True)
class Digest:
    """A digest mail claimed for sending."""

    msgid: str
    keys: list[str]
    text: bytes
    count: int


class Outbox:
    """Appends events while digests are on (``enabled``), in the caller's transaction."""

    def __init__(self) -> None:
        self.enabled = False
        self.waiting = True  # something may be in it: look once at start

    def quarantined(self, w: Txn, t: float, record: dict) -> str:
        """The event of a quarantine; its key ("" when digests are off)."""
        if not self.enabled:
            return ""
        k = EVENT + journal.key(t, record["qid"])
        w.put(DB, k, {"event": "quarantined", "t": t, "qid": record["qid"],
                      "sender": record.get("sender", ""), "subject": record.get("subject", ""),
                      "kind": record.get("kind", "poison"), "why": format_why(record),
                      "strikes": record.get("strikes")})
        self.waiting = True
        return k

    def released(self, w: Txn, t: float, record: dict, note: str) -> None:
        """A message a re-test released (it passed under the new scanner)."""
        if self.enabled:
            w.put(DB, EVENT + journal.key(t, record["qid"]), {
                "event": "released", "t": t, "qid": record["qid"], "note": note,
                "sender": record.get("sender", ""), "subject": record.get("subject", "")})
            self.waiting = True

    def breaker(self, w: Txn, t: float, reason: str) -> None:
        if self.enabled:
            w.put(DB, EVENT + journal.key(t, "breaker"), {"event": "breaker", "t": t, "reason": reason})
            self.waiting = True

    @staticmethod
    def withdraw(w: Txn, k: str) -> None:
        """Take back an event whose message vanished before it was quarantined."""
        if k:
            w.delete(DB, k)

    # ---------------------------------------------------------------- digests
    @staticmethod
    def claimed(r: Txn) -> Digest | None:
        """The digest a previous attempt claimed and did not see accepted."""
        for k, rec in r.items(DB, prefix=DIGEST):
            return Digest(k[len(DIGEST):], rec["keys"], rec["text"].encode("utf-8", "surrogateescape"),
                          len(rec["keys"]))
        return None

    @staticmethod
    def events(r: Txn, limit: int) -> list[tuple[str, dict]]:
        out = []
        for item in r.items(DB, prefix=EVENT):
            out.append(item)
            if len(out) >= limit:
                break
        return out

    @staticmethod
    def claim(w: Txn, digest: Digest) -> None:
        w.put(DB, DIGEST + digest.msgid, {"keys": digest.keys,
                                          "text": digest.text.decode("utf-8", "surrogateescape")})

    @staticmethod
    def accepted(w: Txn, digest: Digest, t: float) -> None:
        """The server took it: its events are done with, and it counts against the cap."""
        w.delete(DB, DIGEST + digest.msgid)
        for k in digest.keys:
            w.delete(DB, k)
        w.put(DB, SENT, [s for s in Outbox.sent(w) if s > t - HOUR] + [t])

    @staticmethod
    def sent(r: Txn) -> list[float]:
        return list(r.get(DB, SENT) or [])

    @staticmethod
    def prune(w: Txn, cutoff: float) -> int:
        """Drop events older than *cutoff* that were never sent (digests off since,
        or a server refusing them for days); a claimed digest keeps its own."""
        old = [k for k, ev in Outbox.events(w, 1 << 30) if ev.get("t", 0) < cutoff]
        claimed = Outbox.claimed(w)
        keep = set(claimed.keys) if claimed else set()
        for k in old:
            if k not in keep:
                w.delete(DB, k)
        return len(set(old) - keep)


__all__ = ["DB", "Digest", "Outbox"]
