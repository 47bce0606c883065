"""Operator actions that change the quarantine (release, purge): carried out by the
running qsup if there is one, else here, on the queue the state belongs to."""

from __future__ import annotations

import os
import sys
import time

import click

from quarantine import binding, moves, ops, pm
from quarantine.app import setup_logging
from quarantine.errors import EXIT_STATE, ConfigError, NotFound, StateError
from quarantine.options import Ctx
from quarantine.store import Store


def carry_out(ctx: Ctx, request: dict, wait: float, **config_kw) -> None:
    """Run a release or purge on the queue the state directory belongs to: in the
    running qsup if there is one (withdrawn if it does not take it within *wait*
    seconds), else here."""
    config = ctx.config(config_kw)
    setup_logging("warning" if config.log_level == "info" else config.log_level)
    plugins = pm.build()
    holder = Store.holder(ctx.state) if os.path.isdir(ctx.state) else None
    if holder:
        binding.resolve(plugins, config, binding.recorded_in(ctx.state), ctx.state)
        answer = ops.submit_request(ctx.state, request, wait)
        if not answer.get("ok"):
            failed = StateError if answer.get("code") == EXIT_STATE else NotFound
            raise failed(answer.get("error", "request failed"))
        report(ops.Done(answer.get("lines", []), answer.get("problems", [])))
        return
    store = Store(ctx.state, map_mb=config.map_size_mb)
    try:
        with store.read() as r:
            config = binding.resolve(plugins, config, binding.recorded(r), ctx.state)
        queues = plugins.queue_types()
        if config.queue not in queues:
            raise ConfigError(f"queue: unknown kind {config.queue!r} (known: {', '.join(sorted(queues))})")
        queue = queues[config.queue](config)
        moves.finish_pending(store, queue, time.time())  # what a killed release or qsup began
        done = ops.execute(store, queue, request)
    finally:
        store.close()
    report(done)


def report(done: ops.Done) -> None:
    for line in done.lines:
        click.echo(line)
    for line in done.problems:
        click.echo(f"qsup: error: {line}", err=True)
    if done.problems:
        sys.exit(EXIT_STATE)


def ask_retest(ctx: Ctx, wait: float, **config_kw) -> None:
    """``qsup retest``: the running qsup reads the scanner's identity now. Without
    one, the next drain or run does it at its start."""
    config = ctx.config(config_kw)
    setup_logging("warning" if config.log_level == "info" else config.log_level)
    if not (os.path.isdir(ctx.state) and Store.holder(ctx.state)):
        click.echo(f"qsup: no qsup is running on {ctx.state}: the next drain or run reads the scanner's "
                   f"identity at its start and re-tests what was quarantined under another one")
        return
    answer = ops.submit_request(ctx.state, {"op": "retest"}, wait)
    if not answer.get("ok"):
        failed = StateError if answer.get("code") == EXIT_STATE else NotFound
        raise failed(answer.get("error", "request failed"))
    report(ops.Done(answer.get("lines", []), answer.get("problems", [])))
