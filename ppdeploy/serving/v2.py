"""The Open Inference Protocol (KServe v2, what Triton, OVMS, KServe and Seldon speak) over HTTP/REST.

Endpoints (``{name}`` is the served model's name, ``GET /readyz`` says it; the only version is ``1``)::

    GET  /v2                                   server metadata (name, version, extensions)
    GET  /v2/health/live, /v2/health/ready     200, or 503 while starting or shutting down
    GET  /v2/models/{name}[/versions/1]        model metadata: inputs, outputs
    GET  /v2/models/{name}[/versions/1]/ready  200, or 503
    POST /v2/models/{name}[/versions/1]/infer  inference

One request carries exactly one of two inputs:

- ``image``, BYTES ``[N]`` (or ``[N, 1]``, as a Triton ensemble sends it): encoded image files (JPEG, PNG, ...),
  decoded and preprocessed exactly as ``deploy run`` treats files;
- the model's own input (its real name, e.g. ``x``), FP32 ``[N, 3, H, W]``: images already preprocessed.

Outputs: ``probabilities`` FP32 ``[N, classes]`` (the default), and on request ``topk_ids`` INT64, ``topk_scores``
FP32 and ``topk_labels`` BYTES, each ``[N, k]`` with ``k`` from the request parameter ``topk`` (default the
server's ``--topk``). Triton's classification extension works too: ``probabilities`` asked for with the parameter
``classification: k`` comes back as BYTES ``[N, k]`` of ``"score:index:label"``. Any output can come back as JSON
or as binary data (Triton's binary tensor data extension, what ``tritonclient.http`` asks for by default).

The images of a request go through the same decode pool, pixel budget, dynamic batcher, limits and metrics as
``/v1/classify``. Refusals are ``{"error": "..."}`` with the status of ``/v1``: 400 malformed (bad JSON, unknown
input or output, wrong datatype or shape, data that does not add up, an image that cannot be decoded), 404
unknown model or version, 408, 413, 503 + ``Retry-After``, 500.

The same protocol over gRPC (``deploy serve --grpc-port``) is :mod:`ppdeploy.serving.grpc_v2`, on the same
:class:`ModelInterface` (:meth:`ModelInterface.infer` runs a parsed request whichever the transport).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' signatures at run time.
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ppdeploy.serving.handling import (
    Refusal,
    add_get_and_head,
    answered,
    check_image_count,
    infer_rows,
    preprocess_uploads,
    read_body,
)
from ppdeploy.serving.tensors import (
    HEADER_LENGTH,
    InferRequest,
    Tensor,
    TensorError,
    encode_tensors,
    parse_infer_request,
)

IMAGE_INPUT = "image"
PROBABILITIES = "probabilities"
TOPK_OUTPUTS = {"topk_ids": "INT64", "topk_scores": "FP32", "topk_labels": "BYTES"}
VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "classification"]


@dataclass
class _Plan:
    """A validated request: its images or its preprocessed tensor, and what to answer."""

    request: InferRequest
    count: int
    images: list[tuple[str, bytes]] | None
    tensor: np.ndarray | None
    outputs: list[dict[str, Any]]
    topk: int
    binary: set[str]


class ModelInterface:
    """The served model as the protocol describes it: names, datatypes and shapes of its inputs and outputs."""

    def __init__(self, state: Any) -> None:
        self.state = state
        runtime = state.model.runtime
        self.name = state.model.name
        self.platform = f"ppdeploy_{state.model.backend}"
        self.tensor_input = runtime.inputs[0].name
        self.input_shape = runtime.inputs[0].shape
        self.classes = runtime.outputs[0].shape[-1] if runtime.outputs else None
        self.max_topk = min(state.settings.max_topk, self.classes or state.settings.max_topk)
        self.default_topk = min(state.settings.topk, self.max_topk)

    def metadata(self) -> dict[str, Any]:
        dims = [-1 if dim is None else int(dim) for dim in self.input_shape]
        return {"name": self.name, "versions": [VERSION], "platform": self.platform,
                "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                           {"name": self.tensor_input, "datatype": "FP32", "shape": [-1, *dims[1:]]}],
                "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, self.classes or -1]},
                            *({"name": name, "datatype": datatype, "shape": [-1, -1]}
                              for name, datatype in TOPK_OUTPUTS.items())]}

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.name:
            raise Refusal(404, "unknown_model", f"model '{name}' | not served here | this server serves "
                          f"'{self.name}'")
        if version not in (None, "", VERSION):
            raise Refusal(404, "unknown_model", f"model '{name}' version '{version}' | not served here | the only "
                          f"version is {VERSION}")

    def plan(self, request: InferRequest, settings: Any) -> "_Plan":
        """Validate a parsed request against the model (400 for what does not fit, 413 above the limits)."""
        if len(request.inputs) != 1:
            raise _bad(f"request | {len(request.inputs)} inputs | send exactly one: '{IMAGE_INPUT}' (BYTES, encoded "
                       f"images) or '{self.tensor_input}' (FP32, preprocessed)")
        tensor = request.inputs[0]
        if tensor.name == IMAGE_INPUT:
            images = self._images(tensor)
            count, array = len(images), None
        elif tensor.name == self.tensor_input:
            images, array = None, self._preprocessed(tensor)
            count = array.shape[0]
        else:
            raise _bad(f"input '{tensor.name}' | unknown | the inputs are '{IMAGE_INPUT}' and '{self.tensor_input}'")
        if count == 0:
            raise _bad(f"input '{tensor.name}' | holds no image | send at least one")
        check_image_count(count, settings)
        outputs = request.outputs or [{"name": PROBABILITIES, "parameters": {}}]
        for output in outputs:
            self._check_output(output)
        binary_all = request.parameters.get("binary_data_output") is True
        binary = {o["name"] for o in outputs if binary_all or o["parameters"].get("binary_data") is True}
        return _Plan(request, count, images, array, outputs, self._topk(request.parameters.get("topk")), binary)

    def _images(self, tensor: Tensor) -> list[tuple[str, bytes]]:
        shape = tensor.shape
        if tensor.datatype != "BYTES" or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise _bad(f"input '{IMAGE_INPUT}' | got {tensor.datatype} {shape} | send BYTES [N] (or [N, 1]), one "
                       "encoded image file per element")
        return [(f"{IMAGE_INPUT}[{index}]", data) for index, data in enumerate(tensor.data.reshape(-1))]

    def _preprocessed(self, tensor: Tensor) -> np.ndarray:
        want = ["N" if dim is None else dim for dim in self.input_shape]
        fits = len(tensor.shape) == len(want) and all(w == "N" or w == g for w, g in zip(want, tensor.shape))
        if tensor.datatype != "FP32" or not fits:
            raise _bad(f"input '{tensor.name}' | got {tensor.datatype} {tensor.shape} | send FP32 "
                       f"[{', '.join(map(str, want))}], preprocessed as the model expects")
        if not np.isfinite(tensor.data).all():
            raise _bad(f"input '{tensor.name}' | holds NaN or infinity | send finite preprocessed values")
        return tensor.data

    def _check_output(self, output: dict[str, Any]) -> None:
        name = output["name"]
        if name != PROBABILITIES and name not in TOPK_OUTPUTS:
            raise _bad(f"output '{name}' | unknown | the outputs are {', '.join([PROBABILITIES, *TOPK_OUTPUTS])}")
        classification = output["parameters"].get("classification")
        if classification is not None:
            if name != PROBABILITIES:
                raise _bad(f"output '{name}' | the classification parameter applies to '{PROBABILITIES}' only")
            self._topk(classification, "classification")

    def _topk(self, value: Any, what: str = "topk") -> int:
        if value is None:
            return self.default_topk
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= self.max_topk:
            raise _bad(f"parameter {what}={value!r} | out of range | use an integer from 1 to {self.max_topk}")
        return value

    async def infer(self, parse: Callable[[], Awaitable[InferRequest]]) -> tuple[_Plan, list[Tensor]]:
        """Run one request whichever the transport: ``parse()`` receives and parses it (a :class:`TensorError`
        becomes 400), then :meth:`plan`, the batcher (:func:`infer_rows`) and :meth:`answer`."""
        state = self.state

        async def read() -> _Plan:
            try:
                parsed = await parse()
            except TensorError as exc:
                raise _bad(f"request | {exc}") from None
            return self.plan(parsed, state.settings)

        async def prepare(plan: _Plan) -> list[np.ndarray]:
            if plan.images is not None:
                return await preprocess_uploads(plan.images, state)
            return list(plan.tensor)

        plan, rows = await infer_rows(state, read, prepare)
        state.metrics.images.inc(len(rows))
        return plan, self.answer(plan, np.stack(rows))

    def answer(self, plan: _Plan, probs: np.ndarray) -> list[Tensor]:
        """The requested outputs, in the order asked."""
        from ppdeploy.postprocess import top_k

        records = {}

        def ranked(k: int) -> list[dict]:
            if k not in records:
                records[k] = top_k(probs, k)
            return records[k]

        tensors = []
        for output in plan.outputs:
            name, k = output["name"], output["parameters"].get("classification")
            if name == PROBABILITIES and k is not None:
                tensors.append(Tensor(name, "BYTES", _classification(ranked(k), probs)))
            elif name == PROBABILITIES:
                tensors.append(Tensor(name, "FP32", probs.astype(np.float32, copy=False)))
            elif name == "topk_ids":
                tensors.append(Tensor(name, "INT64", np.array([r["class_ids"] for r in ranked(plan.topk)], np.int64)))
            elif name == "topk_scores":
                ids = np.array([r["class_ids"] for r in ranked(plan.topk)])
                tensors.append(Tensor(name, "FP32", np.take_along_axis(probs, ids, axis=1).astype(np.float32)))
            else:
                labels = [r["label_names"] or [""] * len(r["class_ids"]) for r in ranked(plan.topk)]
                tensors.append(Tensor(name, "BYTES", np.array(labels, dtype=object)))
        return tensors


def _classification(records: list[dict], probs: np.ndarray) -> np.ndarray:
    """Triton's classification extension: ``"score:index:label"`` per class, best first."""
    rows = []
    for row, record in zip(probs, records):
        labels = record["label_names"] or [None] * len(record["class_ids"])
        rows.append([f"{row[i]:f}:{i}" + (f":{label}" if label else "") for i, label in zip(record["class_ids"],
                                                                                             labels)])
    return np.array(rows, dtype=object)


