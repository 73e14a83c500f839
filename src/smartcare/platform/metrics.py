"""Prometheus metrics shared by every capability (exposed at ``/metrics``)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class LoopCounter:
    """A labelled counter for a path taken thousands of times a second, written only from one thread (the
    process's event loop): plain integers, read by Prometheus when it scrapes. ``prometheus_client``'s
    ``Counter`` takes a lock on every increment, which showed on the exchange hub's per-message path."""

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry | None = REGISTRY):
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.counts: dict[tuple[str, ...], int] = {}
        if registry is not None:
            registry.register(self)

    def inc(self, *labels: str) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in dict(self.counts).items():  # a copy: the loop may add a label set meanwhile
            family.add_metric(list(labels), value)
        yield family


class LoopHistogram:
    """A histogram of one label set written only from the event loop, like ``LoopCounter``."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' "le"
        self.sum += value


class LoopHistograms:
    """Labelled ``LoopHistogram``s, collected as one Prometheus histogram."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...],
                 registry: CollectorRegistry | None = REGISTRY):
        self.name, self.documentation, self.labelnames, self.buckets = name, documentation, labelnames, buckets
        self.children: dict[tuple[str, ...], LoopHistogram] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *labels: str) -> LoopHistogram:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = LoopHistogram(self.buckets)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in dict(self.children).items():
            counts, total = list(child.counts), child.sum
            cumulative, running = [], 0
            for bound, count in zip((*map(floatToGoString, self.buckets), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(labels), cumulative, total)
        yield family


HTTP_REQUESTS = Counter("smartcare_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("smartcare_http_request_seconds", "HTTP request duration", ["method", "route"])
BUS_PUBLISHED = Counter("smartcare_bus_published_total", "Events published", ["topic"])
BUS_HANDLED = Counter("smartcare_bus_handled_total", "Deliveries handled by consumers", ["consumer", "outcome"])
EXCHANGE_RECEIVED = LoopCounter("smartcare_exchange_received_total", "Messages received by the exchange hub",
                                ["kind", "status"])
EXCHANGE_ACK_SECONDS = LoopHistograms("smartcare_exchange_ack_seconds", "Receive-to-ACK latency (includes the commit)",
                                      ["connector"], (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
EXCHANGE_ROUTED = Counter("smartcare_exchange_routed_total", "Messages routed into canonical events", ["channel", "outcome"])
EXCHANGE_BAD_FRAMES = Counter("smartcare_exchange_bad_frames_total", "MLLP frames that could not be read")

_children: dict[tuple, object] = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, cached: the lookup is measurable on a path taken thousands of times a second."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
