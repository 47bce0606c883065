"""Which queue a state directory belongs to (docs/reference.md §3).

The records in a state directory say where their messages are: ``name`` in the
quarantine of *one* queue. The first ``drain`` or ``run`` on a state directory
writes that queue down (``meta/queue``: its identity, and the part of the
configuration that opens it again); from then on:

- ``drain`` and ``run`` on another queue are refused (exit 2, naming both);
- ``release``, ``purge``, ``list`` and ``show`` naming another queue (a flag or the
  configuration file) are refused before anything is touched;
- the same commands naming no queue use the recorded one, so
  ``qsup --state ST release ID`` finds the file where the supervisor put it instead
  of looking in the default spool.

A state directory written before queues were recorded is bound by its next
``drain`` or ``run``; until then commands use the queue the configuration names.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from quarantine.config import Config
from quarantine.errors import ConfigError
from quarantine.pm import Plugins
from quarantine.store import Store, Txn

KEY = "queue"  # in the meta database


@dataclass(frozen=True)
class Binding:
    """A queue as a state directory records it."""

    kind: str
    where: str
    # what opens it again: the config keys that choose a queue (queue, spool) and
    # the options of its plugin
    reopen: dict = dataclasses.field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        label = "spool" if self.kind == "spool" else f"{self.kind} queue"
        return f"{label} {self.where}" if self.where else label

    def to_json(self) -> dict:
        return {"kind": self.kind, "where": self.where, "reopen": self.reopen}

    @classmethod
    def from_json(cls, data: dict) -> Binding:
        return cls(str(data["kind"]), str(data.get("where", "")), dict(data.get("reopen") or {}))

    def config(self, base: Config) -> Config:
        """*base* with the recorded queue in place of whatever it names."""
        opts = self.reopen.get("plugin") or {}
        return dataclasses.replace(base, queue=self.kind, spool=self.reopen.get("spool") or base.spool,
                                   plugin={**base.plugin, self.kind: dict(opts)})


def named(plugins: Plugins, config: Config) -> Binding:
    """The queue *config* names (found without opening it)."""
    ident = plugins.queue_identity(config)
    reopen = {"spool": os.path.abspath(config.spool), "plugin": config.plugin_options(config.queue)}
    return Binding(ident["kind"], ident.get("where", ""), reopen)


def names_a_queue(config: Config) -> bool:
    """Did the user choose the queue (a flag or the file), or is it the default?"""
    return bool(config.given & {"queue", "spool", f"plugin.{config.queue}"})


def recorded(r: Txn) -> Binding | None:
    data = r.get("meta", KEY)
    return Binding.from_json(data) if data else None


def recorded_in(state: str) -> Binding | None:
    """The binding of *state*, read while another qsup may hold it."""
    store = Store(state, readonly=True)
    try:
        with store.read() as r:
            return recorded(r)
    finally:
        store.close()


def bind(store: Store, mine: Binding) -> bool:
    """For drain and run: check that the state directory belongs to *mine*. True if
    it is new: then :func:`record` binds it, once the queue has opened (a queue that
    cannot, a mistyped spool say, leaves the state bound to nothing)."""
    with store.read() as r:
        found = recorded(r)
    if found is not None and found != mine:
        raise ConfigError(f"state directory {store.path} belongs to {found}, not {mine} "
                          f"(one state directory per queue: give {mine} a --state of its own)")
    return found is None


def record(store: Store, mine: Binding) -> None:
    with store.write() as w:
        if recorded(w) is None:
            w.put("meta", KEY, mine.to_json())


def resolve(plugins: Plugins, config: Config, found: Binding | None, state: str) -> Config:
    """For release, purge, list, show: the configuration of the queue to act on."""
    if found is None:
        return config  # not bound yet: the queue the configuration names
    if not names_a_queue(config):
        return found.config(config)
    mine = named(plugins, config)
    if mine != found:
        raise ConfigError(f"state directory {state} belongs to {found}, not {mine}; nothing done "
                          f"(name no queue to use {found})")
    return config
