"""What qsup tells the world while it serves (docs/reference.md §8): the service manager
(systemd's READY/STATUS/WATCHDOG/RELOADING/STOPPING) and the metrics server.

Everything here runs from the loop's tick (``Supervisor.on_tick``), once a pass:
the watchdog is pinged by the loop itself, so a loop that is stuck stops pinging
and the service manager restarts qsup. A thread pinging on a timer would keep a
wedged daemon "alive".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from quarantine.config import Config
from quarantine.errors import StateError
from quarantine.sdnotify import SdNotifier
from quarantine.ticks import Every

if TYPE_CHECKING:
    from quarantine.metrics import Collector, MetricsServer, QuarantineCount
    from quarantine.supervisor import Supervisor

log = logging.getLogger("qsup")
LONGEST_WAIT = 0.25  # seconds the loop may sleep between passes (Supervisor.wait)
STATUS_EVERY = 1.0  # seconds: STATUS= lines and the quarantine count, at most this often


class Service:
    def __init__(self, notifier: SdNotifier, collector: Collector | None = None,
                 server: MetricsServer | None = None, count: QuarantineCount | None = None):
        self.notifier, self.collector, self.server, self.count = notifier, collector, server, count
        interval = notifier.watchdog_interval
        # ping early by the loop's longest sleep, so no gap exceeds half the timeout
        self._watchdog = Every(max(interval - LONGEST_WAIT, interval / 2)) if interval else None
        self._status = Every(STATUS_EVERY)
        self._ready = False  # READY=1 sent (again, after a reload)
        self._stopping = False
        self._said = ""

    @classmethod
    def start(cls, sup: Supervisor, config: Config, *, notify: bool) -> Service:
        """Serve metrics if configured, speak to the service manager if *notify* (and
        one started qsup), from *sup*'s loop."""
        notifier = SdNotifier.from_environ() if notify else SdNotifier(None)
        collector = server = count = None
        if config.metrics_listen:
            from quarantine.metrics import Collector, MetricsServer, QuarantineCount

            collector, count = Collector(sup.telemetry), QuarantineCount()
            server = MetricsServer(config.metrics_listen, collector)
            host, port = server.address
            log.info("serving metrics at http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)
        service = cls(notifier, collector, server, count)
        sup.on_tick = service.tick
        return service

    def tick(self, sup: Supervisor) -> None:
        """Once a pass of *sup*'s loop."""
        now = sup.clock()
        lines = []
        if not self._ready:
            self._ready = True
            lines.append("READY=1")
        if sup.stop and not self._stopping:
            self._stopping = True
            lines.append("STOPPING=1")
        if self._watchdog and self._watchdog.due(now):
            lines.append("WATCHDOG=1")
        if self._status.due(now):
            self._publish(sup, now)
            status = status_line(sup.telemetry.last, bool(sup.stop))
            if status != self._said:
                self._said = status
                lines.append(f"STATUS={status}")
        if lines:
            self.notifier.send(*lines)

    def reloading(self, load: Callable[[], Config]) -> Callable[[], Config]:
        """*load* (the reload of the configuration), announced: RELOADING=1 before it,
        READY=1 at the next tick, when the loop has applied it (or kept the old one)."""
        def announced() -> Config:
            self.notifier.reloading()
            self._ready = False
            return load()

        return announced

    def finish(self, sup: Supervisor) -> None:
        """The loop is over: the final values for the metrics, STOPPING=1."""
        self._publish(sup, sup.clock(), force=True)
        if not self._stopping:
            self._stopping = True
            self.notifier.send("STOPPING=1", "STATUS=stopped")

    def close(self) -> None:
        """Stop serving metrics (a process that exits need not call it)."""
        if self.server is not None:
            self.server.close()
        self.notifier.close()

    def _publish(self, sup: Supervisor, now: float, force: bool = False) -> None:
        if self.collector is None:
            return
        try:
            self.collector.quarantine = self.count.refresh(sup.store, now, force)
        except StateError:
            pass  # the loop says why; the count stays as last seen


def status_line(snap: dict, stopping: bool = False) -> str:
    """systemd's STATUS=: depth, in flight, breaker, and what was done."""
    counters, breaker = snap.get("counters") or {}, snap.get("breaker") or {}
    inflight = sum(w.get("size", 0) for w in snap.get("workers") or ())
    state = breaker.get("state", "closed")
    if state == "open" and breaker.get("reason"):
        state = f"open ({breaker['reason'][:120]})"
    return (f"{'stopping: ' if stopping else ''}queue {snap.get('queue_depth', 0)}, in flight {inflight}, "
            f"suspects {snap.get('suspects', 0) + snap.get('awaiting_canary', 0)}, breaker {state}; "
            f"delivered {counters.get('delivered', 0)}, quarantined {counters.get('quarantined', 0)}")
