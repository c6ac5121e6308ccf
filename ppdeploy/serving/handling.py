"""What every inference endpoint shares (``/v1/classify`` and the Open Inference Protocol's ``infer``).

- :func:`answered`: runs a handler, turns a :class:`Refusal` into the endpoint's error body, and records the
  request in the metrics (status, time, in flight) whatever happens;
- :func:`read_body`: the body, bounded in size (413) and in time (408, counted apart from the answer's deadline);
- :func:`infer_rows`: readiness, the answer's deadline (503 + ``Retry-After``), the batch queue;
- :func:`preprocess_uploads`: encoded images decoded and preprocessed as ``deploy run`` does, within the request's
  pixel budget, in the fair decode pool (:mod:`ppdeploy.serving.decoding`).

The app's state object (``app.state.serving``) is passed in: it holds ``settings``, ``model``, ``metrics``,
``batcher``, ``decode_pool`` and ``ready``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ppdeploy.errors import DeployError
from ppdeploy.serving.batcher import BatcherClosedError, QueueFullError
from ppdeploy.serving.decoding import PixelBudget, declared_pixels
from ppdeploy.serving.settings import ServeSettings

_LOG = logging.getLogger("ppdeploy.serving")
ARRIVAL = "ppdeploy.arrived"  # scope key: when the request's first byte was handed to the app (perf_counter)


class Refusal(Exception):
    """A request refused with an HTTP status; ``reason`` labels the error metric."""

    def __init__(self, status: int, reason: str, detail: str, *, errors: list[dict[str, str]] | None = None,
                 retry_after: int | None = None, close: bool = False) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail
        self.errors, self.retry_after, self.close = errors, retry_after, close

    def headers(self) -> dict[str, str] | None:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.close:  # the body was not read to its end: the connection cannot carry another request
            headers["Connection"] = "close"
        return headers or None


class BodyTooLarge(Exception):
    """Raised while a body streams in past ``max_request_bytes``."""


class BodyLimitMiddleware:
    """ASGI middleware: notes each request's arrival time, and fails a body longer than ``max_bytes`` while it is
    read (chunked bodies too)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL] = time.perf_counter()
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)


def observe_request(state: Any, scope: dict, status: int) -> None:
    """Count one answered request: its status and its time since arrival (every answered request, 422s too)."""
    state.metrics.requests.labels(str(status)).inc()
    state.metrics.request_seconds.observe(time.perf_counter() - scope.get(ARRIVAL, time.perf_counter()))


async def answered(request: Any, state: Any, handle: Callable[[], Awaitable[Any]],
                   problem: Callable[[Refusal], Any], where: str) -> Any:
    """Run ``handle``; a :class:`Refusal` becomes ``problem(refusal)``, a bug a 500; the metrics see every answer."""
    state.metrics.in_flight.inc()
    status = 200
    try:
        return await handle()
    except Refusal as refusal:
        status = refusal.status
        state.metrics.errors.labels(refusal.reason).inc()
        return problem(refusal)
    except Exception:  # noqa: BLE001 - a bug or a backend crash: answer 500, log it, keep serving
        status = 500
        state.metrics.errors.labels("internal").inc()
        _LOG.exception("%s failed", where)
        return problem(Refusal(500, "internal", "server | internal error | see the server log"))
    finally:
        observe_request(state, request.scope, status)
        state.metrics.in_flight.dec()


def add_get_and_head(app: Any, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
    """Route GET and HEAD (probes such as ``curl -I`` and load balancers use HEAD) to ``endpoint``; only GET
    appears in the OpenAPI docs."""
    app.add_api_route(path, endpoint, methods=["GET"], **options)
    app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, **options)


def too_large(settings: ServeSettings) -> Refusal:
    return Refusal(413, "too_large", f"request body | larger than {settings.max_request_bytes:,} bytes | "
                   "send a smaller request (or raise --max-request-bytes)")


