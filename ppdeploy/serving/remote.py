"""A running server seen as a runtime: ``deploy parity --server URL`` sends the judge batches through the Open
Inference Protocol (KServe v2, binary tensor data) and judges the answers like any backend's.

It speaks to ``deploy serve`` (``/readyz`` says which backend and precision run there); any other KServe v2 server
works too when the backend label is given (then its outputs are judged by that label's profile).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppdeploy.errors import DeployError, one_line
from ppdeploy.serving.tensors import HEADER_LENGTH, Tensor, decode_tensors, encode_tensors

OUTPUT = "probabilities"


class RemoteRuntime:
    """``infer(batch)`` over HTTP: one v2 request per batch (FP32 ``[N,3,H,W]`` in, probabilities out)."""

    name = "server"

    def __init__(self, url: str, *, backend: str | None = None, timeout_s: float = 120.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)
        try:
            ready = self._client.get("/v2/health/ready")
        except httpx.HTTPError as exc:
            raise DeployError(one_line(f"--server {url}", f"cannot be reached ({type(exc).__name__})",
                                       "start it ('deploy serve MODEL ...') or check the address")) from None
        if ready.status_code != 200:
            raise DeployError(one_line(f"--server {url}", f"is not ready (HTTP {ready.status_code})",
                                       "wait until GET /v2/health/ready answers 200"))
        about = self._about()
        self.model = about.get("model") or self._only_model()
        self.backend = backend or about.get("backend")
        if not self.backend:
            raise DeployError(one_line(f"--server {url}", "does not say which backend it runs",
                                       "give it: --server-backend openvino-int8 (or the target it serves)"))
        metadata = self._client.get(f"/v2/models/{self.model}").json()
        fp32 = [spec["name"] for spec in metadata.get("inputs", []) if spec.get("datatype") == "FP32"]
        if not fp32:
            raise DeployError(one_line(f"--server {url}", f"model '{self.model}' takes no FP32 input",
                                       "serve a model whose metadata lists its preprocessed FP32 input"))
        self.input_name = fp32[0]
        details = (about.get("details") or [{}])[0]
        self.details = {**{k: str(v) for k, v in details.items()}, "server": self.url, "model": self.model}

    def _about(self) -> dict[str, Any]:
        answer = self._client.get("/readyz")
        return answer.json() if answer.status_code == 200 else {}

    def _only_model(self) -> str:
        raise DeployError(one_line(f"--server {self.url}", "is not a 'deploy serve' server (no /readyz)",
                                   "give the model name and backend of what it serves"))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        body, header_length = encode_tensors(
            {"outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}]}, "inputs",
            [Tensor(self.input_name, "FP32", np.ascontiguousarray(batch, dtype=np.float32))], {self.input_name})
        answer = self._client.post(f"/v2/models/{self.model}/infer", content=body,
                                   headers={HEADER_LENGTH: str(header_length),
                                            "Content-Type": "application/octet-stream"})
        if answer.status_code != 200:
            raise DeployError(one_line(f"--server {self.url}", f"answered HTTP {answer.status_code}: "
                                       f"{answer.text[:200]}", "see the server's log"))
        length = answer.headers.get(HEADER_LENGTH)
        _, tensors = decode_tensors(answer.content, int(length) if length else None)
        return np.asarray(tensors[OUTPUT], dtype=np.float32)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
