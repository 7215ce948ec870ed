"""Prometheus metrics of one app: request latency, index swaps, fit progress.

Each app owns its registry (tests build many apps in one process). Fit progress lives in the
catalogue, written by the worker process, so its gauges are read from the store at scrape time.
With several server processes (``AEOT_WEB_WORKERS``), ``aeot serve`` sets
``PROMETHEUS_MULTIPROC_DIR``: every process writes its samples there and a scrape, whichever
process answers it, aggregates them all (latency and swap counts summed over processes, the
served version the most recent one set by a live process).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.catalog import CatalogueDamaged
from service.store import ModelStore
from service.worker_process import WorkerProcess

# Latency buckets (seconds): the /sample goal is p99 <= 50 ms, so resolve 1-100 ms finely.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _FitCollector(Collector):
    """Gauges of the newest fit job per model, read from the catalogue when scraped."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the fit gauges."""
        names = ("iteration", "l1", "empty_cells", "eta_seconds", "running", "published_version")
        fams = {
            n: GaugeMetricFamily(f"aeot_fit_{n}", f"newest fit job: {n}", labels=["model"])
            for n in names
        }
        try:
            progress = [(m, self._store.queue.latest(m.name)) for m in self._store.catalog.models()]
        except (CatalogueDamaged, sqlite3.DatabaseError):
            progress = []  # unknown while the catalogue is rebuilt: no fit gauges this scrape
        for model, job in progress:
            fams["published_version"].add_metric([model.name], model.published_version)
            if job is None:
                continue
            fams["iteration"].add_metric([model.name], job.iteration)
            fams["running"].add_metric([model.name], 1.0 if job.status == "running" else 0.0)
            if job.accuracy is not None:
                fams["l1"].add_metric([model.name], job.accuracy.l1)
                fams["empty_cells"].add_metric([model.name], job.accuracy.empty_cells)
            if job.eta is not None:
                fams["eta_seconds"].add_metric([model.name], job.eta)
        yield from fams.values()


class _WorkerCollector(Collector):
    """The supervised worker: up (1/0) and restarts after unexpected exits."""

    def __init__(self) -> None:
        self.worker: WorkerProcess | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Yield the worker metrics (nothing when this process supervises no worker)."""
        if self.worker is None:
            return
        state = self.worker.state
        up = GaugeMetricFamily("aeot_worker_up", "the fit worker process is running")
        up.add_metric([], 1.0 if state.status == "running" else 0.0)
        restarts = CounterMetricFamily(
            "aeot_worker_restarts", "fit worker restarts after an unexpected exit"
        )
        restarts.add_metric([], state.restarts)
        yield up
        yield restarts


class Metrics:
    """The app's metrics and its registry.

    Args:
        store: read at scrape time for fit progress.

    """

    def __init__(self, store: ModelStore) -> None:
        self._store = store
        # prometheus_client picks file-backed values at import when this variable is set.
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "aeot_request_seconds",
            "request latency by route",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.swaps = Counter(
            "aeot_index_swaps",
            "serving index swaps to a newer potential",
            ["model"],
            registry=self.registry,
        )
        self.served_version = Gauge(
            "aeot_served_version",
            "potential version being served",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.registry.register(_FitCollector(store))
        self._worker = _WorkerCollector()
        self.registry.register(self._worker)

    def watch_worker(self, worker: WorkerProcess | None) -> None:
        """Report this supervised worker (``aeot_worker_up``, ``aeot_worker_restarts_total``)."""
        self._worker.worker = worker

    def on_swap(self, model: str, version: int) -> None:
        """Record a swap of the serving index."""
        self.swaps.labels(model).inc()
        self.served_version.labels(model).set(version)

    def render(self) -> bytes:
        """Render the text exposition format (all server processes' samples when several)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(_FitCollector(self._store))
        registry.register(self._worker)
        return generate_latest(registry)
