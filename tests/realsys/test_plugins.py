"""`qsup plugins` and the entry-point group: the shipped plugins are listed with their
version and hooks; a broken third-party plugin is reported by name, and qsup goes on."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata

import pytest
from conftest import plugin_dist

pytestmark = pytest.mark.realsys

DEMO = f"{sys.executable} -m quarantine.demo_scanner"


@pytest.fixture
def broken_plugins(tmp_path):
    """A distribution on PYTHONPATH whose qsup entry points are broken in three ways."""
    return plugin_dist(
        tmp_path, "qsup_broken",
        {"explodes": "qsup_explodes", "unknownhook": "qsup_unknownhook", "badtypes": "qsup_badtypes"},
        {"qsup_explodes": 'raise RuntimeError("deliberately broken\\nat import")\n',
         "qsup_unknownhook": "from quarantine.hookspecs import hookimpl\n\n@hookimpl\n"
                             "def qsup_no_such_hook():\n    pass\n",
         "qsup_badtypes": "from quarantine.hookspecs import hookimpl\n\n@hookimpl\n"
                          "def qsup_queue_types():\n    raise KeyError('oops')\n"})


def test_the_shipped_plugins_are_listed_with_version_and_hooks(qsup):
    run = qsup("plugins", "--json")
    assert run.returncode == 0, run.stderr
    rows = {row["name"]: row for row in json.loads(run.stdout)}
    version = metadata.version("qsup")
    assert rows["postfix"] == {"name": "postfix", "version": version, "error": None,
                               "hooks": ["qsup_queue_identity", "qsup_queue_types"]}
    assert rows["clamav"]["hooks"] == ["qsup_scanner_types", "qsup_verdict"]
    assert rows["spamassassin"]["hooks"] == ["qsup_scanner_types", "qsup_verdict"]
    assert rows["clamav"]["version"] == rows["spamassassin"]["version"] == version
    assert rows["quarantine.spool"]["version"].endswith("(built-in)")


def test_a_broken_plugin_is_named_and_qsup_goes_on(qsup, make_spool, broken_plugins):
    run = qsup("plugins", env=broken_plugins)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert "explodes  BROKEN: RuntimeError: deliberately broken; at import" in lines
    assert "unknownhook  BROKEN: PluginValidationError: unknown hook(s) qsup_no_such_hook" in lines
    assert any(line.startswith("postfix  ") for line in lines)
    assert "plugin explodes could not be loaded and is skipped" in run.stderr

    # Draining still works: the broken plugins are skipped, once each, by name.
    ids = make_spool(12, {})
    run = qsup("drain", "--spool", str(qsup.spool), "--worker", DEMO, "--json", env=broken_plugins)
    assert run.returncode == 0, run.stderr
    assert qsup.summary(run)["delivered"] == len(ids)
    assert "Traceback" not in run.stderr
    assert "plugin badtypes: qsup_queue_types failed, its queue types are skipped: KeyError: 'oops'" in run.stderr


def test_the_example_postfix_configuration_is_valid():
    import qsup_clamav
    import qsup_postfix
    import qsup_spamassassin

    from quarantine import config, pluginopts

    here = os.path.dirname(__file__)
    path = os.path.join(here, "..", "..", "examples", "mailscanner", "qsup-postfix.toml")
    cfg = config.load(path, {})
    assert (cfg.queue, tuple(cfg.scanners)) == ("postfix", ("clamd", "spamc"))
    for name, spec in (("postfix", qsup_postfix.OPTIONS), ("clamd", qsup_clamav.CLAMD_OPTIONS),
                       ("clamscan", qsup_clamav.CLAMSCAN_OPTIONS), ("spamc", qsup_spamassassin.OPTIONS)):
        pluginopts.parse(name, cfg.plugin_options(name), spec)
