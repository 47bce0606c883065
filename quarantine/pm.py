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
    versions: dict[str, str] = field(default_factory=dict)  # entry-point name -> its dist's version

    @property
    def hook(self):
        return self.pm.hook

    def _types(self, caller, kind: str) -> dict:
        merged: dict = {}
        owner: dict = {}
        for impl in reversed(caller.get_hookimpls()):
            try:
                offered = dict(impl.function() or {})
            except Exception as exc:  # a third party's bug must not take qsup down
                log.error("plugin %s: %s failed, its %s types are skipped: %s", impl.plugin_name,
                          caller.name, kind, _one_line(exc))
                continue
            for name, factory in offered.items():
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

    def queue_identity(self, config) -> dict[str, str]:
        """Which queue *config* names (hookspecs.qsup_queue_identity); a kind no
        plugin answers for, by its name only."""
        found = self.pm.hook.qsup_queue_identity(config=config)
        return {"kind": config.queue, "where": ""} | dict(found or {})

    def describe(self) -> list[dict]:
        """Each loaded plugin with its version and the hooks it implements."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            version = self.versions.get(name) or _builtin_version(name)
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            rows.append({"name": name, "version": version, "hooks": hooks, "error": None})
        rows += [{"name": n, "version": "?", "hooks": [], "error": e} for n, e in self.broken]
        return rows


def _one_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
    return "; ".join(lines)[:400]


def _unknown_hooks(pm: pluggy.PluginManager, plugin) -> list[str]:
    """Hooks *plugin* implements that no hookspec declares (and it did not mark optional)."""
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                  if not caller.has_spec()
                  and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()))


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
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                unknown = _unknown_hooks(pm, plugin)
                if unknown:  # would fail check_pending() and with it every command
                    pm.unregister(name=ep.name)
                    raise pluggy.PluginValidationError(plugin, f"unknown hook(s) {', '.join(unknown)}")
            except Exception as exc:  # a third party's bug must not take qsup down
                msg = _one_line(exc)
                plugins.broken.append((ep.name, msg))
                log.error("plugin %s could not be loaded and is skipped: %s", ep.name, msg)
                continue
            plugins.versions[ep.name] = getattr(ep.dist, "version", None) or "?"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin error: {exc}") from None
    return plugins
