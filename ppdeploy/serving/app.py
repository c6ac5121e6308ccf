"""The FastAPI application: ``POST /v1/classify``, ``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI docs.

A request's images are read (bounded in size and time), decoded and preprocessed in a thread pool with the
library's own rules (:func:`ppdeploy.images.decode_image_bytes`, the model's PaddleClas preprocessing), queued in
the :class:`~ppdeploy.serving.batcher.DynamicBatcher`, and answered with PaddleClas result records
(:func:`ppdeploy.postprocess.top_k`), one per image, in order. Every refusal is a JSON ``{"detail": ...}``
with the status below, and the server keeps serving:

- 400: empty body, data that is not an image or cannot be decoded, an image above the pixel limit, a multipart
  body without a file (``errors`` lists each failing image);
- 408: the body did not arrive within ``read_timeout_s`` (counted apart from ``request_timeout_s``, which starts
  once the body is in: a slow client gets 408, a slow server 503);
- 413: body above ``max_request_bytes``, more than ``max_images`` images, or images of more than
  ``max_request_pixels`` pixels in all;
- 415: a content type that is neither an image, ``application/octet-stream``, form-urlencoded (what
  ``curl --data-binary`` sends) nor ``multipart/form-data``;
- 422: invalid query parameters (``topk`` out of range);
- 503 + ``Retry-After``: the batch queue is full, the answer took longer than ``request_timeout_s``, or the
  server is starting or shutting down.

The Open Inference Protocol (KServe v2) endpoints are added by :mod:`ppdeploy.serving.v2`, on the same batcher,
limits and metrics; the pieces both share are in :mod:`ppdeploy.serving.handling`. With ``grpc_port`` set, the
lifespan also serves that protocol over gRPC (:mod:`ppdeploy.serving.grpc_v2`) in the same event loop.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' signatures at run time, and they
# refer to the settings of the app being built.
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from ppdeploy.errors import DeployError, one_line
from ppdeploy.images import pixel_limit
from ppdeploy.preprocess import PreprocessConfig
from ppdeploy.runtimes.base import Runtime
from ppdeploy.serving.batcher import DynamicBatcher
from ppdeploy.serving.decoding import FairDecodePool
from ppdeploy.serving.handling import (
    BodyLimitMiddleware,
    Refusal,
    add_get_and_head,
    answered,
    check_image_count,
    infer_rows,
    observe_request,
    preprocess_uploads,
    receive_within,
)
from ppdeploy.serving.metrics import ServeMetrics
from ppdeploy.serving.settings import ServeSettings

# Bodies taken as one raw image. curl --data-binary sends form-urlencoded unless told otherwise.
RAW_CONTENT_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded", "")
MULTIPART = "multipart/form-data"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_CLASSIFY_BODY = {"requestBody": {"required": True, "content": {
    "image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY,
    MULTIPART: {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}}


class ClassResult(BaseModel):
    """One image's PaddleClas ``Topk`` record."""

    class_ids: list[int]
    scores: list[float]
    label_names: list[str]
    filename: str | None


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str
    errors: list[dict[str, str]] | None = None


@dataclass
class ServedModel:
    """What the server runs: the loaded runtime, its preprocessing, and names for reports."""

    runtime: Runtime
    preprocess: PreprocessConfig
    name: str
    backend: str

    @classmethod
    def from_source(cls, source: Any, preprocess: PreprocessConfig | None = None) -> "ServedModel":
        """From a :class:`~ppdeploy.classifier.Classifier`, or a bare Runtime (default preprocessing)."""
        if isinstance(source, Runtime):
            return cls(source, preprocess or PreprocessConfig(), source.artifact_dir.name, source.name)
        return cls(source.runtime, preprocess or source.preprocess, source.model_name, source.choice.label)

    def check(self) -> None:
        """Refuse preprocessing whose crop does not fit the model's input (every request would fail)."""
        if not self.runtime.inputs:
            raise DeployError(one_line(f"runtime '{self.runtime.name}'", "is closed", "pass a loaded runtime"))
        spec = self.runtime.inputs[0]
        size = self.preprocess.crop_size
        if any(dim is not None and dim != size for dim in spec.shape[2:]):
            raise DeployError(one_line(f"preprocessing crop {size}x{size}", f"does not fit input '{spec.name}' "
                                       f"of shape {spec.shape}", "pass the model's own preprocessing"))

    def precision(self) -> str:
        """What the runtime computes in: ``fp32``, ``int8 (f32 for unquantized layers)``, ``fp32 weights, bf16
        compute`` (an int8 model once reported only its unquantized layers' ``f32``)."""
        from ppdeploy.runtimes.base import runs_as

        return runs_as(self.runtime.details)


