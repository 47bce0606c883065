"""Building the plugin manager: built-ins first, then the ``qsup`` entry-point group."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from quarantine import hookspecs
from quarantine.errors import ConfigError

log = logging.getLogger("qsup")

BUILTINS = ("quarantine.spool", "quarantine.scanner")


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    broken: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line error)

    @property
    def hook(self):
        return self.pm.hook

    def _types(self, caller, kind: str) -> dict:
        merged: dict = {}
        owner: dict = {}
        for impl in reversed(caller.get_hookimpls()):
            for name, factory in (impl.function() or {}).items():
                if name in merged:
                    raise ConfigError(
                        f"{kind} type {name!r} is offered by both {owner[name]} and {impl.plugin_name}"
                    )
                merged[name], owner[name] = factory, impl.plugin_name
        return merged

    def queue_types(self) -> dict:
        return self._types(self.pm.hook.qsup_queue_types, "queue")

    def scanner_types(self) -> dict:
        return self._types(self.pm.hook.qsup_scanner_types, "scanner")

    def describe(self) -> list[dict]:
        """Each loaded plugin with its version and the hooks it implements."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            dist = next((d for p, d in self.pm.list_plugin_distinfo() if p is plugin), None)
            version = dist.version if dist else _builtin_version(name)
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            rows.append({"name": name, "version": version, "hooks": hooks, "error": None})
        rows += [{"name": n, "version": "?", "hooks": [], "error": e} for n, e in self.broken]
        return rows


def _builtin_version(name: str) -> str:
    from quarantine import __version__

    return f"{__version__} (built-in)" if name in BUILTINS else "?"


def build(load_entry_points: bool = True) -> Plugins:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTINS:
        module = __import__(modname, fromlist=["_"])
        pm.register(module, name=modname)
    plugins = Plugins(pm)
    if load_entry_points:
        for ep in metadata.entry_points(group=hookspecs.PROJECT):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a third party's bug must not take qsup down
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
                plugins.broken.append((ep.name, msg))
                log.error("plugin %s could not be loaded and is skipped: %s", ep.name, msg)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin error: {exc}") from None
    return plugins
