"""Operator digests (docs/reference.md §8.2): one mail per period at most, naming every message
quarantined in it and every breaker opening; never to a sender, never in a loop.

The events wait in the outbox (:mod:`quarantine.outbox`). The first event after a
quiet spell goes out once a short settle time has passed (a tenth of the period, at
most a minute, so a burst is one mail); after a digest, the next waits a whole
``notify_digest``. Past ``notify_max_per_hour`` digests within an hour qsup stops
sending, says so once, and keeps the events for when the hour allows (seed 001: an
alert mail answering itself 150,000 times). At its exit qsup sends what is left.

Mail goes only to ``notify_to``: the envelope sender is ``notify_from`` or the null
sender ``<>``, the headers say ``Auto-Submitted: auto-generated`` and
``Precedence: bulk``, and nothing a message says (sender, subject) reaches a header.
SMTP runs in a thread, so a slow or dead server never holds up the mail flow; a
sendmail program runs in the loop (it is local, and a child of qsup must not outlive
the pass, where qsup would take it for a worker's orphan).
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, getaddresses, make_msgid, parseaddr

from quarantine.config import Config
from quarantine.errors import ConfigError
from quarantine.outbox import HOUR, Digest, Outbox
from quarantine.process import pipe_to
from quarantine.store import Store
from quarantine.ticks import Every
from quarantine.views import format_when

log = logging.getLogger("qsup")
MAX_EVENTS = 1000  # named in one digest; more wait for the next
SEND_TIMEOUT = 30.0
SETTLE_MAX = 60.0
_LINE = 200  # characters of a sender or subject shown


# ------------------------------------------------------------------- settings
def recipients(config: Config) -> list[str]:
    return [addr for _, addr in getaddresses([config.notify_to or ""]) if addr]


def check(config: Config) -> None:
    """Digests need an address and exactly one way to send (exit 2 naming the key)."""
    if not config.notify_to:
        return
    if not recipients(config) or any("@" not in a for a in recipients(config)):
        raise ConfigError(f"notify_to: not an address list: {config.notify_to!r}")
    if bool(config.notify_smtp) == bool(config.notify_sendmail):
        raise ConfigError("notify_to needs one of notify_smtp (HOST:PORT) or notify_sendmail (a path)")
    if config.notify_smtp:
        _host_port(config.notify_smtp)
    if config.notify_sendmail and not os.access(config.notify_sendmail, os.X_OK):
        raise ConfigError(f"notify_sendmail: {config.notify_sendmail} is not an executable program")
    if config.notify_auth_file:
        _credentials(config)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"notify_smtp: expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _credentials(config: Config) -> tuple[str, str] | None:
    """SMTP AUTH user and password: from notify_auth_file (two lines), else the
    environment. Never from the command line, where ps(1) shows them."""
    if config.notify_auth_file:
        try:
            with open(config.notify_auth_file) as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise ConfigError(f"notify_auth_file: cannot read {config.notify_auth_file}: "
                              f"{exc.strerror}") from None
        if len(lines) < 2 or not lines[0]:
            raise ConfigError(f"notify_auth_file: {config.notify_auth_file} must hold the user "
                              f"and the password on two lines")
        return lines[0], lines[1]
    user = os.environ.get("QSUP_NOTIFY_USER")
    return (user, os.environ.get("QSUP_NOTIFY_PASSWORD", "")) if user else None


# ------------------------------------------------------------------ the mail
def compose(events: list[dict], *, to: list[str], sender: str, host: str, now: float,
            msgid: str) -> bytes:
    """The digest naming *events* (plain data in, bytes out: no I/O)."""
    quarantined = [e for e in events if e.get("event") == "quarantined"]
    openings = [e for e in events if e.get("event") == "breaker"]
    released = [e for e in events if e.get("event") == "released"]
    parts = [f"{len(quarantined)} message(s) quarantined"] if quarantined else []
    parts += [f"breaker opened {len(openings)} time(s)"] if openings else []
    parts += [f"{len(released)} released by re-test"] if released else []
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"qsup on {host}: {', '.join(parts) or 'nothing new'}"
    msg["Date"] = formatdate(now, localtime=True)
    msg["Message-ID"] = msgid
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    msg["X-Auto-Response-Suppress"] = "All"
    lines = [f"qsup on {host}, {format_when(now)}.", ""]
    if openings:
        lines += [f"The breaker opened {len(openings)} time(s): nothing was quarantined or "
                  f"dispatched while it was open.", ""]
        lines += [f"  {format_when(e.get('t'))}  {_clean(e.get('reason', ''), 400)}" for e in openings]
        lines.append("")
    if quarantined:
        lines += [f"Quarantined ({len(quarantined)}):", ""]
        for e in quarantined:
            lines += [f"  {e['qid']}  {format_when(e.get('t'))}  {e.get('kind', 'poison')}: {e.get('why', '?')}"
                      f" after {e.get('strikes', '?')} strike(s)",
                      f"      from {_clean(e.get('sender')) or '?'}",
                      f"      subject {_clean(e.get('subject')) or '?'}"]
        lines += ["", "Each is named in this digest only. `qsup show ID` tells what happened;",
                  "`qsup release ID` puts one back once the scanner is fixed."]
    if released:
        lines += ["", f"Released by re-test ({len(released)}): they passed under the new scanner", ""]
        lines += [f"  {e['qid']}  {format_when(e.get('t'))}  {_clean(e.get('note'))}" for e in released]
    msg.set_content("\n".join(lines) + "\n", charset="utf-8")
    return msg.as_bytes()


def _clean(text: str | None, limit: int = _LINE) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in (text or ""))[:limit]


# ---------------------------------------------------------------- transports
class SmtpTransport:
    threaded = True

    def __init__(self, config: Config):
        self.host, self.port = _host_port(config.notify_smtp)
        self.credentials = _credentials(config)

    def send(self, data: bytes, envelope_from: str, to: list[str]) -> None:
        """Raises (OSError, smtplib.SMTPException) unless the server accepted it."""
        with smtplib.SMTP(self.host, self.port, timeout=SEND_TIMEOUT) as smtp:
            smtp.ehlo()
            local = _loopback(self.host)  # nothing to protect, and often a self-signed cert
            tls = smtp.has_extn("starttls") and not local
            if tls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.credentials:
                if not (tls or local):
                    raise smtplib.SMTPException(f"{self.host} offers no STARTTLS: the password "
                                                f"is not sent in clear text")
                smtp.login(*self.credentials)
            refused = smtp.sendmail(envelope_from, to, data)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)


def _loopback(host: str) -> bool:
    try:
        return all(info[4][0] in ("127.0.0.1", "::1") or info[4][0].startswith("127.")
                   for info in socket.getaddrinfo(host, None))
    except OSError:
        return False


class SendmailTransport:
    threaded = False

    def __init__(self, config: Config):
        self.path = config.notify_sendmail

    def send(self, data: bytes, envelope_from: str, to: list[str]) -> None:
        code, said = pipe_to([self.path, "-oi", "-f", envelope_from or "<>", "--", *to], data,
                             SEND_TIMEOUT)
        if code != 0:
            raise OSError(f"{self.path} {'exited ' + str(code) if code is not None else 'failed'}"
                          f"{': ' + said.splitlines()[-1] if said else ''}")


# ---------------------------------------------------------------- the notifier
class Notifier:
    """Decides when a digest is due and sends it; the supervisor calls :meth:`tick`
    every pass and :meth:`flush` at its exit. Wall time is injected."""

    def __init__(self, config: Config, store: Store, wall: Callable[[], float],
                 transport: object | None = None):
        self.store, self.wall = store, wall
        self.outbox = Outbox()
        self.host = socket.gethostname()  # no DNS look-up in the loop
        self._given = transport  # tests pass one; else built from the configuration
        self._breakers: list[tuple[float, str]] = []
        self._look = Every(1.0)
        self._thread: threading.Thread | None = None
        self._sending: Digest | None = None
        self._error: BaseException | None = None
        self._retry_at = 0.0
        self._capped = False
        self.configure(config)

    def configure(self, config: Config) -> None:
        try:
            check(config)
        except ConfigError as exc:
            if not hasattr(self, "config"):
                raise  # at start: exit 2
            log.error("reload: %s; digests keep their previous settings", exc)
            return  # a bad reload must not stop a running daemon
        self.config = config
        self.outbox.enabled = bool(config.notify_to)
        self.transport = self._given or (None if not config.notify_to else
                                         SmtpTransport(config) if config.notify_smtp
                                         else SendmailTransport(config))

    # ------------------------------------------------------------- events
    def breaker(self, state: str, reason: str) -> None:
        """An Events listener: a breaker opening goes in the next digest."""
        if state == "open" and self.outbox.enabled:
            self._breakers.append((self.wall(), reason))

    # ------------------------------------------------------------- the loop
    def tick(self, now: float) -> None:
        """Once a pass (cheap unless a second has passed): write down breaker
        openings, take the answer of a send, start the next one if due."""
        if not (self.outbox.enabled or self._thread) or not self._look.due(now):
            return
        self._write_breakers()
        self._reap()
        if self._thread is None and self.outbox.waiting and self._due(self.wall()):
            self._start(self.wall())

    def flush(self) -> None:
        """At exit: wait for a send under way, then send what is left now (the period
        ends with qsup; the hourly cap still holds)."""
        if not (self.outbox.enabled or self._thread):
            return
        self._write_breakers()
        if self._thread is not None:
            self._thread.join(SEND_TIMEOUT + 5)
            self._reap()
        for _ in range(10):  # MAX_EVENTS each: more is left for the next start
            if not self.outbox.waiting or not self._allowed(self.wall()):
                return
            if not self._start(self.wall(), threaded=False) or not self._reap():
                return

    # ------------------------------------------------------------- deciding
    def _due(self, t: float) -> bool:
        with self.store.read() as r:
            sent, claimed = Outbox.sent(r), Outbox.claimed(r)
            first = Outbox.events(r, 1)
        if not first and claimed is None:
            self.outbox.waiting = False
            return False
        if t < self._retry_at:
            return False
        period = self.config.notify_digest
        if sent and t - max(sent) < period:
            return False
        if claimed is None and t - first[0][1].get("t", t) < min(SETTLE_MAX, period / 10):
            return False
        return self._allowed(t, sent)

    def _allowed(self, t: float, sent: list[float] | None = None) -> bool:
        if sent is None:
            with self.store.read() as r:
                sent = Outbox.sent(r)
        recent = [s for s in sent if s > t - HOUR]
        if len(recent) < self.config.notify_max_per_hour:
            self._capped = False
            return True
        if not self._capped:
            self._capped = True
            log.error("notification cap: %d digest(s) within the last hour (notify_max_per_hour); "
                      "no more mail until the hour allows, the events wait in the outbox", len(recent))
        return False

    # ------------------------------------------------------------- sending
    def _start(self, t: float, threaded: bool | None = None) -> bool:
        """Claim a digest (the one left unconfirmed, else a new one) and send it."""
        with self.store.write() as w:
            digest = Outbox.claimed(w)
            if digest is None:
                events = Outbox.events(w, MAX_EVENTS)
                if not events:
                    self.outbox.waiting = False
                    return False
                msgid = make_msgid("qsup", domain=self.host)
                text = compose([e for _, e in events], to=recipients(self.config), sender=self._from(),
                               host=self.host, now=t, msgid=msgid)
                digest = Digest(msgid, [k for k, _ in events], text, len(events))
                Outbox.claim(w, digest)
        self._sending, self._error = digest, None
        threaded = self.transport.threaded if threaded is None else threaded
        if threaded:
            self._thread = threading.Thread(target=self._send, args=(digest,), name="qsup-notify",
                                            daemon=True)
            self._thread.start()
        else:
            self._send(digest)
        return True

    def _send(self, digest: Digest) -> None:
        try:
            envelope = parseaddr(self.config.notify_from or "")[1]  # "" is the null sender <>
            self.transport.send(digest.text, envelope, recipients(self.config))
        except Exception as exc:  # a refusing server, a dead one, a bad program: said, retried
            self._error = exc

    def _reap(self) -> bool:
        """Act on a finished send: done with its events (True), or retry later."""
        if self._sending is None or (self._thread is not None and self._thread.is_alive()):
            return False
        digest, error, self._sending, self._thread = self._sending, self._error, None, None
        t = self.wall()
        if error is None:
            with self.store.write() as w:
                Outbox.accepted(w, digest, t)
            log.info("digest %s sent to %s: %d event(s)", digest.msgid, self.config.notify_to, digest.count)
            return True
        self._retry_at = t + max(10.0, min(self.config.notify_digest, 300.0))
        log.warning("digest not sent (%s: %s); trying again in %.0fs", type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "", self._retry_at - t)
        return False

    def _write_breakers(self) -> None:
        if not self._breakers:
            return
        openings, self._breakers = self._breakers, []
        with self.store.write() as w:
            for t, reason in openings:
                self.outbox.breaker(w, t, reason)

    def _from(self) -> str:
        return self.config.notify_from or f"qsup <qsup@{self.host}>"


__all__ = ["Notifier", "SendmailTransport", "SmtpTransport", "check", "compose", "recipients"]
