"""``qsup status --watch``: the status redrawn every second until Ctrl-C.

The reading is the caller's (*read* returns what ``qsup status --json`` prints);
the drawing is :func:`quarantine.views.status_view`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from quarantine import views


def watch(read: Callable[[], dict], interval: float, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Redraw the status every *interval* seconds until Ctrl-C, which is a normal end
    (exit 0): stopping a view is not a failure. Without a terminal each refresh is
    printed after the last, so the view can be piped or logged."""
    out = views.console()
    try:
        if not out.is_terminal:
            while True:
                out.print(views.status_view(read(), clock()), "")
                sleep(interval)
        from rich.live import Live

        with Live(views.status_view(read(), clock()), console=out, auto_refresh=False) as shown:
            while True:
                sleep(interval)
                shown.update(views.status_view(read(), clock()), refresh=True)
    except KeyboardInterrupt:
        return
