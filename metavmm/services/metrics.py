"""What the broker counts for Prometheus, in one place: every metric's name, help and labels.

Counters and histograms move where things happen (an HTTP answer, an operation's end, a scheduler
decision, an inventory sync); gauges that describe the catalog (operations by state, sync age, capacity
per site, price age, image list health) are read from it when Prometheus scrapes (:func:`refresh`, five
queries), so they are right whichever broker or worker process wrote the rows. The api layer serves :func:`render`.
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC, datetime, time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.models import Host, ImageListSubscription, Operation, Price, Provider, Site, aware

disable_created_metrics()  # no *_created series: Prometheus does not use them and they double the output
CONTENT_TYPE = CONTENT_TYPE_LATEST
LONG = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))



class HttpRequests:
    """``metavmm_http_requests_total`` (by method, route pattern and status) and
    ``metavmm_http_request_duration_seconds`` (by method and route pattern), kept as plain numbers and read when
    Prometheus scrapes (a collector of the registry). prometheus_client's ``Counter.inc`` and ``Histogram.observe``
    take a lock each: about 3 us a request together, a tenth of what a cached OCCI GET costs (issue 16 item 14).
    Only the event loop's thread adds to these; a scrape reads them."""

    BOUNDS = Histogram.DEFAULT_BUCKETS  # upper bounds in seconds, the last +Inf

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], list[int]] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}
        """Per bucket (not cumulative), then the sum of the seconds observed."""

    def series(self, method: str, route: str, status: str) -> tuple[list[int], list[float]]:
        """The cells one (method, route, status) counts in: ``cells[0][0] += 1`` and :meth:`observe`."""
        count = self.counts.setdefault((method, route, status), [0])
        latency = self.latency.setdefault((method, route), [0.0] * (len(self.BOUNDS) + 1))
        return count, latency

    @classmethod
    def observe(cls, latency: list[float], seconds: float) -> None:
        latency[bisect_left(cls.BOUNDS, seconds)] += 1
        latency[-1] += seconds

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        requests, latency = self._families()
        for labels, count in list(self.counts.items()):
            requests.add_metric(labels, count[0])
        for (method, route), cells in list(self.latency.items()):
            seen, buckets = 0.0, []
            for bound, n in zip(self.BOUNDS, cells, strict=False):
                seen += n
                buckets.append((floatToGoString(bound), seen))
            latency.add_metric([method, route], buckets, sum_value=cells[-1])
        return requests, latency

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (CounterMetricFamily("metavmm_http_requests", "HTTP requests answered, by route pattern and status",
                                    labels=["method", "route", "status"]),
                HistogramMetricFamily("metavmm_http_request_duration_seconds",
                                      "Time to answer an HTTP request, by route pattern", labels=["method", "route"]))


HTTP = HttpRequests()
REGISTRY.register(HTTP)  # type: ignore[arg-type]
OPERATIONS_ENDED = Counter("metavmm_operations_ended", "Operations that ended, by kind and final state",
                           ["kind", "state"])
OPERATION_DURATION = Histogram("metavmm_operation_duration_seconds", "From an operation's start to its end",
                               ["kind", "state"], buckets=LONG)
OPERATIONS = Gauge("metavmm_operations", "Operations in the catalog, by kind and state (read at scrape)",
                   ["kind", "state"])
DECISIONS = Counter("metavmm_scheduler_decisions", "Placement decisions, by outcome (placed or refused)",
                    ["outcome"])
DECISION_LATENCY = Histogram("metavmm_scheduler_decision_duration_seconds", "Time to take one placement decision")
REJECTIONS = Counter("metavmm_scheduler_rejections", "Candidates the scheduler rejected, by reason code",
                     ["reason"])
SYNCS = Counter("metavmm_provider_syncs", "Inventory syncs, by provider and result (ok or error)",
                ["provider", "result"])
SYNC_DURATION = Histogram("metavmm_provider_sync_duration_seconds", "Time to pull one provider's inventory",
                          ["provider"], buckets=LONG)
SYNC_AGE = Gauge("metavmm_provider_sync_age_seconds", "Seconds since the provider's last successful sync",
                 ["provider"])
SYNC_FAILING = Gauge("metavmm_provider_sync_failing", "1 when the provider's last sync recorded an error",
                     ["provider"])
SITE_CORES = Gauge("metavmm_site_cpu_cores", "Physical CPU cores of the site's hosts", ["site"])
SITE_VCPUS_USED = Gauge("metavmm_site_vcpus_used", "vCPUs in use on the site's hosts", ["site"])
SITE_MEMORY = Gauge("metavmm_site_memory_bytes", "Memory of the site's hosts", ["site"])
SITE_MEMORY_USED = Gauge("metavmm_site_memory_used_bytes", "Memory in use on the site's hosts", ["site"])
SITE_HOSTS = Gauge("metavmm_site_hosts", "Hosts the catalog knows at the site", ["site"])
PRICE_AGE = Gauge("metavmm_price_age_seconds", "Seconds since the effective date of the newest price of a provider "
                  "kind in a region: a stale price list makes every comparison and placement cost stale",
                  ["provider_kind", "region"])
