"""The hub's lock-free metrics expose what prometheus_client's own would."""

from __future__ import annotations

import random

from prometheus_client import Counter, Histogram

from smartcare.platform import metrics


def samples(collector) -> list[tuple]:
    """What Prometheus would scrape, without the creation times (only prometheus_client's own have them)."""
    return [(family.type, s.name, s.labels, s.value) for family in collector.collect() for s in family.samples
            if not s.name.endswith("_created")]


def test_loop_histograms_expose_what_a_histogram_does():
    buckets = (0.001, 0.0025, 0.005, 0.01, 1, 2.5)
    ours = metrics.LoopHistograms("h_seconds", "d", ["connector"], buckets, registry=None)
    theirs = Histogram("h_seconds", "d", ["connector"], buckets=buckets, registry=None)
    rng = random.Random(3)
    values = [*buckets, 0.0, 3.0, 1e-9] + [rng.uniform(0, 3) for _ in range(500)]  # each bound itself included
    for connector in ("mllp", "http"):
        for value in values:
            ours.labels(connector).observe(value)
            theirs.labels(connector).observe(value)
    assert samples(ours) == samples(theirs)
    assert len(samples(ours)) == 2 * (len(buckets) + 3)  # the buckets, +Inf, count and sum of each connector


def test_loop_counter_exposes_what_a_counter_does():
    ours = metrics.LoopCounter("c_total", "d", ["kind", "status"], registry=None)
    theirs = Counter("c_total", "d", ["kind", "status"], registry=None)
    for kind, status in [("hl7v2", "accepted")] * 3 + [("hl7v2", "duplicate"), ("cda", "accepted")]:
        ours.inc(kind, status)
        theirs.labels(kind, status).inc()
    assert samples(ours) == samples(theirs)
    assert [s[3] for s in samples(ours)] == [3, 1, 1]
