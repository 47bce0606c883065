"""Configuration: built-in defaults < TOML file < command-line flags.

Every key is listed once in FIELDS with its type, default and help; the CLI makes a
flag of each, and a file with a wrong type, an unknown key or a negative number is
refused with a one-line message naming the key (exit 2).
"""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any

from quarantine.errors import ConfigError


def _default_spool() -> str:
    return "/var/spool/qsup" if os.geteuid() == 0 else "./spool"


def demo_worker_command() -> str:
    return f"{shlex.quote(sys.executable)} -m quarantine.demo_scanner"


@dataclass(frozen=True)
class Field:
    name: str
    type: type
    default: Any
    help: str
    flag: str = ""  # command-line flag, if not --name-with-dashes
    minimum: float | None = 0
    choices: tuple[str, ...] = ()
    optional: bool = False  # may be unset (None)


FIELDS: tuple[Field, ...] = (
    Field("queue", str, "spool", "Queue kind (a plugin name): 'spool' is built in."),
    Field("scanner", str, "command", "Scanner kind (a plugin name): 'command' runs --worker."),
    Field("spool", str, None, "Spool directory (incoming/, outgoing/, quarantine/, tmp/). "
          "Default /var/spool/qsup as root, else ./spool.", optional=True),
    Field("worker", str, None, "Worker command, split like a shell would but never run "
          "through one; message paths are appended. Default: the bundled demo scanner.",
          optional=True),
    Field("worker_mode", str, "oneshot", "'oneshot': a process per batch; 'persistent': "
          "long-lived workers read batches on stdin.", choices=("oneshot", "persistent")),
    Field("workers", int, 5, "Worker processes at once.", minimum=1),
    Field("batch_size", int, 30, "Messages per batch.", minimum=1),
    Field("timeout", float, 30.0, "Seconds allowed per message (from the last progress "
          "line when the worker writes them)."),
    Field("startup_allowance", float, 10.0, "Seconds added to each batch deadline for start-up."),
    Field("max_rss_mb", int, None, "Kill a worker whose process tree's RSS passes this many MB "
          "(ending 'memory').", flag="max-rss", minimum=1, optional=True),
    Field("rlimit_as_mb", int, None, "Optional hard ceiling: RLIMIT_AS for each worker, in MB.",
          minimum=1, optional=True),
    Field("rss_interval", float, 0.05, "Seconds between RSS samples of each worker."),
    Field("strikes", int, 2, "Solo crashes before a message is quarantined.", minimum=1),
    Field("max_wait", float, 600.0, "Seconds drain waits with the breaker open before it "
          "gives up (exit 3)."),
    Field("storm_limit", int, 10, "More distinct messages than this crashing alone within "
          "storm_window open the breaker.", minimum=1),
    Field("storm_window", float, 600.0, "Seconds of the storm window."),
    Field("canary", str, None, "Known-good message run alone before any quarantine. "
          "Default: a built-in minimal RFC 5322 message.", optional=True),
    Field("poll_interval", float, 1.0, "Seconds between looks at the queue when idle."),
    Field("grace", float, 30.0, "Seconds a warm stop lets in-flight batches finish."),
    Field("spare_workers", int, None, "Persistent mode: workers started ahead, so a crash or "
          "a canary run does not wait for a worker's start-up. Default: started once something "
          "has crashed, as many as crashes and canaries took over the last minute during one "
          "start-up, at least a quarter of the workers plus one.", minimum=0, optional=True),
    Field("recycle_batches", int, 1000, "Persistent workers are replaced after this many "
          "batches.", minimum=1),
    Field("recycle_rss_mb", int, None, "Persistent workers are replaced when their RSS "
          "passes this many MB between batches.", minimum=1, optional=True),
    Field("history", int, 10, "Attempts kept per message (older ones are counted only).",
          minimum=1),
    Field("recovery_solo_after", int, 2, "After a restart, an ID found in flight this many "
          "times runs alone.", minimum=1),
    Field("map_size_mb", int, 1024, "Size of the LMDB map.", minimum=1),
    Field("done_retention_hours", float, 168.0, "Completion records older than this are "
          "pruned, so the state does not grow with the mail ever handled."),
    Field("log_level", str, "info", "Log level.", choices=("debug", "info", "warning", "error")),
)
BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Config:
    queue: str
    scanner: str
    spool: str
    worker: str
    worker_mode: str
    workers: int
    batch_size: int
    timeout: float
    startup_allowance: float
    max_rss_mb: int | None
    rlimit_as_mb: int | None
    rss_interval: float
    strikes: int
    max_wait: float
    storm_limit: int
    storm_window: float
    canary: str | None
    poll_interval: float
    grace: float
    spare_workers: int | None
    recycle_batches: int
    recycle_rss_mb: int | None
    history: int
    recovery_solo_after: int
    map_size_mb: int
    done_retention_hours: float
    log_level: str
    plugin: dict = field(default_factory=dict)  # [plugin.NAME] tables: NAME -> {key: value}
    source: str = "built-in defaults"

    def plugin_options(self, name: str) -> dict:
        """The options of plugin *name* (``[plugin.NAME]`` / ``--plugin-option NAME.KEY=V``).
        A plugin validates its own keys and raises ConfigError naming a bad one."""
        return dict(self.plugin.get(name, {}))

    @property
    def worker_argv(self) -> list[str]:
        try:
            argv = shlex.split(self.worker)
        except ValueError as exc:
            raise ConfigError(f"worker: cannot split {self.worker!r}: {exc}") from None
        if not argv:
            raise ConfigError("worker: empty command")
        return argv


