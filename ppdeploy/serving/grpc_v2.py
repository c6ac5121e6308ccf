"""The Open Inference Protocol (KServe v2) over gRPC: ``inference.GRPCInferenceService``, as Triton, OVMS and KServe
serve it, so that ``tritonclient.grpc`` works against ``deploy serve --grpc-port``.

Transport only: the model's inputs, outputs, validation and answers are :class:`~ppdeploy.serving.v2.ModelInterface`'s,
the same as over REST (read :mod:`ppdeploy.serving.v2`). Implemented: ``ServerLive``, ``ServerReady``, ``ModelReady``,
``ServerMetadata``, ``ModelMetadata`` and ``ModelInfer``; every other method answers ``UNIMPLEMENTED``.

``ModelInfer`` takes inputs as ``raw_input_contents`` (what ``tritonclient.grpc`` sends: little-endian arrays,
BYTES elements each behind a 4-byte little-endian length) or as typed ``contents`` (``fp32_contents``,
``bytes_contents``, ...), and answers ``raw_output_contents`` in the order of its outputs. The request parameter
``topk`` and the output parameter ``classification`` are ``int64_param``. A refusal's HTTP status maps to a gRPC
code (400 INVALID_ARGUMENT, 404 NOT_FOUND, 408 DEADLINE_EXCEEDED, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE,
else INTERNAL) with its one-line detail as the message. Messages are capped at ``max_request_bytes``.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from ppdeploy.errors import DeployError, one_line
from ppdeploy.serving.handling import ARRIVAL, Refusal, answered
from ppdeploy.serving.tensors import (
    InferRequest,
    Tensor,
    TensorError,
    check_spec,
    from_binary,
    from_values,
    to_binary,
)
from ppdeploy.serving.v2 import EXTENSIONS, VERSION, ModelInterface

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         503: grpc.StatusCode.UNAVAILABLE}
# Which typed ``contents`` field holds each datatype (FP16 has none: send it raw).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over the app's state (``app.state.serving``)."""

    def __init__(self, state: Any, version: str) -> None:
        self.state, self.version = state, version
        self.interface = ModelInterface(state)

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's method names
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(name="ppdeploy", version=self.version, extensions=EXTENSIONS)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:  # as Triton: a model it does not serve is not ready (tritonclient's is_model_ready says False)
            self.interface.check_model(request.name, request.version)
        except Refusal:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.state.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            self.interface.check_model(request.name, request.version)
        except Refusal as refusal:
            await context.abort(CODES[refusal.status], refusal.detail)
        meta = self.interface.metadata()
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in meta[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        **tensors)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        arrival = SimpleNamespace(scope={ARRIVAL: time.perf_counter()})
        outcome = await answered(arrival, self.state, lambda: self._infer(request), lambda refusal: refusal,
                                 "grpc ModelInfer")
        if isinstance(outcome, Refusal):
            await context.abort(CODES.get(outcome.status, grpc.StatusCode.INTERNAL), outcome.detail)
        return outcome

    async def _infer(self, request: Any) -> Any:
        self.interface.check_model(request.model_name, request.model_version)
        _, outputs = await self.interface.infer(lambda: asyncio.to_thread(infer_request, request))
        response = pb.ModelInferResponse(model_name=self.interface.name, model_version=VERSION, id=request.id)
        for tensor in outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(to_binary(tensor))
        return response


def infer_request(request: Any) -> InferRequest:
    """A ``ModelInferRequest`` as the protocol-neutral :class:`InferRequest` (:class:`TensorError` if malformed)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
    inputs = []
    for index, spec in enumerate(request.inputs):
        name, datatype, shape = spec.name, spec.datatype, list(spec.shape)
        check_spec(name, datatype, shape)
        if raw:
            data = from_binary(name, datatype, shape, raw[index])
        elif datatype in CONTENTS:
            data = from_values(name, datatype, shape, getattr(spec.contents, CONTENTS[datatype]))
        else:
            raise TensorError(f"input '{name}': {datatype} has no typed contents | send it in raw_input_contents")
        inputs.append(Tensor(name, datatype, data, _parameters(spec.parameters)))
    outputs = [{"name": output.name, "parameters": _parameters(output.parameters)} for output in request.outputs]
    return InferRequest(request.id or None, inputs, outputs, _parameters(request.parameters))


def _parameters(parameters: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in parameters.items()}


async def start_grpc(state: Any, version: str) -> tuple[Any, int]:
    """Start ``grpc.aio`` on ``settings.host:settings.grpc_port`` in the running event loop; (server, bound port)."""
    settings = state.settings
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", settings.max_request_bytes),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state, version), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        port, why = server.add_insecure_port(f"{host}:{settings.grpc_port}"), "port in use?"
    except RuntimeError as exc:
        port, why = 0, str(exc)
    if not port:
        raise DeployError(one_line(f"gRPC address {host}:{settings.grpc_port}", f"cannot listen ({why})",
                                   "choose another --grpc-port, or stop the server using it"))
    await server.start()
    return server, port
