"""``deploy serve --engine ray``: the ``deploy serve`` application as a Ray Serve deployment.

Each replica loads the model and builds the same FastAPI app as ``deploy serve``
(:func:`ppdeploy.serving.app.create_app`: endpoints, limits, error records, metrics), mounted with
``@serve.ingress``. Only the batcher differs: images from the requests a replica holds are gathered by Ray Serve's
``@serve.batch`` (``max_batch_size`` = ``--max-batch``, ``batch_wait_timeout_s`` = ``--max-delay-ms`` / 1000).
Ray Serve spreads requests over the replicas; ``/metrics`` reports the replica that answered.

Importing this module imports Ray Serve: check :func:`~ppdeploy.scaleout.cluster.require_ray` first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np
from ray import serve

from ppdeploy.errors import DeployError, first_line, one_line
from ppdeploy.runtimes.base import Runtime
from ppdeploy.scaleout.cluster import ModelConfig, connect
from ppdeploy.serving.batcher import BatcherClosedError, QueueFullError
from ppdeploy.serving.metrics import ServeMetrics
from ppdeploy.serving.settings import ServeSettings

APP_NAME = "ppdeploy"


class ServeBatcher:
    """The app's batcher on a Ray Serve replica: ``@serve.batch`` gathers the images, one runtime thread runs them.

    Same interface as :class:`~ppdeploy.serving.batcher.DynamicBatcher`; ``depth()`` counts images not yet
    answered, and a request that would take it above ``max_queue`` is refused whole (503).
    """

    def __init__(self, runtimes: Sequence[Runtime], settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.runtime = runtimes[0]
        self.max_queue = settings.max_queue
        self.metrics = metrics
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0
        self._accepting = False
        self._submit = serve.batch(max_batch_size=settings.max_batch,
                                   batch_wait_timeout_s=settings.max_delay_ms / 1000)(self._run_batch)

    @property
    def running(self) -> bool:
        return self._accepting

    def depth(self) -> int:
        return self._pending

    def arriving(self) -> Any:
        return nullcontext()  # Ray Serve's batch waits batch_wait_timeout_s whatever is on its way

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppdeploy-infer")
        self._accepting = True

    async def infer(self, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The model's output row for each preprocessed tensor, in order (see ``DynamicBatcher.infer``)."""
        if not self._accepting:
            raise BatcherClosedError(one_line("batcher", "not running", "wait for the replica to be ready"))
        if self._pending + len(tensors) > self.max_queue:
            raise QueueFullError(one_line("replica queue", f"{self._pending} of {self.max_queue} images waiting, "
                                          f"no room for {len(tensors)} more", "retry later"))
        self._pending += len(tensors)
        self.metrics.queue_depth.set(self._pending)
        try:
            enqueued = time.perf_counter()
            return list(await asyncio.gather(*(self._submit((tensor, enqueued)) for tensor in tensors)))
        finally:
            self._pending -= len(tensors)
            self.metrics.queue_depth.set(self._pending)

    async def stop(self, timeout_s: float = 30.0) -> None:
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _run_batch(self, jobs: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
        started = time.perf_counter()
        batch = np.stack([tensor for tensor, _ in jobs])
        probs = await asyncio.get_running_loop().run_in_executor(self._executor, self.runtime.infer, batch)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(jobs))
        for _, enqueued in jobs:
            self.metrics.queue_seconds.observe(started - enqueued)
        return list(probs)


@serve.deployment
@serve.ingress()
class ClassifierReplica:
    """One replica: the model, loaded once, behind the ``deploy serve`` app."""

    def __init__(self, config: ModelConfig, settings: ServeSettings) -> None:
        self.classifier = config.load()
        self.settings = settings

    def __serve_build_asgi_app__(self) -> Any:
        from ppdeploy.serving.app import create_app

        return create_app(self.classifier, self.settings, batcher_factory=ServeBatcher)


def deploy(config: ModelConfig, settings: ServeSettings, *, replicas: int = 1, max_replicas: int | None = None,
           replica_cpus: float = 1.0, address: str | None = None,
           log: Callable[[str], None] | None = None) -> tuple[str, bool]:
    """Deploy the app on Ray Serve (joining ``address`` or starting a local Ray) and wait until it answers.

    Args:
        config: the model every replica loads (checked once here first).
        settings: the app's settings; ``host``/``port`` are where Ray Serve's HTTP proxy listens.
        replicas: replicas to run, or the minimum when ``max_replicas`` is above it (autoscaling).
        max_replicas: autoscale up to this many replicas on ongoing requests.
        replica_cpus: CPUs Ray reserves per replica (match ``config.threads``).
        address: a Ray cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``).
        log: called with progress lines.

    Returns:
        (base URL, whether this call started Ray).

    Raises:
        DeployError: the port is taken, the cluster cannot be reached, or the replicas failed to start.
    """
    if settings.workers != 1:
        raise DeployError(one_line(f"--workers {settings.workers}", "is for --engine local",
                                   "use --replicas with --engine ray"))
    settings = _with_port(settings, address)
    config.check(log)
    started = connect(address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas and max_replicas > replicas:
        scaling = {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                          "target_ongoing_requests": settings.max_batch}}
    app = ClassifierReplica.options(name=APP_NAME, ray_actor_options={"num_cpus": replica_cpus},
                                    max_ongoing_requests=settings.max_queue, **scaling).bind(config, settings)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        raise DeployError(one_line(f"Ray Serve application '{APP_NAME}'", f"failed to start ({first_line(exc)})",
                                   "see the replica logs under /tmp/ray/session_latest/logs/serve")) from None
    return f"http://{settings.host}:{settings.port}", started


def serve_until_stopped(config: ModelConfig, settings: ServeSettings, *, log: Callable[[str], None],
                        **options: Any) -> None:
    """:func:`deploy`, announce the URL, block until SIGINT/SIGTERM, then delete the application."""
    import signal

    import ray

    url, started = deploy(config, settings, log=log, **options)
    log(f"serving {config.model} on Ray Serve at {url} | POST /v1/classify, GET /healthz /readyz /metrics, docs at "
        f"/docs | max batch {settings.max_batch}, max delay {settings.max_delay_ms:g} ms | Ctrl-C stops")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up as Ctrl-C does
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        serve.delete(APP_NAME)
        if started:
            serve.shutdown()
            ray.shutdown()


def _with_port(settings: ServeSettings, address: str | None) -> ServeSettings:
    """Check a local port is free before anything loads (port 0: pick a free one)."""
    import dataclasses

    from ppdeploy.serving.server import bind_socket

    if address is not None and settings.port != 0:
        return settings  # the proxy listens on the cluster's nodes, not necessarily here
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    sock.close()
    return dataclasses.replace(settings, port=port)
