"""Prometheus metrics shared by every capability (exposed at ``/metrics``)."""

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("smartcare_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("smartcare_http_request_seconds", "HTTP request duration", ["method", "route"])
BUS_PUBLISHED = Counter("smartcare_bus_published_total", "Events published", ["topic"])
BUS_HANDLED = Counter("smartcare_bus_handled_total", "Deliveries handled by consumers", ["consumer", "outcome"])
EXCHANGE_RECEIVED = Counter("smartcare_exchange_received_total", "Messages received by the exchange hub", ["kind", "status"])
EXCHANGE_ACK_SECONDS = Histogram("smartcare_exchange_ack_seconds", "Receive-to-ACK latency (includes the commit)",
                                 ["connector"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
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
