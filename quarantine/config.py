"""Configuration: built-in defaults < TOML file < command-line flags.

Every key is declared once, as an attribute of Config with its type, default and
help (_key()); FIELDS lists them for the rest of qsup. The CLI makes a flag of each,
and a file with a wrong type, an unknown key or a negative number is refused with a
one-line message naming the key (exit 2).
"""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
import typing
from dataclasses import dataclass, field, fields
from types import NoneType
from typing import Any
from urllib.parse import urlsplit

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
    aliases: tuple[str, ...] = ()  # older spellings of the flag, still accepted
    minimum: float | None = 0
    choices: tuple[str, ...] = ()
    optional: bool = False  # may be unset (None)
    shown: str = ""  # the default as --help and the docs say it, when not the plain value
    metavar: str = ""  # the flag's value in --help, when not said by its type

    @property
    def flag(self) -> str:
        """The command-line flag: the key with dashes (``max_rss_mb`` -> ``--max-rss-mb``)."""
        return "--" + self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        """The type as the docs say it."""
        return "list of str" if self.type is tuple else self.type.__name__

    @property
    def value_name(self) -> str:
        """What the flag takes, for --help and the docs: MB, SECONDS, N, ..."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "|".join(self.choices)
        if self.name.endswith("_mb"):
            return "MB"
        if self.name.endswith("_hours"):
            return "HOURS"
        return {float: "SECONDS", int: "N"}.get(self.type, "TEXT")

    @property
    def shown_default(self) -> str:
        if self.shown:
            return self.shown
        if self.default is None:
            return "none"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


_KEY = "qsup.config"  # where _key() keeps the rest of a Field in a dataclass field's metadata


def _key(default: Any, help: str, *, aliases: tuple[str, ...] = (), minimum: float | None = 0,
         choices: tuple[str, ...] = (), optional: bool = False, shown: str = "",
         metavar: str = "") -> Any:
    """Declare a config key as a field of Config: its name and type come from the
    attribute, the rest of its Field from here. The field has no default of its
    own: load() fills in every key."""
    spec = {"default": default, "help": help, "aliases": aliases, "minimum": minimum,
            "choices": choices, "optional": optional, "shown": shown, "metavar": metavar}
    return field(metadata={_KEY: spec})


@dataclass(frozen=True)
class Config:
    """The configuration. Every key is declared once, here, with _key(); FIELDS and
    BY_NAME are read from these declarations."""

    queue: str = _key("spool", "Queue kind (a plugin name): 'spool' is built in.", metavar="KIND")
    scanner: str = _key("command", "Scanner kind (a plugin name): 'command' runs --worker.",
                        metavar="KIND")
    spool: str = _key(None, "Spool directory (incoming/, outgoing/, quarantine/, tmp/).",
                      optional=True, shown="/var/spool/qsup as root, else ./spool", metavar="DIR")
    worker: str = _key(None, "Worker command, split like a shell would but never run through "
                       "one; message paths are appended.", optional=True,
                       shown="none: drain and run refuse to start without a scanner",
                       metavar="COMMAND")
    worker_mode: str = _key("oneshot", "'oneshot': a process per batch; 'persistent': "
                            "long-lived workers read batches on stdin.",
                            choices=("oneshot", "persistent"))
    workers: int = _key(5, "Worker processes at once.", minimum=1)
    batch_size: int = _key(30, "Messages per batch.", minimum=1)
    timeout: float = _key(30.0, "Seconds allowed per message (from the last progress line "
                          "when the worker writes them).")
    startup_allowance: float = _key(10.0, "Seconds added to each batch deadline for start-up.")
    max_rss_mb: int | None = _key(None, "Kill a worker whose process tree's RSS passes this "
                                  "many MB (ending 'memory').", aliases=("--max-rss",), minimum=1,
                                  optional=True, shown="no limit")
    rlimit_as_mb: int | None = _key(None, "Optional hard ceiling: RLIMIT_AS for each worker, "
                                    "in MB.", minimum=1, optional=True, shown="no limit")
    rss_interval: float = _key(0.05, "Seconds between RSS samples of each worker.")
    strikes: int = _key(2, "Crashes blamed on a message before it is quarantined: a crash alone, "
                        "or one its progress lines pin on it (begun, never done). The last one "
                        "must happen alone in a fresh worker.", minimum=1)
    max_wait: float = _key(600.0, "Seconds drain waits with the breaker open before it gives "
                           "up (exit 3).")
    storm_limit: int = _key(10, "More distinct messages than this crashing alone within "
                            "storm_window open the breaker.", minimum=1)
    storm_window: float = _key(600.0, "Seconds of the storm window.")
    canary: str | None = _key(None, "Known-good message run alone before any quarantine.",
                              optional=True, shown="a built-in minimal RFC 5322 message",
                              metavar="FILE")
    poll_interval: float = _key(1.0, "Seconds between looks at the queue when idle.")
    grace: float = _key(30.0, "Seconds a warm stop lets in-flight batches finish.")
    spare_workers: int | None = _key(None, "Persistent mode: workers started ahead, so a crash "
                                     "or a canary run does not wait for a worker's start-up. "
                                     "Unset: started once something has crashed, as many as "
                                     "crashes and canaries took over the last minute during one "
                                     "start-up, at least a quarter of the workers plus one.",
                                     minimum=0, optional=True, shown="automatic")
    recycle_batches: int = _key(1000, "Persistent workers are replaced after this many "
                                "batches.", minimum=1)
    recycle_rss_mb: int | None = _key(None, "Persistent workers are replaced when their RSS "
                                      "passes this many MB between batches.", minimum=1,
                                      optional=True, shown="no limit")
    history: int = _key(10, "Attempts kept per message (older ones are counted only).",
                        minimum=1)
    recovery_solo_after: int = _key(2, "After a restart, an ID found in flight this many "
                                    "times runs alone.", minimum=1)
    map_size_mb: int = _key(1024, "Size of the LMDB map.", minimum=1)
    done_retention_hours: float = _key(168.0, "Completion records older than this are pruned, "
                                       "so the state does not grow with the mail ever handled.")
    log_level: str = _key("info", "Log level.", choices=("debug", "info", "warning", "error"))
    # operator digests (notify.py): off unless notify_to is set
    notify_to: str | None = _key(None, "Operator address(es) for digest mails, comma-separated. "
                                 "Mail only ever goes here, never to a message's sender.",
                                 optional=True, shown="none: no digests", metavar="ADDRESS")
    notify_smtp: str | None = _key(None, "Send digests through this SMTP server, HOST:PORT "
                                   "(STARTTLS when offered).", optional=True, metavar="HOST:PORT")
    notify_sendmail: str | None = _key(None, "Send digests through this sendmail program (a path) "
                                       "instead of SMTP.", optional=True, metavar="PATH")
    notify_from: str | None = _key(None, "From: and envelope sender of digests.", optional=True,
                                   shown="From qsup@HOST, with the null envelope sender <>",
                                   metavar="ADDRESS")
    notify_digest: float = _key(900.0, "Seconds: at most one digest mail per period.", minimum=1)
    notify_max_per_hour: int = _key(4, "More digests than this in an hour: qsup stops sending "
                                    "(and says so once) until the hour allows again.", minimum=1)
    notify_auth_file: str | None = _key(None, "File with the SMTP AUTH user and password (two "
                                        "lines); else $QSUP_NOTIFY_USER/$QSUP_NOTIFY_PASSWORD. "
                                        "Never on the command line.", optional=True, metavar="FILE")
    # -- operating it (docs/reference.md §8): logs, metrics; read at start, not on reload
    log: str = _key("stderr", "Where log lines go: 'stderr' (with a timestamp), 'syslog' (the "
                    "local syslog socket, facility mail) or 'journald' (the journal's native "
                    "socket, with structured fields).", choices=("stderr", "syslog", "journald"))
    log_socket: str | None = _key(None, "Socket of log = syslog or journald. Default: /dev/log "
                                  "for syslog, /run/systemd/journal/socket for journald.",
                                  optional=True, metavar="PATH", shown="by log")
    metrics_listen: str | None = _key(None, "HOST:PORT to serve Prometheus metrics on at "
                                      "/metrics (e.g. 127.0.0.1:9640). Default: no metrics.",
                                      optional=True, metavar="HOST:PORT", shown="off")
    # -- verdicts (docs/reference.md §7): what a scanner's answer does to a message
    on_infected: str = _key("quarantine", "An 'infected NAME' verdict: 'quarantine' (kind "
                            "infected, never delivered) or 'deliver'.", choices=("quarantine", "deliver"))
    on_spam: str = _key("tag", "A 'spam S/T' verdict: 'tag' (delivered with X-Spam-Flag: YES and "
                        "X-Spam-Status), 'quarantine' (kind spam) or 'deliver' (unchanged).",
                        choices=("tag", "quarantine", "deliver"))
    spam_quarantine_score: float | None = _key(None, "Spam scoring this or more is quarantined "
                                               "(kind spam) whatever on_spam says.", optional=True,
                                               minimum=None, metavar="SCORE", shown="none")
    scanners: tuple = _key((), "A chain of scanner kinds, each message through each in order "
                           "(e.g. [\"clamd\", \"spamc\"]): a crash in any one is that message's "
                           "crash, and the verdicts are combined (infected wins over spam). On the "
                           "command line: repeat the flag, or separate the kinds with commas. "
                           "Not together with scanner.", metavar="KIND",
                           shown="none: the one scanner of the scanner key")
    # -- scanner identity and re-test (docs/reference.md §9)
    scanner_version: str | None = _key(None, "Command printing the scanner's version (its first "
                                       "line is the identity; split like a shell would, never run "
                                       "through one). Default: the scanner plugin's own reading "
                                       "(clamd VERSION), else the scanner's name.", optional=True,
                                       metavar="COMMAND", shown="the scanner's own")
    retest: str = _key("auto", "'auto': when the scanner's identity changes, re-test alone what was "
                       "quarantined as poison under another one; 'off': never.", choices=("auto", "off"))
    retest_rate: float = _key(60.0, "Re-tests started per minute at most (one at a time).",
                              minimum=0.01)
    retest_check: float = _key(300.0, "Seconds between readings of the scanner's identity in run "
                               "(also read at start, on reload and on qsup retest).", minimum=1)
    # -- the fleet (docs/reference.md §10): gateways sharing poison fingerprints through Redis
    fleet: str | None = _key(None, "Redis URL of the fleet (redis://HOST:PORT/DB, rediss:// for "
                             "TLS): confirmed poison is shared with the other gateways. A password "
                             "goes in the config file's URL, fleet_auth_file or "
                             "$QSUP_FLEET_PASSWORD, never on the command line.", optional=True,
                             metavar="URL", shown="off")
    fleet_name: str | None = _key(None, "This gateway's name in the fleet.", optional=True,
                                  metavar="NAME", shown="the host name")
    fleet_trust: str = _key("solo", "A message the fleet confirms as poison: 'solo' (it runs alone "
                            "at once, and one crash there quarantines it) or 'quarantine' "
                            "(quarantined without running).", choices=("solo", "quarantine"))
    fleet_ttl: float = _key(2592000.0, "Seconds a fleet entry lives after its last publication.",
                            minimum=60, shown="2592000 (30 days)")
    fleet_auth_file: str | None = _key(None, "File with the fleet's Redis password (one line), or "
                                       "a user and a password (two lines); else "
                                       "$QSUP_FLEET_PASSWORD.", optional=True, metavar="FILE")
    plugin: dict = field(default_factory=dict)  # [plugin.NAME] tables: NAME -> {key: value}
    source: str = "built-in defaults"
    # the keys the file or a flag set ("plugin.NAME" for a plugin's options): what
    # the user chose, as against the defaults (a command naming no queue uses the
    # queue its state directory belongs to)
    given: frozenset = frozenset()

    def plugin_options(self, name: str) -> dict:
        """The options of plugin *name* (``[plugin.NAME]`` / ``--plugin-option NAME.KEY=V``).
        A plugin validates its own keys and raises ConfigError naming a bad one."""
        return dict(self.plugin.get(name, {}))

    @property
    def worker_argv(self) -> list[str]:
        if self.worker is None:
            raise ConfigError("worker: no scanner configured: give --worker COMMAND (a program of "
                              "the worker protocol, docs/reference.md §4), worker = \"COMMAND\" in "
                              "the config file, or a scanner plugin with --scanner KIND; `qsup demo` "
                              "runs the bundled demo scanner")
        try:
            argv = shlex.split(self.worker)
        except ValueError as exc:
            raise ConfigError(f"worker: cannot split {self.worker!r}: {exc}") from None
        if not argv:
            raise ConfigError("worker: empty command")
        return argv


def _fields() -> tuple[Field, ...]:
    hints = typing.get_type_hints(Config)
    out = []
    for f in fields(Config):
        if _KEY not in f.metadata:
            continue  # plugin, source: not keys of the [qsup] table
        kinds = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not NoneType]
        if len(kinds) != 1 or kinds[0] not in (str, int, float, tuple):
            raise TypeError(f"config key {f.name}: type must be str, int, float or tuple (or | None)")
        out.append(Field(f.name, kinds[0], **f.metadata[_KEY]))
    return tuple(out)


FIELDS: tuple[Field, ...] = _fields()
BY_NAME = {f.name: f for f in FIELDS}


def check(name: str, value: Any, where: str) -> Any:
    """Validate one value; raise ConfigError naming the key."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise ConfigError(f"{where}: unknown key {name!r}")
    if value is None and spec.optional:
        return None
    if spec.type is tuple:
        return _names(name, value, where)
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
    if name == "fleet" and where.startswith("--"):
        _no_password(value, where)
    return value


