"""Prometheus metrics shared by every capability (exposed at ``/metrics``)."""

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("smartcare_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram("smartcare_http_request_seconds", "HTTP request duration", ["method", "route"])
BUS_PUBLISHED = Counter("smartcare_bus_published_total", "Events published", ["topic"])
BUS_HANDLED = Counter("smartcare_bus_handled_total", "Deliveries handled by consumers", ["consumer", "outcome"])
