"""Prometheus metrics of one server, in a registry of its own (two apps in a process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """The counters and histograms ``GET /metrics`` exposes, all prefixed ``ppdeploy_``."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("ppdeploy_requests", "Classification requests answered, by HTTP status.",
                                ["status"], registry=reg)
        self.errors = Counter("ppdeploy_request_errors", "Classification requests refused or failed, by reason.",
                              ["reason"], registry=reg)
        self.images = Counter("ppdeploy_images", "Images classified.", registry=reg)
        self.request_seconds = Histogram("ppdeploy_request_seconds", "Time from a request's arrival to its answer.",
                                         buckets=_LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("ppdeploy_batch_size", "Images per inference batch.",
                                    buckets=tuple(range(1, max_batch + 1)), registry=reg)
        self.queue_seconds = Histogram("ppdeploy_queue_seconds", "Time an image waits before its batch runs.",
                                       buckets=_LATENCY_BUCKETS, registry=reg)
        self.inference_seconds = Histogram("ppdeploy_inference_seconds", "Time of one batch in the runtime.",
                                           buckets=_LATENCY_BUCKETS, registry=reg)
        self.queue_depth = Gauge("ppdeploy_queue_depth", "Images waiting for a batch worker.", registry=reg)
        self.in_flight = Gauge("ppdeploy_requests_in_flight", "Classification requests being handled.", registry=reg)