async def receive_within(request: Any, settings: ServeSettings, read: Callable[[], Awaitable[Any]]) -> Any:
    """Await ``read()`` (which reads the body) within ``read_timeout_s``: 408, 413 and 400 (disconnect) otherwise."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise too_large(settings)
    try:
        async with asyncio.timeout(settings.read_timeout_s):
            return await read()
    except BodyTooLarge:
        raise too_large(settings) from None
    except ClientDisconnect:
        raise Refusal(400, "disconnected", "request | client disconnected while sending the body") from None
    except TimeoutError:
        raise Refusal(408, "read_timeout", f"request body | not received within {settings.read_timeout_s:g} s | "
                      "send it faster or in a smaller request", close=True) from None


async def read_body(request: Any, settings: ServeSettings) -> bytes:
    """The whole body (see :func:`receive_within`)."""
    return await receive_within(request, settings, request.body)


async def infer_rows(state: Any, read: Callable[[], Awaitable[Any]],
                     prepare: Callable[[Any], Awaitable[list[np.ndarray]]]) -> tuple[Any, list[np.ndarray]]:
    """Read a request (``read``: its own 408 deadline), prepare its tensors and run them through the batcher.

    The answer's deadline (``request_timeout_s``, 503 + ``Retry-After``) starts once the body is in: a slow client
    gets 408, a slow server 503, never the other way round.

    Returns:
        (what ``read`` returned, the model's output row for each tensor, in order).
    """
    settings = state.settings
    if not state.ready:
        raise Refusal(503, "not_ready", "server | not ready (starting or shutting down) | retry later",
                      retry_after=settings.retry_after_s)
    loop = asyncio.get_running_loop()
    try:
        with state.batcher.arriving():
            payload = await read()
            deadline = loop.time() + settings.request_timeout_s
            async with asyncio.timeout_at(deadline):
                tensors = await prepare(payload)
        async with asyncio.timeout_at(deadline):
            rows = await state.batcher.infer(tensors)
    except TimeoutError:
        raise Refusal(503, "timeout", f"request | no answer within {settings.request_timeout_s:g} s | retry later",
                      retry_after=settings.retry_after_s) from None
    except QueueFullError as exc:
        raise Refusal(503, "queue_full", str(exc), retry_after=settings.retry_after_s) from None
    except BatcherClosedError as exc:
        raise Refusal(503, "not_ready", str(exc), retry_after=settings.retry_after_s) from None
    except DeployError as exc:  # the runtime refused the batch: a server-side problem
        raise Refusal(500, "inference", str(exc)) from None
    return payload, rows


def check_image_count(count: int, settings: ServeSettings) -> None:
    if count > settings.max_images:
        raise Refusal(413, "too_many_images", f"request | {count} images, the limit is {settings.max_images} | "
                      "split it into several requests")


async def preprocess_uploads(uploads: list[tuple[str, bytes]], state: Any) -> list[np.ndarray]:
    """Decode and preprocess ``(name, bytes)`` uploads as ``deploy run`` treats files; 400 lists the bad ones,
    413 a request above its pixel budget."""
    settings = state.settings
    budget = PixelBudget(settings.max_request_pixels or None)
    declared = sum(declared_pixels(data) for _, data in uploads)
    if budget.limit is not None and declared > budget.limit:
        raise _over_budget(declared, settings)
    items = await state.decode_pool.map([lambda name=name, data=data: _load_upload(name, data, state, budget)
                                         for name, data in uploads])
    if budget.exhausted():
        raise _over_budget(budget.used, settings)
    errors = [{"filename": item.filename, "error": item.error} for item in items if item.error is not None]
    if errors:
        detail = errors[0]["error"] if len(errors) == 1 else f"{len(errors)} of {len(items)} images cannot be used"
        raise Refusal(400, "bad_image", detail, errors=errors)
    return [item.tensor for item in items]


def _over_budget(pixels: int, settings: ServeSettings) -> Refusal:
    return Refusal(413, "too_many_pixels", f"request | its images hold {pixels:,} pixels, the limit is "
                   f"{settings.max_request_pixels:,} per request | send fewer or smaller images in each request "
                   "(or raise max_request_pixels)")


def _load_upload(name: str, data: bytes, state: Any, budget: PixelBudget) -> Any:
    """Decode and preprocess one upload exactly as ``deploy run`` treats a file (errors become the item's error)."""
    from ppdeploy.classifier import InputItem, load_input
    from ppdeploy.errors import ImageError
    from ppdeploy.images import decode_image_bytes

    if budget.exhausted():  # an earlier image of this request took the budget: do not decode more
        return InputItem(name, error="request over its pixel budget")
    try:
        image = decode_image_bytes(data, name, max_pixels=state.settings.max_pixels)
    except ImageError as exc:
        return InputItem(name, error=str(exc))
    if not budget.take(image.shape[0] * image.shape[1]):
        return InputItem(name, error="request over its pixel budget")
    return load_input((name, image), state.model.preprocess)
