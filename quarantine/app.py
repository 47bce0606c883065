"""Putting qsup together: the supervisor over its plugins and state, its logging and
its signals. What ``qsup drain``/``qsup run``, ``qsup demo`` and the benchmarks share,
so none of them imports another's private parts.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from quarantine import binding, chain, logs, orphans, pm
from quarantine.config import Config
from quarantine.errors import ConfigError
from quarantine.store import Store

if TYPE_CHECKING:
    from quarantine.supervisor import Supervisor


def build_supervisor(state_dir: str, config: Config, mode: str,
                     adopt: bool = True) -> tuple[Supervisor, Store]:
    """The supervisor of *config*'s queue and scanner over the state in *state_dir*
    (opened for writing: it holds the lock; bound to that queue, see binding.py), and
    that store, for the caller to close after serving. With *adopt*, qsup becomes
    the subreaper of its workers' orphans."""
    from quarantine.supervisor import Supervisor  # the loop and its process machinery

    plugins = pm.build()
    queues, scanners = plugins.queue_types(), plugins.scanner_types()
    if config.queue not in queues:
        raise ConfigError(f"queue: unknown kind {config.queue!r} (known: {', '.join(sorted(queues))})")
    scanner = chain.build(scanners, config)  # a configuration error touches nothing
    identity = binding.named(plugins, config)
    store = Store(state_dir, map_mb=config.map_size_mb)
    try:
        new = binding.bind(store, identity)  # before the queue is touched
        queue = queues[config.queue](config)
        if new:
            binding.record(store, identity)
        orphans.adopt(store, queue, time.time())  # a lost state's quarantine, never ignored
    except OSError as exc:
        store.close()
        raise ConfigError(f"queue {config.queue}: {exc.strerror or exc}: {exc.filename or ''}")
    except Exception:
        store.close()
        raise
    if adopt:
        from quarantine.process import become_subreaper

        adopt = become_subreaper()
    sup = Supervisor(config, store, queue, scanner, plugins.hook, state_dir=state_dir,
                     adopt_orphans=adopt, mode=mode)
    sup.make_scanner = lambda cfg: chain.build(scanners, cfg)
    return sup, store


def setup_logging(level: str, rich_console=None, *, target: str = "stderr",
                  socket_path: str | None = None) -> None:
    """qsup's log lines to *target* (config key ``log``: stderr, syslog, journald;
    see logs.py), or through *rich_console* (a rich Console, as under a live display)."""
    root = logging.getLogger("qsup")
    for old in root.handlers:
        old.close()
    root.handlers.clear()
    if rich_console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=rich_console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logs.handler_for(target, socket_path)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def handle_signals(sup: Supervisor, reload_from: Callable[[], Config] | None = None) -> None:
    """SIGTERM and SIGINT ask *sup* to stop (warm, then cold); with *reload_from*,
    SIGHUP reloads the configuration it returns. The handlers only set flags."""
    def stop(signum, frame):
        sup.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if reload_from is not None:
        sup.reload = reload_from
        signal.signal(signal.SIGHUP, lambda s, f: sup.request_reload())
