"""Prometheus metrics: HTTP traffic per route, lookups and matches per signal type,
index sizes, how far the indexes are behind the store, and the store's errors. One
registry per app (no process globals), served at /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hashdb.ratelimit import Admission
from hashdb.service import Service
from hashdb.store.postgres_pool import StoreErrors


class ServiceCollector(Collector):
    """Reads the service's own counters and index sizes at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        lookups = CounterMetricFamily("hashdb_lookups", "Query signals searched", labels=["type"])
        matches = CounterMetricFamily("hashdb_matches", "Matches returned", labels=["type"])
        candidates = CounterMetricFamily("hashdb_candidates", "Review candidates returned",
                                         labels=["type"])
        families = {"lookups": lookups, "matches": matches, "candidates": candidates}
        for (kind, type_name), n in sorted(self.service.matcher.stats.items()):
            families[kind].add_metric([type_name], n)
        yield from families.values()
        sizes = GaugeMetricFamily("hashdb_index_signals", "Signals in the index", labels=["type"])
        for name, n in self.service.follower.sizes().items():
            sizes.add_metric([name], n)
        yield sizes
        yield GaugeMetricFamily("hashdb_index_cursor", "Last change applied to the indexes",
                                value=self.service.follower.cursor)
        yield GaugeMetricFamily("hashdb_ready", "1 when the indexes are loaded",
                                value=1 if self.service.ready else 0)


class FollowerCollector(Collector):
    """How far the indexes are behind the store's change log, and the store's errors.

    The change log has no write times, so the lag is the age of the indexes' view:
    the seconds since the follower last read to the end of the log. Every change
    written before then is matchable; one written since is at most that old. A
    replica in step shows about its poll interval at most; it grows while the store
    is unreachable or a backlog is replayed."""

    def __init__(self, service: Service) -> None:
        self.follower = service.follower
        # Counted by the PostgreSQL store (hashdb/store/postgres_pool.py); SQLite is
        # a file in the process: there is no server to lose.
        errors = getattr(service.store, "errors", None)
        self.store_errors = errors if isinstance(errors, StoreErrors) else None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        follower = self.follower
        if follower.caught_up_at is not None:
            yield GaugeMetricFamily(
                "hashdb_index_lag_seconds", "Seconds since the indexes last held every "
                "change in the store's log", value=max(0.0, time.time() - follower.caught_up_at))
        if follower.synced_at is not None:
            yield GaugeMetricFamily(
                "hashdb_index_last_sync_timestamp_seconds", "When the follower last read "
                "the store's change log successfully (Unix time)", value=follower.synced_at)
        yield GaugeMetricFamily(
            "hashdb_index_changes_behind", "Changes in the store's log not yet applied, as "
            "last seen (known while a backlog is replayed; 0 once caught up)",
            value=max(0, follower.head - follower.cursor))
        polls = CounterMetricFamily("hashdb_index_follower_errors", "Polls of the change log "
                                    "that failed", labels=["kind"])
        for kind, n in sorted(follower.poll_errors.items()):
            polls.add_metric([kind], n)
        yield polls
        if self.store_errors is not None:
            errors = CounterMetricFamily("hashdb_store_errors", "Store calls that failed: "
                                         "unavailable, timeout, other", labels=["kind"])
            for kind, n in sorted(self.store_errors.counts().items()):
                errors.add_metric([kind], n)
            yield errors


class AdmissionCollector(Collector):
    """Requests refused by the abuse limits, by reason: rate_limit, key_lockout,
    slow_body."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("hashdb_abuse_rejections", "Requests refused by the "
                                     "abuse limits", labels=["reason"])
        for reason, n in sorted(self.admission.rejection_counts().items()):
            family.add_metric([reason], n)
        yield family


def make_registry(service: Service) -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    requests = Counter("hashdb_http_requests", "HTTP requests", ["method", "route", "status"],
                       registry=registry)
    latency = Histogram("hashdb_http_request_seconds", "HTTP request latency", ["route"],
                        registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                 2.5, 5, 10))
    registry.register(ServiceCollector(service))
    registry.register(FollowerCollector(service))
    return registry, requests, latency


class HttpMetrics:
    """Counts every request by route template (not raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - start)
