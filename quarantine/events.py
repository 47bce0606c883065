"""Typed wrappers around the event hooks (``qsup_verdict``, ``qsup_quarantined``,
``qsup_breaker``). A plugin that raises is reported, rate-capped, and the
supervisor goes on: a notification bug must not stop the mail. The error policy
for event hooks lives here and nowhere else."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from quarantine.hookspecs import Queue
from quarantine.ratecap import RateCap

log = logging.getLogger("qsup")


class Events:
    def __init__(self, hooks, stats: Counter, clock: Callable[[], float], notifier=None):
        self._hooks = hooks
        self._notifier = notifier  # qsup's own digests (notify.Notifier): hears the breaker
        self._stats = stats
        self._log = RateCap(log, per_window=5, window=60.0, clock=clock)

    @property
    def wants_verdicts(self) -> bool:
        """Whether any plugin listens to verdicts (one call per message: only if heard)."""
        return bool(self._hooks.qsup_verdict.get_hookimpls())

    def verdict(self, qid: str, verdict: str, queue: Queue) -> None:
        self._call(self._hooks.qsup_verdict, qid=qid, verdict=verdict, queue=queue)

    def quarantined(self, record: Mapping[str, Any]) -> None:
        self._call(self._hooks.qsup_quarantined, record=record)

    def breaker(self, state: str, reason: str) -> None:
        if self._notifier is not None:
            self._notifier.breaker(state, reason)
        self._call(self._hooks.qsup_breaker, state=state, reason=reason)

    def _call(self, caller, **kwargs) -> None:
        try:
            caller(**kwargs)
        except Exception as exc:  # third-party code: any error is possible
            self._stats["hook_errors"] += 1
            first = str(exc).splitlines()[0] if str(exc) else ""
            self._log(logging.ERROR, "a plugin's %s hook failed: %s: %s", caller.name,
                      type(exc).__name__, first)
