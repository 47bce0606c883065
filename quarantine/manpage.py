"""qsup(8), written from the click definitions of the command line and the config keys,
so the page says what ``--help`` says::

    python -m quarantine.manpage > docs/qsup.8

``tests/test_cli_polish.py`` regenerates it and fails when docs/qsup.8 is not what the code
would write.
"""

from __future__ import annotations

import importlib.metadata
import sys

import click

from quarantine.config import FIELDS

SECTION = "8"
TITLE = "qsup manual"
SEE_ALSO = "The reference (command line, spool, worker protocol, guarantees, every key): docs/reference.md."


def esc(text: str) -> str:
    """*text* for roff: backslashes and dashes escaped, no line taken for a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    """Roff for click help text: blank lines part paragraphs; a paragraph led by
    click's ``\\b`` keeps its lines as they are."""
    out = []
    for para in (text or "").strip().split("\n\n"):
        lines = para.strip("\n").split("\n")
        if lines and lines[0].strip() == "\b":
            out.append(".PP\n.nf\n" + esc("\n".join(lines[1:])) + "\n.fi")
        else:
            out.append(".PP\n" + esc(" ".join(line.strip() for line in lines)))
    return out


def option_item(param: click.Parameter, ctx: click.Context) -> str:
    record = param.get_help_record(ctx)
    if record is None:
        return ""
    names, help_text = record
    return f".TP\n.B {esc(names)}\n{esc(help_text)}"


def _is_global(param: click.Parameter) -> bool:
    return param.name in ("config", "config_path", "state") or param.name == "help"


def _config_keys() -> set[str]:
    return {f.name for f in FIELDS} | {"plugin_option"}


def command_section(name: str, cmd: click.Command, parent: click.Context) -> list[str]:
    ctx = click.Context(cmd, info_name=name, parent=parent)
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out = [f'.SS "qsup {esc(name)} {esc(usage)}"', *paragraphs(cmd.help or "")]
    names = {p.name for p in cmd.params}
    takes_keys = all(f.name in names for f in FIELDS)  # list and show take --spool and --queue only
    skip = _config_keys() if takes_keys else set()
    own = [p for p in cmd.params if not _is_global(p) and p.name not in skip and isinstance(p, click.Option)]
    items = [option_item(p, ctx) for p in own]
    if takes_keys:
        plugin = next(p for p in cmd.params if p.name == "plugin_option")
        items.append(option_item(plugin, ctx))
        items.append(".TP\n.B \\-\\-KEY\\-NAME " + esc("VALUE") + "\nEvery configuration key, as a flag named"
                     " like it; see\n.BR CONFIGURATION .")
    out += [i for i in items if i]
    return out


def key_items(parent: click.Context) -> list[str]:
    """Every config key: its flag (and older spellings), type, default and meaning."""
    drain = parent.command.commands["drain"]
    ctx = click.Context(drain, info_name="drain", parent=parent)
    by_name = {p.name: p for p in drain.params}
    out = []
    for f in FIELDS:
        names, help_text = by_name[f.name].get_help_record(ctx)
        kind = f"{f.type_name}{', may be unset' if f.optional else ''}"
        out.append(f".TP\n.B {esc(names)}\nKey \\fB{esc(f.name)}\\fR ({kind}). {esc(help_text)}")
    return out


