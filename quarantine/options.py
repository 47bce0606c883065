"""The command line's plumbing: the global options, a flag for every config key, and
the queue flags of the commands that only read.

The global options (``--config``, ``--state``) are accepted before the command name
and after it (``qsup drain --state DIR``): every command made by :class:`Group` takes
them too, and sets them on the group's :class:`Ctx` (the last one given wins).
"""

from __future__ import annotations

import time

import click

from quarantine import ops, timespec
from quarantine.config import BY_NAME, FIELDS, Config, default_state_dir, find_config, load

EPILOG = """\b
Exit codes:
  0  done
  2  usage or configuration error (the message names the bad value)
  3  stopped with the breaker open (systemic failure: nothing was quarantined)
  4  state problem (locked by another qsup, unwritable, corrupt, full)

\b
Configuration: --config FILE, else ./qsup.toml, else /etc/qsup/qsup.toml, else
built-in defaults. Every key is also a flag named like it (max_rss_mb:
--max-rss-mb); flags beat the file. State: --state DIR, else $QSUP_STATE, else
/var/lib/qsup (root) or ./.qsup. --config and --state go before or after the
command. Reference: docs/reference.md and qsup(8).
"""

CONFIG_DEFAULT = "./qsup.toml if present, else /etc/qsup/qsup.toml if present, else built-in defaults"
STATE_DEFAULT = "$QSUP_STATE, else /var/lib/qsup as root, else ./.qsup"


class Ctx:
    """What the global options chose; resolved when a command asks."""

    def __init__(self, config_path: str | None = None, state: str | None = None):
        self.explicit_config, self.explicit_state = config_path, state

    @property
    def config_path(self) -> str | None:
        return find_config(self.explicit_config)

    @property
    def state(self) -> str:
        return self.explicit_state or default_state_dir()

    def config(self, overrides: dict | None = None) -> Config:
        return load(self.config_path, overrides or {})


class Option(click.Option):
    """An option whose ``show_default`` string is shown as the default itself
    (``[default: 30]``), not in parentheses as click does for a description: a
    config key's flag defaults to None (unset: the file may set it), but its real
    default is the key's."""

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        return extra


def _set_global(ctx: click.Context, param: click.Parameter, value):
    obj = ctx.find_object(Ctx)
    if value is not None and obj is not None:  # None: not given here, or a completion
        setattr(obj, f"explicit_{param.name}", value)


def global_params(expose: bool) -> list[Option]:
    """``--config`` and ``--state``: the group's (*expose*: its callback makes the Ctx),
    or a command's (they change the Ctx the group made)."""
    kw = {} if expose else {"expose_value": False, "callback": _set_global}
    return [
        Option(["--config", "config_path" if expose else "config"], type=click.Path(dir_okay=False),
                     default=None, metavar="FILE", show_default=CONFIG_DEFAULT,
                     help="TOML configuration file.", **kw),
        Option(["--state", "state"], type=click.Path(file_okay=False), default=None, metavar="DIR",
                     show_default=STATE_DEFAULT, help="LMDB state directory.", **kw),
    ]


class Command(click.Command):
    """A qsup command: takes the global options after its name as well."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(global_params(expose=False))


class Group(click.Group):
    command_class = Command


class TimeParam(click.ParamType):
    """An ISO time or a duration back from now (``2h``): a wall-clock timestamp."""

    name = "time"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return timespec.parse(value, time.time())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()


def _kind(field):
    if field.choices:
        return click.Choice(field.choices)
    return {int: int, float: float, str: str}[field.type]


def config_options(func):
    """A flag for every config key (flags beat the file), named like the key, with
    its older spellings as aliases and its default in --help."""
    func = click.option("--plugin-option", "plugin_option", multiple=True, metavar="NAME.KEY=VALUE",
                        help="An option of a plugin, as in a [plugin.NAME] table (repeatable).")(func)
    for field in reversed(FIELDS):
        many = field.type is tuple  # a list-valued key: the flag is repeatable
        func = click.option(field.flag, *field.aliases, field.name, cls=Option,
                            type=str if many else _kind(field), multiple=many,
                            default=None, metavar=field.value_name, help=field.help,
                            show_default=field.shown_default)(func)
    return func


def queue_options(func):
    """The flags that name a queue, for the commands that only read (list, show): a
    state directory belongs to one queue, and refuses another (binding.py)."""
    func = click.option("--plugin-option", "plugin_option", multiple=True, metavar="NAME.KEY=VALUE",
                        help="An option of the queue's plugin (repeatable), for the same check.")(func)
    func = click.option("--queue", "queue", default=None, metavar="KIND",
                        help="Queue kind, for the same check.")(func)
    return click.option("--spool", "spool", default=None, metavar="DIR",
                        help="Refuse (exit 2) unless the state directory belongs to this spool. "
                             "Default: no check; the state's own queue.")(func)


def wait_option(func):
    return click.option("--wait", type=click.FloatRange(min=0.1), default=ops.WAIT, show_default=True,
                        metavar="SECONDS",
                        help="How long the running qsup may take to pick the request up; "
                             "after that it is withdrawn and nothing is done.")(func)


def overrides(kwargs: dict) -> dict:
    """Take the config flags out of a command's *kwargs*: the overrides of load()."""
    out = {k: kwargs.pop(k) for k in list(kwargs) if k in BY_NAME}
    out.update({k: None for k, v in out.items() if v == ()})  # a repeatable flag not given
    out["plugin_option"] = kwargs.pop("plugin_option", ())
    return out
