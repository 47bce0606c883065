"""Typed options for plugins: ``[plugin.NAME]`` tables and ``--plugin-option NAME.KEY=V``.

A plugin declares its keys once; values from a TOML table keep their type, values
from the command line arrive as strings and are converted here. An unknown key or a
value of the wrong type is a :class:`~quarantine.errors.ConfigError` naming the key.

    OPTIONS = {"socket": Option(str, "/run/clamav/clamd.ctl", "clamd's Unix socket")}
    opts = pluginopts.parse("clamd", config.plugin_options("clamd"), OPTIONS)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quarantine.errors import ConfigError

_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


@dataclass(frozen=True)
class Option:
    type: type
    default: Any
    help: str
    minimum: float | None = None


def _convert(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif kind in (int, float):
        if isinstance(value, bool):
            pass
        elif isinstance(value, (int, float)) and (kind is float or isinstance(value, int)):
            return kind(value)
        elif isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                pass
    elif isinstance(value, kind):
        return value
    raise ConfigError(f"{where} must be {kind.__name__}, not {value!r}")


def parse(name: str, raw: Mapping[str, Any], spec: Mapping[str, Option]) -> dict[str, Any]:
    """Every key of *spec*, from *raw* where given, else its default."""
    out = {key: opt.default for key, opt in spec.items()}
    for key, value in raw.items():
        where = f"[plugin.{name}] {key}"
        opt = spec.get(key)
        if opt is None:
            raise ConfigError(f"[plugin.{name}]: unknown key {key!r} (known: {', '.join(sorted(spec))})")
        value = _convert(value, opt.type, where)
        if opt.minimum is not None and value < opt.minimum:
            raise ConfigError(f"{where} must be at least {opt.minimum}, not {value!r}")
        out[key] = value
    return out