def _bad(detail: str) -> Refusal:
    return Refusal(400, "bad_request", detail)


def _problem(refusal: Refusal) -> JSONResponse:
    return JSONResponse({"error": refusal.detail}, status_code=refusal.status, headers=refusal.headers())


def _header_length(request: Any) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise _bad(f"header {HEADER_LENGTH}: {value!r} | not a byte count | send the JSON part's length")
    return int(value)


def add_v2_routes(app: Any, state: Any) -> None:
    """Register the Open Inference Protocol endpoints on ``app`` (the state is the app's ``app.state.serving``)."""
    interface = ModelInterface(state)

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        """Server metadata."""
        return {"name": "ppdeploy", "version": app.version, "extensions": EXTENSIONS}

    async def live() -> dict[str, bool]:
        """Liveness."""
        return {"live": True}

    async def ready() -> Response:
        """Readiness: the model is loaded and the batch workers run."""
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    add_get_and_head(app, "/v2/health/live", live, tags=["v2"])
    add_get_and_head(app, "/v2/health/ready", ready, tags=["v2"])

    async def model_metadata(name: str, version: str | None = None) -> Response:
        try:
            interface.check_model(name, version)
        except Refusal as refusal:
            return _problem(refusal)
        return JSONResponse(interface.metadata())

    async def model_ready(name: str, version: str | None = None) -> Response:
        try:
            interface.check_model(name, version)
        except Refusal as refusal:
            return _problem(refusal)
        return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        return await answered(request, state, lambda: _infer(request, state, interface, name, version), _problem,
                              "POST /v2/models/{name}/infer")

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"], tags=["v2"], summary="Model metadata")
        add_get_and_head(app, f"{prefix}/ready", model_ready, tags=["v2"], summary="Model readiness")
        app.add_api_route(f"{prefix}/infer", infer, methods=["POST"], tags=["v2"], summary="Inference")


async def _infer(request: Request, state: Any, interface: ModelInterface, name: str, version: str | None) -> Response:
    interface.check_model(name, version)
    header_length = _header_length(request)

    async def parse() -> InferRequest:
        body = await read_body(request, state.settings)
        return await asyncio.to_thread(parse_infer_request, body, header_length)

    plan, outputs = await interface.infer(parse)
    header = {"model_name": interface.name, "model_version": VERSION}
    if plan.request.id is not None:
        header["id"] = plan.request.id
    body, json_length = encode_tensors(header, "outputs", outputs, plan.binary)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})
