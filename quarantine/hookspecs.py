"""Every hook of qsup, in one place. The docstrings are the contract.

A plugin is a module or object with functions marked ``@hookimpl``; it is found
through the ``qsup`` entry-point group. The spool-directory queue and the command
scanner that ship with qsup are plugins like any other (``quarantine/spool.py``,
``quarantine/scanner.py``).

Queues and scanners are chosen by name (config keys ``queue`` and ``scanner``): each
plugin offers factories through :func:`qsup_queue_types` / :func:`qsup_scanner_types`,
and the supervisor calls the object the chosen factory builds. The objects follow the
:class:`Queue` and :class:`Scanner` protocols below; nothing in the supervisor knows
which queue or scanner it talks to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pluggy

PROJECT = "qsup"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class MessageRef:
    """A message waiting in a queue. ``age_key`` orders oldest first."""

    qid: str
    size: int
    age_key: float


@dataclass(frozen=True)
class Move:
    """A move about to happen, recorded in the state store before it is made.

    ``dest`` is ``"outgoing"``, ``"quarantine"`` or ``"incoming"`` (release);
    ``name`` is where the message will be found afterwards, chosen before the move
    so that a restart can finish it.
    """

    qid: str
    fp: str
    dest: str
    name: str
    origin: str = "incoming"  # where the message is now
    source: str = ""  # its name there, if not the queue ID (a quarantined file)
    ino: int = 0  # the file's inode when it was fingerprinted, if the queue knows it: a
    # scanner may edit a message in place during its batch, and it is still that message
    tag: tuple = ()  # (name, value) header lines to add on the way (a spam verdict), for
    # a queue with ``can_tag``; a replay must add them once, never twice


@dataclass(frozen=True)
class Quarantined:
    """A message in a queue's quarantine, as the queue sees it (not as qsup's records
    do): found under *name*, it stands for queue ID *qid* with fingerprint *fp*."""

    name: str
    qid: str
    fp: str
    size: int
    since: float  # wall time it has been there since, as near as the queue knows


class Queue(Protocol):
    """What a queue plugin's factory returns."""

    name: str

    def pending(self, limit: int, skip: Callable[[str], bool]) -> list[MessageRef]:
        """Up to *limit* waiting messages, oldest first, leaving out IDs for which
        *skip* is true. Never follows a symlink; entries that are not messages are
        reported once through :meth:`reports` and otherwise left alone.

        Optional companion, for queues whose listing takes long:
        ``pending_steps(limit, skip)`` yields ``None`` after each slice of work and
        then the same messages in lists, oldest first; the supervisor takes one
        step per pass so a long listing never stalls the workers (see
        ``SpoolQueue.pending_steps``)."""

    def depth(self) -> int:
        """How many messages wait (a cheap count for ``qsup status``)."""

    def identify(self, qid: str) -> tuple[int, str] | None:
        """``(size, fingerprint)`` of the waiting message, or None if it is gone.
        Reads at most the first few KiB (``quarantine.ids.fingerprint``)."""

    def scan_path(self, qid: str) -> str:
        """A file path the scanner may read for this message. Its base name is the ID."""

    def scan_done(self, qid: str) -> None:
        """The scanner no longer needs :meth:`scan_path`'s file."""

    def plan(self, qid: str, fp: str, dest: str, origin: str = "incoming", source: str = "") -> Move:
        """Choose where a move from *origin* to *dest* will put the message (no side
        effects). *source* is its current name when that is not *qid*."""

    def apply(self, move: Move) -> str:
        """Make the move. Idempotent: called again after a restart it finishes the
        move or sees it done. Returns ``"moved"``, ``"already"``, ``"gone"`` (the
        message vanished from under qsup) or ``"taken"`` (nothing moved: another
        message holds the name :meth:`plan` chose; plan again). Never overwrites
        another message. A move the queue refuses raises ``QueueError`` (exit 4)
        naming it, with the message left where it was.

        Optional companion, for queues where one move at a time is costly:
        ``apply_all(moves) -> list[str]`` makes several moves at once (a pass's
        deliveries, an interrupted group replayed at start) and returns one of
        the same results per move, in order. Same contract as ``apply``:
        idempotent, safe to replay after ``kill -9`` at any instant; a refusal
        raises ``QueueError`` and the group's intent is replayed at the next start
        (moves already made then answer ``"already"``). ``quarantine.moves``
        calls it when the queue has it, else ``apply`` per move (see
        ``PostfixQueue.apply_all``)."""

    def head(self, location: str, name: str, limit: int) -> bytes:
        """Up to *limit* bytes from the start of a message in *location*
        (``"incoming"``, ``"quarantine"`` …) — for headers; never the whole body."""

    def purge(self, name: str) -> bool:
        """Delete a quarantined message for good. True if it existed.

        Optional companions: ``quarantine_names()``, the names of every message in
        the quarantine (what :meth:`plan` named them), so that a record whose file
        is missing is said, not moved; and ``quarantined(name)``, a
        :class:`Quarantined` or None, so that a file no record names (a lost or
        reset state) is found and recorded as an orphan."""

    def reports(self) -> list[str]:
        """New one-line reports (odd entries found) since the last call."""


class Scanner(Protocol):
    """What a scanner plugin's factory returns: how to start a worker."""

    name: str
    mode: str  # "oneshot": paths appended to the command; "persistent": batches on stdin

    def command(self) -> list[str]:
        """The worker's argv (never run through a shell)."""

    def environment(self) -> Mapping[str, str]:
        """Extra environment for the worker."""


@hookspec
def qsup_queue_types() -> Mapping[str, Callable[[Any], Queue]]:
    """Offer queue kinds: name -> factory taking the :class:`~quarantine.config.Config`.

    Called once at start; every plugin's mapping is merged. A name offered twice is
    a configuration error naming both plugins."""


@hookspec(firstresult=True)
def qsup_queue_identity(config: Any) -> Mapping[str, str] | None:
    """Which queue *config* names, for a queue kind this plugin offers: a mapping
    ``{"kind": KIND, "where": WHERE}``, *where* saying which queue of that kind it is,
    the same however the configuration spells it (the spool's real path; Postfix's
    ``queue_directory``). Return None for a kind you do not offer.

    Found without opening or changing the queue (no directory made, no lock taken):
    a state directory records the identity of the queue its supervisor ran on, and
    ``drain``, ``run``, ``release``, ``purge``, ``list`` and ``show`` naming another
    queue are refused before anything is touched (docs/reference.md §3). A kind no plugin
    answers for is told apart by its name only."""


@hookspec
def qsup_scanner_types() -> Mapping[str, Callable[[Any], Scanner]]:
    """Offer scanner kinds: name -> factory taking the Config. Merged like queues."""


@hookspec
def qsup_verdict(qid: str, verdict: str, queue: Queue) -> None:
    """A worker reported ``done ID VERDICT``. Fires once per message and verdict,
    before the message is handed on. A verdict (``infected``, ``spam 7.1``) is the
    scanner's judgement of the content, not a crash: the default is only to log it."""


@hookspec
def qsup_quarantined(record: Mapping[str, Any]) -> None:
    """A message was quarantined; *record* is what ``qsup show --json`` prints.
    Fires once per message (notifications belong here)."""


@hookspec
def qsup_breaker(state: str, reason: str) -> None:
    """The breaker opened (``state == "open"``, with the reason) or closed again."""
