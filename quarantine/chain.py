"""Scanner chains (config key ``scanners``, docs/reference.md §4.7): several scanners
as one, each message through each in order.

To qsup a chain is one scanner like any other: its worker is the chain runner
(``python -m quarantine.chain_worker``), which speaks the worker protocol to qsup and
runs each link as a worker of its own, in its own process group, so that a crash or
a hang of any link is a crash or a hang of the message it was scanning. This module
is what qsup itself needs: the scanner object, and how verdicts combine.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quarantine.errors import ConfigError
from quarantine.hookspecs import Scanner

SPEC_ENV = "QSUP_CHAIN"  # the links, as JSON, in the chain runner's environment

# Which verdict a chain reports: the gravest of its links'. An unknown word (say
# `unscanned too-big`) is kept over ham and clean: it says a link did not judge.
RANK = {"infected": 4, "spam": 3, "ham": 1, "clean": 0}
OTHER, NONE = 2, -1


def rank(verdict: str) -> int:
    word = verdict.split(" ", 1)[0]
    return RANK.get(word, OTHER) if word else NONE


def combine(verdicts: Sequence[str]) -> str:
    """The chain's verdict: infected over spam over any other word over ham over
    clean; between equals, the earlier link's (its name or score)."""
    return max(verdicts, key=rank, default="")


@dataclass
class ChainScanner:
    """The links' scanners run as one. Persistent when any link is, so a warm link
    stays warm; one-shot links get a process per message either way."""

    links: tuple[Scanner, ...]

    @property
    def name(self) -> str:
        return "+".join(link.name for link in self.links)

    @property
    def mode(self) -> str:
        return "persistent" if any(link.mode == "persistent" for link in self.links) else "oneshot"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "quarantine.chain_worker"]

    def environment(self) -> dict[str, str]:
        return {SPEC_ENV: json.dumps(self.spec())}

    def identity(self) -> str:
        """Each link's identity (its own reading, else its name), joined."""
        parts = []
        for link in self.links:
            reading = getattr(link, "identity", None)
            parts.append((reading() if reading else "") or link.name)
        return "+".join(parts)

    def spec(self) -> list[dict[str, Any]]:
        return [{"name": link.name, "mode": link.mode, "argv": list(link.command()),
                 "env": dict(link.environment())} for link in self.links]


Factories = Mapping[str, Callable[[Any], Scanner]]


def build(kinds: Factories, config) -> Scanner:
    """The scanner *config* names: the chain of ``scanners``, else the one ``scanner``.
    Raises ConfigError naming an unknown kind; builds nothing until all are known."""
    names = config.scanners or (config.scanner,)
    key = "scanners" if config.scanners else "scanner"
    for name in names:
        if name not in kinds:
            raise ConfigError(f"{key}: unknown kind {name!r} (known: {', '.join(sorted(kinds))})")
    links = tuple(kinds[name](config) for name in names)
    return links[0] if len(links) == 1 else ChainScanner(links)
