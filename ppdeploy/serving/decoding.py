"""Decode admission for uploads: a pixel budget per request, and decode threads shared fairly between requests.

Encoded images are small on the wire and large in memory (a 240 KB PNG can hold 81 million pixels). Two bounds
keep one request from holding the decode threads while others wait:

- a request's images may decode to at most ``max_request_pixels`` pixels in all (:class:`PixelBudget`). The sizes
  the headers declare are added up before anything is decoded, and a request above the budget is refused at once;
  decoded sizes are counted too (for a header Pillow cannot read), and once they pass the budget the request's
  remaining images are not decoded;
- the decode threads take images from the waiting requests in turn (:class:`FairDecodePool`, round robin), not
  first come first served: a request of 32 large images holds at most one thread-slot turn at a time, and a
  one-photo request arriving behind it waits for at most the images already being decoded.
"""

from __future__ import annotations

import asyncio
import io
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


def declared_pixels(data: bytes) -> int:
    """Width x height an encoded image's header declares (read with Pillow, nothing decoded); 0 when unknown."""
    try:
        from PIL import Image
    except ImportError:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Exception:  # noqa: BLE001 - not an image Pillow reads: the decoder judges it, its size is counted then
            return 0
    return width * height


class PixelBudget:
    """Pixels a request may still decode (thread-safe); ``limit`` None means no budget."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def exhausted(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def take(self, pixels: int) -> bool:
        """Count ``pixels`` decoded; False once the request is over its budget."""
        with self._lock:
            self.used += pixels
            return not self.exhausted()


@dataclass
class _Job:
    call: Callable[[], Any]
    future: asyncio.Future


class FairDecodePool:
    """A thread pool whose threads serve the waiting requests in turn, one job each, round robin.

    Args:
        threads: decode threads.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="ppdeploy-decode")
        self._busy = 0
        self._waiting: deque[deque[_Job]] = deque()  # one queue of not-yet-started jobs per request

    async def map(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run one request's ``calls`` (each in a decode thread), in turn with the other requests; results in order.

        A cancelled request (its deadline passed) gives up the jobs it has not started.
        """
        loop = asyncio.get_running_loop()
        jobs = deque(_Job(call, loop.create_future()) for call in calls)
        futures = [job.future for job in jobs]
        if jobs:
            self._waiting.append(jobs)
            self._pump(loop)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # a no-op for finished jobs; the pump skips the cancelled ones

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._busy < self.threads and self._waiting:
            queue = self._waiting.popleft()
            job = queue.popleft()
            if queue:
                self._waiting.append(queue)  # the request goes to the back of the line for its next image
            if job.future.done():
                continue
            self._busy += 1
            running = self._executor.submit(job.call)
            running.add_done_callback(lambda done, job=job: self._hand_back(done, job, loop))

    def _hand_back(self, done: Future, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._finished, done, job, loop)
        except RuntimeError:  # the loop closed while the job ran (shutdown): nobody waits for it
            pass

    def _finished(self, done: Future, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        self._busy -= 1
        if not job.future.done():
            error = done.exception()
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done.result())
        self._pump(loop)
