"""The ``qsup`` command line (docs/reference.md §2)."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from quarantine import actions, binding, live, ops, pm, reading, timespec, views
from quarantine.app import build_supervisor, handle_signals, setup_logging
from quarantine.errors import EXIT_OK, QsupError
from quarantine.options import (EPILOG, TIME, Ctx, Group, Option, config_options, global_params,
                                queue_options, wait_option)
from quarantine.options import overrides as _overrides
from quarantine.reading import open_read as _open_read
from quarantine.service import Service
from quarantine.views import format_ending, format_path, format_size, format_when, format_why

log = logging.getLogger("qsup")


@click.group(cls=Group, epilog=EPILOG, params=global_params(expose=True),
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="qsup", prog_name="qsup")
@click.pass_context
def cli(ctx, config_path, state):
    """qsup: a poison-message quarantine supervisor for batch content scanners.

    It hands batches of queued messages to scanner workers, finds the message
    that crashed a worker by bisecting its batch, quarantines repeat offenders
    and delivers everything else. Start with `qsup demo`.
    """
    ctx.obj = Ctx(config_path, state)


# --------------------------------------------------------------------- running
def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(
        f"delivered {summary['delivered']}, quarantined {summary['quarantined']}, "
        f"worker crashes {summary['crashes']}, unexplained {summary['unexplained']}, "
        f"in {summary['seconds']:.1f}s; breaker {summary['breaker']['state']}"
    )


@cli.command(epilog=EPILOG)
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def drain(ctx: Ctx, as_json: bool, **kwargs):
    """Process everything now in the queue, then exit.

    SIGTERM/SIGINT: warm stop, a second one cold; SIGHUP: reload the configuration
    (as `run` does: a drain under a service manager must not die of a reload).
    """
    overrides = _overrides(kwargs)
    config = ctx.config(overrides)
    setup_logging(config.log_level, target=config.log, socket_path=config.log_socket)
    sup, store = build_supervisor(ctx.state, config, "drain")
    try:
        service = Service.start(sup, config, notify=False)  # metrics, served until exit
        handle_signals(sup, reload_from=lambda: ctx.config(overrides))
        code = sup.serve(follow=False)
        service.finish(sup)
        _print_summary(sup.summary(), as_json)
    finally:
        store.close()
    sys.exit(code)


@cli.command(epilog=EPILOG)
@config_options
@click.pass_obj
def run(ctx: Ctx, **kwargs):
    """The daemon: like drain, but keeps watching the queue.

    SIGTERM/SIGINT: warm stop (in-flight batches finish within --grace, then are
    killed; a stop never counts against a message); a second signal: cold stop.
    SIGHUP: reload the configuration file.
    """
    overrides = _overrides(kwargs)
    config = ctx.config(overrides)
    setup_logging(config.log_level, target=config.log, socket_path=config.log_socket)
    sup, store = build_supervisor(ctx.state, config, "run")
    try:
        service = Service.start(sup, config, notify=True)  # systemd, metrics
        handle_signals(sup, reload_from=service.reloading(lambda: ctx.config(overrides)))
        where = config.spool if config.queue == "spool" else f"the {config.queue} queue"
        log.info("watching %s with %d worker(s) (%s)", where, config.workers, config.source)
        code = sup.serve(follow=True)
        service.finish(sup)
        _print_summary(sup.summary(), False)
    finally:
        store.close()
    sys.exit(code)


# ------------------------------------------------------------------ inspecting
@cli.command("list", epilog=EPILOG)
@click.option("--kind", type=click.Choice(views.KINDS + ("all",)), default="all", show_default=True,
              help="Only this kind of quarantine: poison (crashed the scanner), infected, spam, "
                   "orphan (a file no record names).")
@click.option("--since", type=TIME, default=None, metavar="TIME",
              help=f"Only those quarantined since TIME: {timespec.HELP}.")
@click.option("--limit", cls=Option, type=click.IntRange(min=0), default=None, metavar="N",
              show_default=f"{views.LIST_LIMIT}; with --json, all",
              help="Show the newest N (0: all); a last line says how many more there are.")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N",
              help="Skip the newest N first: the next page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@queue_options
@click.pass_obj
def list_(ctx: Ctx, kind: str, since: float | None, limit: int | None, offset: int, as_json: bool, **kwargs):
    """The quarantine, newest first: ID, when, why, strikes, size, sender, subject."""
    store = _open_read(ctx, _overrides(kwargs))
    try:
        rows = ops.records(store)
    finally:
        store.close()
    matching = views.select(rows, kind, since)
    if limit is None:
        limit = 0 if as_json else views.LIST_LIMIT
    page = matching[offset:offset + limit] if limit else matching[offset:]
    if as_json:
        click.echo(json.dumps(page, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("The quarantine is empty.")
        return
    if not matching:
        click.echo(f"Nothing matches ({views.filters_text(kind, since)}); the quarantine holds "
                   f"{len(rows)} message(s) in all.")
        return
    out = views.console()
    out.print(views.quarantine_table(page, views.list_title(len(page), len(matching), offset, kind, since)))
    more = views.more_line(len(page), len(matching), offset)
    if more:
        out.print(more)


@cli.command(epilog=EPILOG)
@click.argument("qid")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@queue_options
@click.pass_obj
def show(ctx: Ctx, qid: str, as_json: bool, **kwargs):
    """One message: every attempt (batch size, worker pid, crash kind, signal or
    exit code, peak RSS, duration, stderr tail), the bisection path, headers."""
    from quarantine import export as export_
    from quarantine.views import format_evidence

    overrides = _overrides(kwargs)
    store = _open_read(ctx, overrides)
    try:
        found = ops.details(store, qid)
        with store.read() as r:
            heads = export_.Headers(binding.recorded(r), ctx.config(overrides).spool)
    finally:
        store.close()
    for item in found:  # a delivered message's headers, from outgoing/ while it is there
        item["journal"] = [heads.fill_dict(row) for row in item["journal"]]
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    for item in found:
        rec, hist = item["record"], item["history"]
        state = "quarantined" if item["quarantined"] else "not quarantined"
        fp = item["key"].partition(":")[2]
        click.echo(f"{qid}  [{state}]" + (f"  fingerprint {fp}" if fp else ""))
        if rec:
            click.echo(f"  when     {format_when(rec.get('when'))}")
            click.echo(f"  why      {format_why(rec)}")
            click.echo(f"  strikes  {rec.get('strikes')}")
            click.echo(f"  scanner  {rec.get('scanner') or '?'}")
            click.echo(f"  size     {format_size(rec.get('size', 0))}")
            click.echo(f"  file     {rec.get('queue', '?')}: quarantine/{rec.get('name', qid)}")
            if format_path(rec.get("path")):
                click.echo(f"  path     {format_path(rec.get('path'))}")
        for line in format_evidence(rec.get("evidence"), rec.get("when")):
            click.echo(f"  {line}")
        if item["journal"]:
            click.echo("  journal:")
        for row in item["journal"]:
            said = "  ".join(filter(None, (row["verdict"], row["batch"] and f"batch {row['batch']}",
                                           row["scanner"] and f"scanner {row['scanner']}",
                                           row["name"] and f"as {row['name']}", row["note"])))
            click.echo(f"    {format_when(row['time'])}  {row['fate']:<11}  {said}")
            for key in ("message_id", "sender"):
                if row[key] and not rec:
                    click.echo(f"      {key.replace('_', '-')}: {row[key]}")
        for key, label in (("attempts_total", "attempts"), ("unexplained", "unexplained"),
                           ("deaths", "in flight when qsup died"), ("forgiven", "strikes forgiven")):
            if hist.get(key):
                click.echo(f"  {label}: {hist[key]}")
        attempts = hist.get("attempts", [])
        if attempts:
            click.echo(f"  attempts (last {len(attempts)}):")
        for a in attempts:
            ending = format_ending(a.get("ending"), a.get("signal"), a.get("exit_code"))
            click.echo(f"    {format_when(a.get('when'))}  batch of {a.get('size')}  pid {a.get('pid', '-')}  "
                       f"{ending}  peak RSS {format_size(a.get('peak_rss') or 0)}  "
                       f"{a.get('duration', 0):.2f}s{'  path ' + '/'.join(a['path']) if a.get('path') else ''}"
                       f"{'  STRIKE' if a.get('strike') else ''}"
                       f"{'  scanner ' + a['scanner'] if a.get('scanner') else ''}")
            tail = (a.get("stderr") or "").strip().splitlines()[-3:]
            for line in tail:
                click.echo(f"      stderr: {line[:160]}")
        if rec.get("headers"):
            click.echo("  headers:")
            for k, v in rec["headers"].items():
                click.echo(f"    {k}: {v}")
        click.echo("")


@cli.command(epilog=EPILOG)
@click.option("--since", metavar="WHEN", default=None,
              help="From this time: ISO (2026-03-01T14:00, local unless it names a zone) or a "
                   "duration back from now (90s, 30m, 2h, 1d, 1w). Default: the oldest entry kept "
                   "(done_retention_hours).")
@click.option("--until", metavar="WHEN", default=None, help="Up to this time (same forms). Default: now.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per record.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line (the default).")
@queue_options
@click.pass_obj
def export(ctx: Ctx, since, until, as_json: bool, as_csv: bool, **kwargs):
    """Every message qsup handled in a window, one record each: qid, fate (delivered,
    tagged, quarantined, released, purged; vanished: gone from the queue before its
    move), time, message_id, sender, verdict, scanner. Oldest first, streamed."""
    import time

    from quarantine import export as export_

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    now = time.time()
    start = export_.parse_time(since, now, "--since") if since else None
    end = export_.parse_time(until, now, "--until") if until else None
    overrides = _overrides(kwargs)
    store = _open_read(ctx, overrides)
    try:
        with store.read() as r:
            heads = export_.Headers(binding.recorded(r), ctx.config(overrides).spool)
        export_.write(sys.stdout, export_.rows(store, start, end, heads), as_json)
        sys.stdout.flush()
    except BrokenPipeError:  # `qsup export | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()


@cli.command(epilog=EPILOG)
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Release every quarantined message.")
@click.option("--no-scan", is_flag=True, help="Hand the messages on without scanning them again.")
@wait_option
@config_options
@click.pass_obj
def release(ctx: Ctx, ids, everything, no_scan, wait, **kwargs):
    """Put quarantined messages back into the queue to be scanned again (after the
    scanner is fixed). Nothing is delivered unscanned unless --no-scan is given."""
    if not ids and not everything:
        raise click.UsageError("name the IDs to release, or give --all")
    actions.carry_out(ctx, {"op": "release", "ids": list(ids), "all": everything, "no_scan": no_scan},
                  wait, **_overrides(kwargs))


@cli.command(epilog=EPILOG)
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Purge every quarantined message.")
@click.option("--yes", is_flag=True, help="Really delete: without it nothing is deleted.")
@wait_option
@config_options
@click.pass_obj
def purge(ctx: Ctx, ids, everything, yes, wait, **kwargs):
    """Delete quarantined messages for good: the only command that deletes mail."""
    if not ids and not everything:
        raise click.UsageError("name the IDs to purge, or give --all")
    if not yes:
        what = "every quarantined message" if everything else ", ".join(ids)
        raise click.UsageError(f"purge deletes mail for good; nothing deleted. Repeat with --yes to delete {what}")
    actions.carry_out(ctx, {"op": "purge", "ids": list(ids), "all": everything}, wait, **_overrides(kwargs))


@cli.command(epilog=EPILOG)
@wait_option
@config_options
@click.pass_obj
def retest(ctx: Ctx, wait, **kwargs):
    """Tell the running qsup to read the scanner's identity now (after a signature or
    package update: freshclam's OnUpdateExecute, an apt hook). If it changed, poison
    quarantined under another one is re-tested alone, after a canary
    (docs/reference.md §9)."""
    actions.ask_retest(ctx, wait, **_overrides(kwargs))


@cli.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="A live view, redrawn from the status the running qsup "
                                            "writes (about every second); Ctrl-C ends it.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="How often --watch redraws.")
@click.pass_obj
def status(ctx: Ctx, as_json: bool, watch: bool, interval: float):
    """Workers, in-flight batches with age, suspects, queue depth, breaker state,
    throughput, and what the last restart recovered."""
    if watch and as_json:
        raise click.UsageError("--watch is a view for people; without it, --json prints the status once")
    if watch:
        live.watch(lambda: reading.status(ctx), interval)
        return
    out = reading.status(ctx)
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    for line in views.status_lines(out):
        click.echo(line)


@cli.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool):
    """The loaded plugins, their versions and the hooks each implements."""
    rows = pm.build().describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        if row["error"]:
            click.echo(f"{row['name']}  BROKEN: {row['error']}")
        else:
            click.echo(f"{row['name']}  {row['version']}  hooks: {', '.join(row['hooks'])}")


@cli.command(epilog=EPILOG)
@click.option("--messages", default=300, show_default=True, type=click.IntRange(20, 100000), metavar="N",
              help="How many synthetic messages.")
@click.option("--dir", "--keep", "where", cls=Option, type=click.Path(file_okay=False), default=None,
              metavar="DIR",
              show_default="a new qsup-demo-* directory in $TMPDIR",
              help="Build the demo spool and state here (--keep: the older spelling).")
@click.option("--clean", is_flag=True, help="Remove the demo's spool and state when it is done.")
def demo(messages: int, where: str | None, clean: bool):
    """Build a throw-away spool with synthetic messages, some of which crash the
    bundled demo scanner for real (SIGSEGV, abort, memory blow-up, hang), drain it
    with a live progress display and print the quarantine.

    It needs no configuration (--config and --state are not used: the demo has its
    own) and keeps its spool and state, printing the commands to look at them."""
    from quarantine.demo import run_demo

    sys.exit(run_demo(messages, where, clean))


def main() -> None:
    try:
        # named qsup also under python -m quarantine: in usage lines, and for shell
        # completion, which is asked for in $_QSUP_COMPLETE
        cli.main(prog_name="qsup", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except QsupError as exc:
        click.echo(f"qsup: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(EXIT_OK)