def check(name: str, value: Any, where: str) -> Any:
    """Validate one value; raise ConfigError naming the key."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise ConfigError(f"{where}: unknown key {name!r}")
    if value is None and spec.optional:
        return None
    ok = isinstance(value, spec.type) and not isinstance(value, bool)
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"{where}: {name} must be {spec.type.__name__}, not {type(value).__name__} ({value!r})"
        )
    if spec.type in (int, float) and spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{where}: {name} must be at least {spec.minimum}, not {value!r}")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{where}: {name} must be one of {', '.join(spec.choices)}, not {value!r}")
    return value


def find_config(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    for candidate in ("./qsup.toml", "/etc/qsup/qsup.toml"):
        if os.path.isfile(candidate):
            return candidate
    return None


def load(path: str | None, overrides: dict[str, Any]) -> Config:
    values = {f.name: f.default for f in FIELDS}
    source = "built-in defaults"
    plugin: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        table = data.get("qsup", data) if isinstance(data.get("qsup"), dict) else data
        for key, value in table.items():
            if key == "plugin":
                plugin = _check_plugin_tables(value, path)
                continue
            values[key] = check(key, value, path)
        source = path
    for item in overrides.pop("plugin_option", None) or ():
        name_key, sep, value = item.partition("=")
        name, dot, key = name_key.partition(".")
        if not (sep and dot and name and key):
            raise ConfigError(f"--plugin-option: expected NAME.KEY=VALUE, not {item!r}")
        plugin.setdefault(name, {})[key] = value
    for key, value in overrides.items():
        if value is not None:
            values[key] = check(key, value, f"--{BY_NAME[key].flag or key.replace('_', '-')}")
    if values["spool"] is None:
        values["spool"] = _default_spool()
    if values["worker"] is None:
        values["worker"] = demo_worker_command()
    return Config(**values, plugin=plugin, source=source)


def _check_plugin_tables(value: Any, where: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{where}: plugin must be tables [plugin.NAME] of options")
    return {name: dict(opts) for name, opts in value.items()}


def default_state_dir() -> str:
    env = os.environ.get("QSUP_STATE")
    if env:
        return env
    return "/var/lib/qsup" if os.geteuid() == 0 else "./.qsup"
