"""An asyncio dynamic batcher: images from concurrent requests are gathered and run as one batch.

Each image waits in one shared queue as a (tensor, future) job. A worker takes the first job, then keeps taking
jobs until it holds ``max_batch`` of them or ``max_delay`` has passed since the first, runs the batch in its own
thread (the event loop stays free to accept and decode requests) and resolves each job's future with its row.
With several workers, each owns one runtime instance and one thread, so a backend's runtime is never used by two
threads at once. A request whose images do not fit in the queue is refused whole (:class:`QueueFullError`).

A batch also closes early when the queue is empty and no request is on its way (being received or decoded, see
:meth:`DynamicBatcher.arriving`): a lone request does not pay ``max_delay`` for company that cannot come.

Batching changes no answer as long as the backend is batch-invariant (its output row for an image does not depend
on the other rows). The ONNX Runtime and OpenVINO CPU backends are, bit for bit, on the fp32 ResNets (see
``docs/serving.md``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ppdeploy.errors import DeployError, one_line
from ppdeploy.runtimes.base import Runtime
from ppdeploy.serving.metrics import ServeMetrics


class QueueFullError(DeployError):
    """The batch queue has no room for a request's images: the server is overloaded, retry later."""


class BatcherClosedError(DeployError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Job:
    tensor: np.ndarray
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    """Gather images into batches of up to ``max_batch``, waiting at most ``max_delay_s`` for a batch to fill.

    Args:
        runtimes: one runtime per worker (all loaded from the same artifact).
        max_batch: most images per batch.
        max_delay_s: longest wait, from a batch's first image, for more images to join it.
        max_queue: most images waiting; a request that would exceed it raises :class:`QueueFullError`.
        metrics: where batch sizes, queue and inference times are recorded (optional).
    """

    def __init__(self, runtimes: Sequence[Runtime], *, max_batch: int = 8, max_delay_s: float = 0.005,
                 max_queue: int = 64, metrics: ServeMetrics | None = None) -> None:
        if not runtimes:
            raise DeployError(one_line("DynamicBatcher", "no runtime given", "pass at least one runtime"))
        self.runtimes = list(runtimes)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._accepting = False
        self._arriving = 0

    @property
    def running(self) -> bool:
        return self._accepting

    def depth(self) -> int:
        """Images waiting for a worker."""
        return self._queue.qsize() if self._queue is not None else 0

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way (its images will be queued soon), so batches wait for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def start(self) -> None:
        """Start one worker task (and inference thread) per runtime, in the running event loop."""
        self._queue = asyncio.Queue()
        for index, runtime in enumerate(self.runtimes):
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ppdeploy-infer-{index}")
            self._executors.append(executor)
            self._tasks.append(asyncio.create_task(self._work(runtime, executor), name=f"ppdeploy-batcher-{index}"))
        self._accepting = True

    async def infer(self, tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The model's output row for each preprocessed (C, H, W) tensor, in order.

        Raises:
            QueueFullError: the queue has no room for all of ``tensors``; nothing was queued.
            BatcherClosedError: the batcher is not accepting work.
            DeployError: the runtime refused the batch (every image of that batch gets the error).
        """
        if not self._accepting or self._queue is None:
            raise BatcherClosedError(one_line("batcher", "not running", "wait for the server to be ready"))
        if self._queue.qsize() + len(tensors) > self.max_queue:
            raise QueueFullError(one_line("batch queue", f"{self._queue.qsize()} of {self.max_queue} images "
                                          f"waiting, no room for {len(tensors)} more", "retry later"))
        loop = asyncio.get_running_loop()
        jobs = [_Job(tensor, loop.create_future(), loop.time()) for tensor in tensors]
        for job in jobs:  # no await in between: the whole request is queued or none of it
            self._queue.put_nowait(job)
        self._record_depth()
        rows = await asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        return list(rows)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, let the workers finish what is queued (up to ``timeout_s``), then stop them."""
        self._accepting = False
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._tasks, self._executors = [], []
        self._fail_leftovers()

    async def _work(self, runtime: Runtime, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch(loop)
            try:
                live = [job for job in jobs if not job.future.done()]  # a timed-out request cancels its futures
                if live:
                    await self._run(runtime, executor, live, loop)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.max_delay_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._arriving:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._record_depth()
        return jobs

    async def _run(self, runtime: Runtime, executor: ThreadPoolExecutor, jobs: list[_Job],
                   loop: asyncio.AbstractEventLoop) -> None:
        started = loop.time()
        batch = np.stack([job.tensor for job in jobs])
        tick = time.perf_counter()
        try:
            probs = await loop.run_in_executor(executor, runtime.infer, batch)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, the worker keeps going
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(time.perf_counter() - tick)
            self.metrics.batch_size.observe(len(jobs))
            for job in jobs:
                self.metrics.queue_seconds.observe(started - job.enqueued)
        for job, row in zip(jobs, probs):
            if not job.future.done():
                job.future.set_result(row)

    def _record_depth(self) -> None:
        if self.metrics is not None and self._queue is not None:
            self.metrics.queue_depth.set(self._queue.qsize())

    def _fail_leftovers(self) -> None:
        """Jobs still queued after a timed-out stop get an error instead of waiting forever."""
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(BatcherClosedError(one_line("batcher", "stopped before this image ran",
                                                                     "retry")))
