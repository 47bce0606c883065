"""The command scanner, a built-in plugin: runs the configured worker command in
one-shot or persistent mode (docs/reference.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from quarantine.hookspecs import hookimpl


@dataclass
class CommandScanner:
    argv: list[str]
    mode: str = "oneshot"
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = "command"
    reader: Callable[[], str] | None = None  # the scanner's identity (docs/reference.md §9)

    def identity(self) -> str:
        """The scanner's version, as its plugin reads it; "" if it has no reading."""
        return self.reader() if self.reader else ""

    def command(self) -> list[str]:
        return list(self.argv)

    def environment(self) -> dict[str, str]:
        return dict(self.extra_env)


@hookimpl
def qsup_scanner_types():
    return {"command": lambda config: CommandScanner(config.worker_argv, config.worker_mode)}