def _no_password(url: str, where: str) -> None:
    """A password on the command line is seen by every user (ps(1)): refused."""
    if urlsplit(url).password:
        raise ConfigError(f"{where}: no password on the command line (ps shows it): put it in "
                          "fleet_auth_file, $QSUP_FLEET_PASSWORD or the config file's fleet URL")


def _names(name: str, value: Any, where: str) -> tuple[str, ...]:
    """A list of names (a TOML array of strings; a flag's values, each maybe
    comma-separated)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {name} must be a list of names, not {value!r}")
    if where.startswith("--"):
        value = [part.strip() for item in value for part in str(item).split(",")]
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ConfigError(f"{where}: {name}: {bad[0]!r} is not a name")
    return tuple(value)


def _check_chain(values: dict) -> None:
    """``scanners`` replaces ``scanner``: both chosen is a contradiction, not a precedence."""
    if values["scanners"] and values["scanner"] != BY_NAME["scanner"].default:
        raise ConfigError(f"scanners: give either scanner = {values['scanner']!r} or scanners = "
                          f"{list(values['scanners'])!r}, not both")


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
    given: set[str] = set()
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
        given.update(k for k in table if k != "plugin")
        given.update(f"plugin.{name}" for name in plugin)
        source = path
    for item in overrides.pop("plugin_option", None) or ():
        name_key, sep, value = item.partition("=")
        name, dot, key = name_key.partition(".")
        if not (sep and dot and name and key):
            raise ConfigError(f"--plugin-option: expected NAME.KEY=VALUE, not {item!r}")
        plugin.setdefault(name, {})[key] = value
        given.add(f"plugin.{name}")
    for key, value in overrides.items():
        if value is not None:
            values[key] = check(key, value, BY_NAME[key].flag)
            given.add(key)
    if values["spool"] is None:
        values["spool"] = _default_spool()
    _check_chain(values)
    return Config(**values, plugin=plugin, source=source, given=frozenset(given))


def _check_plugin_tables(value: Any, where: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{where}: plugin must be tables [plugin.NAME] of options")
    return {name: dict(opts) for name, opts in value.items()}


def default_state_dir() -> str:
    env = os.environ.get("QSUP_STATE")
    if env:
        return env
    return "/var/lib/qsup" if os.geteuid() == 0 else "./.qsup"