def page(cli: click.Group) -> str:
    version = importlib.metadata.version("qsup")
    root = click.Context(cli, info_name="qsup")
    first, _, rest = (cli.help or "").partition("\n")
    summary = first.split(":", 1)[-1].strip().rstrip(".")
    parts = [
        '.\\" Written by python -m quarantine.manpage from the click definitions: do not edit.',
        f'.TH QSUP {SECTION} "" "qsup {version}" "{TITLE}"',
        ".SH NAME", f"qsup \\- {esc(summary)}",
        ".SH SYNOPSIS",
        ".B qsup\n[\\fB\\-\\-config\\fR \\fIFILE\\fR] [\\fB\\-\\-state\\fR \\fIDIR\\fR]"
        " \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]",
        ".SH DESCRIPTION", *paragraphs(rest),
        ".PP\nThe global options may also come after the command name"
        " (\\fBqsup drain \\-\\-state\\fR \\fIDIR\\fR), for every command; the last one given wins.",
        ".SH GLOBAL OPTIONS",
    ]
    parts += [option_item(p, root) for p in cli.params if isinstance(p, click.Option)]
    parts.append(".SH COMMANDS")
    for name in sorted(cli.commands):
        parts += command_section(name, cli.commands[name], root)
    parts += [
        ".SH CONFIGURATION",
        ".PP\nBuilt-in defaults, overridden by a TOML file (\\fB\\-\\-config\\fR, else \\fI./qsup.toml\\fR,"
        " else \\fI/etc/qsup/qsup.toml\\fR; keys at the top level or under \\fB[qsup]\\fR), overridden"
        " by flags. A wrong type, an unknown key or a negative number is refused with one line naming"
        " the key (exit 2). Plugin options go in \\fB[plugin.\\fR\\fINAME\\fR\\fB]\\fR tables or"
        " \\fB\\-\\-plugin\\-option\\fR \\fINAME.KEY=VALUE\\fR. The keys, each also a flag of"
        " \\fBdrain\\fR, \\fBrun\\fR, \\fBrelease\\fR and \\fBpurge\\fR:",
        *key_items(root),
        ".SH EXIT STATUS",
        ".TP\n.B 0\ndone",
        ".TP\n.B 2\nusage or configuration error, with a one\\-line message naming the bad value",
        ".TP\n.B 3\nstopped with the breaker open (a systemic failure: nothing was quarantined);"
        " also \\fBdrain\\fR kept from progress by the breaker for longer than"
        " \\fB\\-\\-max\\-wait\\fR",
        ".TP\n.B 4\nstate problem: locked by another qsup, unwritable, corrupt or full;"
        " a queue that refuses a move",
        ".SH ENVIRONMENT",
        ".TP\n.B QSUP_STATE\nThe state directory when \\fB\\-\\-state\\fR is not given.",
        ".TP\n.B _QSUP_COMPLETE\nSet to \\fBbash_source\\fR, \\fBzsh_source\\fR or \\fBfish_source\\fR,"
        " qsup prints its shell completion script (see \\fBSHELL COMPLETION\\fR).",
        ".TP\n.B TMPDIR\nWhere \\fBqsup demo\\fR makes its directory.",
        ".SH FILES",
        ".TP\n.I ./qsup.toml\\fR, \\fI/etc/qsup/qsup.toml\nThe configuration file, the first one present.",
        ".TP\n.I /var/lib/qsup\nThe state directory (LMDB) when run as root; \\fI./.qsup\\fR otherwise.",
        ".TP\n.IR SPOOL /incoming/\nOne file per message, named by its queue ID; writers create it in"
        " \\fISPOOL\\fR/tmp/ and rename() it here.",
        ".TP\n.IR SPOOL /outgoing/\nScanned messages, moved here once their batch succeeded.",
        ".TP\n.IR SPOOL /quarantine/\nPoison messages; deleted only by \\fBqsup purge \\-\\-yes\\fR.",
        ".TP\n.IR SPOOL /.qsup.lock\nHeld by the one qsup draining the spool.",
        ".SH SHELL COMPLETION",
        ".PP\nqsup completes its commands, options and choices. For bash, in \\fI~/.bashrc\\fR:"
        "\n.RS\n.nf\neval \"$(_QSUP_COMPLETE=bash_source qsup)\"\n.fi\n.RE",
        ".PP\nor once for everyone:\n.RS\n.nf\n"
        "_QSUP_COMPLETE=bash_source qsup > /etc/bash_completion.d/qsup\n.fi\n.RE",
        ".PP\nzsh, in \\fI~/.zshrc\\fR:\n.RS\n.nf\neval \"$(_QSUP_COMPLETE=zsh_source qsup)\"\n.fi\n.RE",
        ".PP\nfish, in \\fI~/.config/fish/completions/qsup.fish\\fR:"
        "\n.RS\n.nf\n_QSUP_COMPLETE=fish_source qsup | source\n.fi\n.RE",
        ".SH SEE ALSO",
        f".PP\n{esc(SEE_ALSO)}",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def main() -> None:
    from quarantine.cli import cli

    sys.stdout.write(page(cli))


if __name__ == "__main__":
    main()
