"""The generated parts of docs/reference.md: the table of config keys, from
``quarantine.config.FIELDS``, and the options of the bundled plugins::

    python -m quarantine.reference            # rewrites docs/reference.md in place
    python -m quarantine.reference --check    # exit 1 if it is not current

Each table sits between ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->`` lines;
the prose around them is written by hand. ``tests/test_cli_polish.py`` fails when
the file is not what this module would write.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from quarantine.config import FIELDS

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
# [plugin.NAME] tables of the plugins shipped with qsup: (NAME, module, its options)
PLUGINS = (("postfix", "qsup_postfix", "OPTIONS"), ("clamd", "qsup_clamav", "CLAMD_OPTIONS"),
           ("clamscan", "qsup_clamav", "CLAMSCAN_OPTIONS"), ("spamc", "qsup_spamassassin", "OPTIONS"))


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type(f) -> str:
    kind = f.type_name
    if f.choices:
        kind += ": " + " \\| ".join(f"`{c}`" for c in f.choices)
    return kind + (" or unset" if f.optional else "")


def key_table() -> str:
    rows = ["| key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        flags = " ".join(f"`{flag}`" for flag in (f.flag, *f.aliases))
        default = cell(f.shown) if f.shown else f"`{cell(f.shown_default)}`"
        rows.append(f"| `{f.name}` | {flags} | {_type(f)} | {default} | {cell(f.help)} |")
    return "\n".join(rows)


def plugin_tables() -> str:
    out = []
    for name, module, attr in PLUGINS:
        options = getattr(importlib.import_module(module), attr)
        out += [f"`[plugin.{name}]`:", "", "| option | type | default | meaning |", "|---|---|---|---|"]
        for key, opt in options.items():
            value = f"{opt.default:g}" if isinstance(opt.default, float) else str(opt.default)
            default = f"`{value}`" if value else "empty"
            out.append(f"| `{key}` | {opt.type.__name__} | {default} | {cell(opt.help)} |")
        out.append("")
    return "\n".join(out).rstrip()


GENERATED = {"KEYS": key_table, "PLUGIN OPTIONS": plugin_tables}


def update(text: str) -> str:
    """*text* with every generated block written afresh."""
    for name, make in GENERATED.items():
        pattern = re.compile(rf"(<!-- BEGIN {name}\b[^\n]*-->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no '<!-- BEGIN {name} … -->' … '<!-- END {name} -->' block")
        text = pattern.sub(lambda m: m.group(1) + "\n" + make() + "\n\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    path = Path(paths[0]) if paths else DEFAULT_PATH
    text = path.read_text()
    new = update(text)
    if check:
        if new != text:
            print(f"{path} is not current: run python -m quarantine.reference", file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