IMAGE_LIST_AGE = Gauge("metavmm_image_list_age_seconds", "Seconds since an image list subscription last synced "
                       "without error (absent: never)", ["subscription"])
IMAGE_LIST_FAILING = Gauge("metavmm_image_list_failing", "1 when a subscription's last sync was refused or its "
                           "list expired (its images are then not launchable), else 0", ["subscription"])
DATA_BYTES = Counter("metavmm_data_bytes", "Disk bytes the data path wrote: exports and conversions of migrations, "
                     "images fetched for replication and launches, disks imported at a target, live "
                     "migrations' memory and disks", ["what"])


def operation_ended(kind: str, state: str, started: datetime, ended: datetime) -> None:
    OPERATIONS_ENDED.labels(kind, str(state)).inc()
    OPERATION_DURATION.labels(kind, str(state)).observe(max(0.0, (aware(ended) - aware(started)).total_seconds()))


def decision(placed: bool, seconds: float, reasons: Iterable[str]) -> None:
    DECISIONS.labels("placed" if placed else "refused").inc()
    DECISION_LATENCY.observe(seconds)
    # one increment per reason, not per rejected candidate: a create on a 100-host federation rejects
    # dozens of hosts for the same few reasons (27 labels() lookups per create, 2% of its CPU)
    for reason, n in collections.Counter(reasons).items():
        REJECTIONS.labels(reason or "unknown").inc(n)


def data_moved(what: str, size_bytes: int) -> None:
    DATA_BYTES.labels(what).inc(max(0, size_bytes))


def synced(provider: str, seconds: float, error: str | None) -> None:
    SYNCS.labels(provider, "error" if error else "ok").inc()
    SYNC_DURATION.labels(provider).observe(seconds)


async def refresh(maker: async_sessionmaker[AsyncSession]) -> None:
    """Set the catalog gauges from the rows as they are now."""
    now = datetime.now(UTC)
    async with maker() as session:
        ops = (await session.exec(select(Operation.kind, Operation.state, func.count())  # type: ignore[call-overload]
                                  .group_by(Operation.kind, Operation.state))).all()
        providers = (await session.exec(select(Provider.name, Provider.synced_at, Provider.sync_error))).all()
        sites = (await session.exec(
            select(Site.name, func.count(col(Host.id)), func.sum(Host.cpu_cores), func.sum(Host.vcpus_used),
                   func.sum(Host.memory_mib), func.sum(Host.memory_mib_used))
            .join(Host, col(Host.site_id) == col(Site.id)).where(col(Site.present)).group_by(Site.name))).all()
        prices = (await session.exec(select(Price.provider_kind, Price.region, func.max(Price.effective_date))
                                     .group_by(Price.provider_kind, Price.region))).all()
        lists = (await session.exec(select(ImageListSubscription).where(col(ImageListSubscription.enabled)))).all()
    for gauge in (OPERATIONS, SYNC_AGE, SYNC_FAILING, SITE_CORES, SITE_VCPUS_USED, SITE_MEMORY, SITE_MEMORY_USED,
                  SITE_HOSTS, PRICE_AGE, IMAGE_LIST_AGE, IMAGE_LIST_FAILING):
        gauge.clear()  # a deleted provider or site must not linger with its last value
    for kind, state, count in ops:
        OPERATIONS.labels(kind, state).set(count)
    for name, synced_at, error in providers:
        if synced_at is not None:
            SYNC_AGE.labels(name).set(max(0.0, (now - aware(synced_at)).total_seconds()))
        SYNC_FAILING.labels(name).set(1 if error else 0)
    for name, hosts, cores, used, mib, mib_used in sites:
        SITE_HOSTS.labels(name).set(hosts)
        SITE_CORES.labels(name).set(cores or 0)
        SITE_VCPUS_USED.labels(name).set(used or 0)
        SITE_MEMORY.labels(name).set((mib or 0) * 2**20)
        SITE_MEMORY_USED.labels(name).set((mib_used or 0) * 2**20)
    for kind, region, newest in prices:
        if newest is not None:
            PRICE_AGE.labels(kind, region).set(max(0.0, (now - datetime.combine(newest, time(), UTC)).total_seconds()))
    for sub in lists:
        if sub.last_success_at is not None:
            IMAGE_LIST_AGE.labels(sub.name).set(max(0.0, (now - aware(sub.last_success_at)).total_seconds()))
        expires = aware(sub.list_expires_at)
        IMAGE_LIST_FAILING.labels(sub.name).set(1 if sub.last_error or (expires and expires <= now) else 0)


def render() -> bytes:
    return generate_latest(REGISTRY)

