"""Prometheus metrics (docs/reference.md §8): ``metrics_listen = "HOST:PORT"`` serves them at
``/metrics``.

A custom collector reads qsup's own telemetry at each scrape, so the counts are the
very numbers drain's summary prints, not a second set kept beside them. Counters
come from ``Telemetry.stats``; the gauges from the latest status snapshot (the loop
takes one a second) and from the quarantine count the loop publishes: the scrape
runs in the server's thread, which never touches LMDB (the loop may be closing it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from quarantine.errors import ConfigError
from quarantine.store import Store
from quarantine.telemetry import Telemetry

# label value -> Telemetry.stats key
OUTCOMES = {"delivered": "delivered", "tagged": "tagged", "quarantined": "quarantined",
            "released": "released"}
CRASH_KINDS = ("signal", "exit", "memory", "timeout", "killed")  # Isolation counts crash_KIND
CANARY_RESULTS = {"passed": "canary_passes", "failed": "canary_failures",
                  "inconclusive": "canary_inconclusive"}
QUARANTINE_KINDS = ("poison", "infected", "spam")  # always shown; others (orphan) when present
RECOUNT_EVERY = 60.0  # seconds: the kinds are counted again at least this often


class Collector:
    """Reads a Telemetry at each scrape (see the module's docstring)."""

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry
        self.quarantine: dict[str, int] = dict.fromkeys(QUARANTINE_KINDS, 0)  # set by the loop

    def collect(self) -> Iterator[Metric]:
        stats, snap = self.telemetry.stats, self.telemetry.last
        yield _labelled(CounterMetricFamily, "qsup_messages", "Messages by what qsup did with them.",
                        "outcome", {o: stats.get(k, 0) for o, k in OUTCOMES.items()})
        yield _labelled(CounterMetricFamily, "qsup_worker_crashes",
                        "Worker runs of message batches that crashed, by how they ended.", "kind",
                        {k: stats.get(f"crash_{k}", 0) for k in CRASH_KINDS})
        yield _labelled(CounterMetricFamily, "qsup_canary_runs",
                        "Canary runs by result (inconclusive: stopped, or begun before the breaker opened).",
                        "result", {r: stats.get(k, 0) for r, k in CANARY_RESULTS.items()})
        yield _labelled(CounterMetricFamily, "qsup_retests",
                        "Re-tests of poison after the scanner changed, by result (passed: delivered).",
                        "result", {r: stats.get(f"retest_{r}", 0) for r in ("passed", "crashed")})
        workers = snap.get("workers") or ()
        breaker = snap.get("breaker") or {}
        yield GaugeMetricFamily("qsup_queue_depth_messages",
                                "Messages in the queue (in flight included).", value=snap.get("queue_depth", 0))
        yield GaugeMetricFamily("qsup_inflight_messages", "Messages in batches being scanned now.",
                                value=sum(w.get("size", 0) for w in workers))
        yield GaugeMetricFamily("qsup_suspect_messages",
                                "Messages held back from a crashed batch, to run alone.",
                                value=snap.get("suspects", 0) + snap.get("awaiting_canary", 0))
        yield GaugeMetricFamily("qsup_breaker_open",
                                "1 while the breaker is open (a systemic failure: nothing is dispatched).",
                                value=1 if breaker.get("state") == "open" else 0)
        yield _labelled(GaugeMetricFamily, "qsup_quarantine_messages", "Messages in the quarantine, by kind.",
                        "kind", self.quarantine)
        yield self._durations()

    def _durations(self) -> HistogramMetricFamily:
        hist = self.telemetry.durations
        counts, total = hist.state
        buckets, running = [], 0
        for bound, count in zip((*hist.bounds, math.inf), counts):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return HistogramMetricFamily("qsup_batch_duration_seconds",
                                     "How long worker runs of message batches took, start to end.",
                                     buckets=buckets, sum_value=total)


def _labelled(kind, name: str, documentation: str, label: str, values: dict[str, float]) -> Metric:
    family = kind(name, documentation, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


class QuarantineCount:
    """The quarantine's records by kind, read by the loop (once a second); counted
    again only when their number changed, or RECOUNT_EVERY seconds passed."""

    def __init__(self):
        self.total, self.at = -1, -math.inf
        self.kinds: dict[str, int] = dict.fromkeys(QUARANTINE_KINDS, 0)

    def refresh(self, store: Store, now: float, force: bool = False) -> dict[str, int]:
        with store.read() as r:
            total = r.count("quarantine")
            if not force and total == self.total and now - self.at < RECOUNT_EVERY:
                return self.kinds
            found = Counter(str(rec.get("kind") or "poison") if isinstance(rec, dict) else "poison"
                            for _, rec in r.items("quarantine"))
        self.total, self.at = total, now
        self.kinds = {**dict.fromkeys(QUARANTINE_KINDS, 0), **found}
        return self.kinds


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9640``; ``:9640`` is every address) as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics_listen: expected HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """The HTTP server of /metrics, in a thread of its own, over *collector* (and
    the process's own CPU, memory and file descriptors)."""

    def __init__(self, listen: str, collector: Collector):
        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        try:
            self.server, self.thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics_listen: cannot listen on {listen}: {exc.strerror or exc}") from None
        self.address: tuple[str, int] = self.server.server_address[:2]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