# Builds the app's batcher from its runtimes; anything with DynamicBatcher's start/stop/infer/arriving/depth/running.
BatcherFactory = Callable[[Sequence[Runtime], ServeSettings, ServeMetrics], Any]


def dynamic_batcher(runtimes: Sequence[Runtime], settings: ServeSettings, metrics: ServeMetrics) -> DynamicBatcher:
    """The default batcher: :class:`~ppdeploy.serving.batcher.DynamicBatcher`, one worker per runtime."""
    return DynamicBatcher(runtimes, max_batch=settings.max_batch, max_delay_s=settings.max_delay_ms / 1000,
                          max_queue=settings.max_queue, metrics=metrics)


@dataclass
class _State:
    settings: ServeSettings
    model: ServedModel
    metrics: ServeMetrics
    batcher_factory: BatcherFactory = dynamic_batcher
    batcher: Any = None
    decode_pool: FairDecodePool | None = None
    runtimes: list[Runtime] = field(default_factory=list)
    draining: bool = False
    grpc_server: Any = None  # grpc.aio server, when settings.grpc_port is set
    grpc_port: int | None = None  # the port it bound

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.batcher.running and not self.draining


def create_app(source: Any, settings: ServeSettings | None = None, *, preprocess: PreprocessConfig | None = None,
               batcher_factory: BatcherFactory = dynamic_batcher) -> FastAPI:
    """Build the application around a loaded model.

    Args:
        source: a :class:`~ppdeploy.classifier.Classifier`, or a :class:`~ppdeploy.runtimes.base.Runtime`
            (then ``preprocess`` or the ImageNet default preprocessing is used). The caller keeps ownership and
            closes it; runtimes the app creates for extra workers are closed by the app at shutdown.
        settings: batching, limits and timeouts.
        preprocess: overrides the source's preprocessing.
        batcher_factory: builds the batcher at startup (Ray Serve passes one batching with ``@serve.batch``).

    Returns:
        The FastAPI app; ``app.state.serving`` holds its batcher, metrics and settings.
    """
    settings = settings or ServeSettings()
    pixel_limit(settings.max_pixels)  # a bad $PPDEPLOY_MAX_PIXELS fails here, not in every request
    model = ServedModel.from_source(source, preprocess)
    model.check()
    state = _State(settings, model, ServeMetrics(settings.max_batch), batcher_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(state)
        try:
            if settings.grpc_port is not None:  # the same protocol over gRPC, in this event loop
                from ppdeploy.serving.grpc_v2 import start_grpc

                state.grpc_server, state.grpc_port = await start_grpc(state, app.version)
            yield
        finally:
            if state.grpc_server is not None:
                state.draining = True
                await state.grpc_server.stop(settings.shutdown_timeout_s)
            await _stop(state)

    app = FastAPI(title="ppdeploy", version=_version(), lifespan=lifespan,
                  description=f"PaddleClas classifier **{state.model.name}** on **{state.model.backend}**, "
                              "with dynamic batching.")
    app.state.serving = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    _add_routes(app, state)
    from ppdeploy.serving.v2 import add_v2_routes

    add_v2_routes(app, state)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppdeploy")
    except PackageNotFoundError:
        return "0"


async def _start(state: _State) -> None:
    extra = state.settings.workers - 1
    base = state.model.runtime
    if base.mode == "throughput":  # one runtime whose infer() is thread-safe: a worker per request in flight
        state.runtimes = [base] * max(state.settings.workers, base.requests or 1)
    else:  # more workers need more instances of the same runtime (a latency-mode runtime is not shared)
        extras = await asyncio.to_thread(
            lambda: [type(base)(base.artifact_dir, device=base.device, threads=base.threads) for _ in range(extra)])
        state.runtimes = [base, *extras]
    state.decode_pool = FairDecodePool(state.settings.decode_threads)
    state.batcher = state.batcher_factory(state.runtimes, state.settings, state.metrics)
    await state.batcher.start()


async def _stop(state: _State) -> None:
    state.draining = True
    if state.batcher is not None:
        await state.batcher.stop(state.settings.shutdown_timeout_s)
    if state.decode_pool is not None:
        state.decode_pool.shutdown()
    for runtime in state.runtimes[1:]:
        if runtime is not state.runtimes[0]:
            runtime.close()


def _add_routes(app: FastAPI, state: _State) -> None:
    settings = state.settings

    @app.post("/v1/classify", response_model=list[ClassResult], openapi_extra=_CLASSIFY_BODY,
              responses={code: {"model": Problem} for code in (400, 408, 413, 415, 500, 503)})
    async def classify(request: Request,
                       topk: Annotated[int, Query(ge=1, le=settings.max_topk, description="Classes per image.")
                                       ] = settings.topk,
                       filename: Annotated[str | None, Query(description="Name echoed in a raw body's result.")
                                           ] = None) -> Response:
        """Classify one image (raw body) or several (multipart, one file part each), in order."""
        return await answered(request, state, lambda: _classify(request, state, topk, filename), _problem,
                              "POST /v1/classify")

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path == "/v1/classify":
            observe_request(state, request.scope, 422)
            state.metrics.errors.labels("invalid_parameter").inc()
        return await request_validation_exception_handler(request, exc)

    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    async def readyz() -> Response:
        """Readiness: the model is loaded and the batch workers run. Reports the precision that really runs."""
        if not state.ready:
            return JSONResponse({"status": "draining" if state.draining else "starting"}, status_code=503)
        return JSONResponse(_readiness(state))

    add_get_and_head(app, "/healthz", healthz)
    add_get_and_head(app, "/readyz", readyz, responses={503: {"description": "starting or shutting down"}})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics: requests, errors, batch sizes, queue and inference times."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _readiness(state: _State) -> dict[str, Any]:
    settings = state.settings
    return {"status": "ready", "model": state.model.name, "backend": state.model.backend,
            "precision": state.model.precision(), "runtime": state.model.runtime.name,
            "details": [dict(runtime.details) for runtime in state.runtimes],
            "input": list(state.model.runtime.inputs[0].shape) if state.model.runtime.inputs else None,
            "max_batch": settings.max_batch, "max_delay_ms": settings.max_delay_ms, "workers": settings.workers,
            "max_queue": settings.max_queue, "queue_depth": state.batcher.depth() if state.batcher else 0,
            "max_request_bytes": settings.max_request_bytes, "max_images": settings.max_images,
            "max_request_pixels": settings.max_request_pixels}


def _problem(refusal: Refusal) -> JSONResponse:
    body: dict[str, Any] = {"detail": refusal.detail}
    if refusal.errors:
        body["errors"] = refusal.errors
    return JSONResponse(body, status_code=refusal.status, headers=refusal.headers())


async def _classify(request: Request, state: _State, topk: int, filename: str | None) -> JSONResponse:
    from ppdeploy.postprocess import top_k

    uploads, rows = await infer_rows(state, lambda: _read_uploads(request, state.settings, filename),
                                     lambda uploads: preprocess_uploads(uploads, state))
    state.metrics.images.inc(len(rows))
    return JSONResponse(top_k(np.stack(rows), topk, filenames=[name for name, _ in uploads]))


async def _read_uploads(request: Request, settings: ServeSettings, filename: str | None) -> list[tuple[str, bytes]]:
    """The request's images as (name, bytes), refusing oversized, slow, empty or foreign bodies."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_raw = content_type in RAW_CONTENT_TYPES or content_type.startswith("image/")
    if content_type != MULTIPART and not is_raw:
        raise Refusal(415, "content_type", f"content type '{content_type}' | not an image upload | send the image "
                      f"bytes as image/*, application/octet-stream, or files in {MULTIPART}")
    uploads = await receive_within(request, settings, lambda: _read_multipart(request) if content_type == MULTIPART
                                   else _read_raw(request, filename))
    if not uploads:
        raise Refusal(400, "empty", f"request | {MULTIPART} body holds no file part | send each image as a file")
    check_image_count(len(uploads), settings)
    return uploads


async def _read_raw(request: Request, filename: str | None) -> list[tuple[str, bytes]]:
    body = await request.body()
    if not body:
        raise Refusal(400, "empty", "request | empty body | send the image file's bytes")
    return [(filename or "upload", body)]


async def _read_multipart(request: Request) -> list[tuple[str, bytes]]:
    from starlette.exceptions import HTTPException

    try:
        form = await request.form()
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise Refusal(400, "bad_multipart", f"multipart body | {exc.detail} | send well-formed {MULTIPART}") from None
    try:
        return [(part.filename or key, await part.read()) for key, part in form.multi_items()
                if isinstance(part, UploadFile)]
    finally:
        await form.close()
