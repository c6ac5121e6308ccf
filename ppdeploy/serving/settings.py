"""What ``deploy serve`` can be told: network, batching and limits, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from ppdeploy.errors import DeployError, one_line


@dataclass(frozen=True)
class ServeSettings:
    """Server settings; the defaults are the ones ``deploy serve`` uses.

    Attributes:
        host: address to bind; loopback unless asked otherwise.
        port: TCP port (0: any free port).
        max_batch: most images run as one batch.
        max_delay_ms: how long the first image of a batch waits for others to join it (not at all when no other
            request is on its way).
        workers: batch workers, each with its own runtime instance, taking batches from one shared queue.
        max_queue: images waiting for a worker before new requests get 503 + ``Retry-After``.
        max_request_bytes: largest request body (413 above it).
        max_images: most images in one request (413 above it).
        max_pixels: largest decoded image, width x height (400 above it); ``None`` uses ``$PPDEPLOY_MAX_PIXELS``
            or the library's default, 0 disables the check.
        max_request_pixels: most pixels the images of one request may decode to in all (413 above it, checked on
            the headers before anything is decoded); 0 disables the budget.
        topk: classes per result when the request does not say; ``max_topk`` caps what a request may ask.
        read_timeout_s: time allowed to receive a request body (408 after it).
        request_timeout_s: time allowed from a request's body being received to its answer (503 + ``Retry-After``
            after it); the body's own time is ``read_timeout_s``, so a stalled body gets 408, never 503.
        header_timeout_s: time allowed to receive a request's headers, from its first byte (or from the
            connection's opening); the connection is answered 408 and closed after it (slowloris).
        max_connections: open connections; one more is answered 503 + ``Retry-After`` and closed.
        retry_after_s: the ``Retry-After`` value sent with 503.
        decode_threads: threads decoding and preprocessing uploads, beside the inference threads.
        shutdown_timeout_s: on SIGINT/SIGTERM, how long in-flight requests may take to finish.
        grpc_port: also serve the Open Inference Protocol over gRPC on this port of ``host`` (0: any free port,
            ``app.state.serving.grpc_port`` says which); ``None``: no gRPC.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    max_delay_ms: float = 5.0
    workers: int = 1
    max_queue: int = 64
    max_request_bytes: int = 20 * 1024 * 1024
    max_images: int = 32
    max_pixels: int | None = None
    max_request_pixels: int = 256_000_000
    topk: int = 5
    max_topk: int = 100
    read_timeout_s: float = 30.0
    request_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_connections: int = 256
    retry_after_s: int = 1
    decode_threads: int = 2
    shutdown_timeout_s: float = 30.0
    grpc_port: int | None = None

    def __post_init__(self) -> None:
        positive = ("max_batch", "workers", "max_queue", "max_request_bytes", "max_images", "topk", "max_topk",
                    "read_timeout_s", "request_timeout_s", "header_timeout_s", "max_connections", "retry_after_s",
                    "decode_threads", "shutdown_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise DeployError(one_line(f"serve setting {name}={getattr(self, name)}", "must be positive",
                                           "pass a value above 0"))
        if self.max_request_pixels < 0:
            raise DeployError(one_line(f"serve setting max_request_pixels={self.max_request_pixels}", "is negative",
                                       "pass a pixel count, or 0 for no budget"))
        if self.max_delay_ms < 0:
            raise DeployError(one_line(f"serve setting max_delay_ms={self.max_delay_ms}", "is negative",
                                       "pass 0 (no waiting) or more"))
        if not 0 <= self.port <= 65535:
            raise DeployError(one_line(f"serve setting port={self.port}", "is not a TCP port", "use 0-65535"))
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise DeployError(one_line(f"serve setting grpc_port={self.grpc_port}", "is not a TCP port",
                                       "use 0-65535"))
        if self.grpc_port is not None and self.grpc_port == self.port != 0:
            raise DeployError(one_line(f"serve setting grpc_port={self.grpc_port}", "is the HTTP port",
                                       "use another port for gRPC"))
        if self.topk > self.max_topk:
            raise DeployError(one_line(f"serve setting topk={self.topk}", f"is above max_topk={self.max_topk}",
                                       "lower topk or raise max_topk"))
