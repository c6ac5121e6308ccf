"""A bounded load test for ``deploy serve``: requests/s and latency percentiles at several concurrency levels.

Run against a server already started::

    python -m ppdeploy.serving.loadtest --url http://127.0.0.1:8000 --requests 200 --concurrency 1,8,32
    python -m ppdeploy.serving.loadtest --protocol v2 ...   # the same through the Open Inference Protocol
    python -m ppdeploy.serving.loadtest --protocol grpc --grpc-address 127.0.0.1:8001 ...   # ... over gRPC

Each request posts one JPEG (your ``--image`` files, or sample photos): as a raw body to ``/v1/classify``, or with
``--protocol v2`` as a BYTES input in Triton's binary tensor data format to ``/v2/models/{model}/infer``, asking
for the ``topk_ids`` and ``topk_scores`` outputs (JSON and binary), or with ``--protocol grpc`` the same input
and outputs in a gRPC ``ModelInfer`` (``deploy serve --grpc-port``). Every answer is checked
against the answer the same image got when sent alone before the run, and the server's ``/metrics`` are read
before and after each level to report the batch sizes it really formed. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LevelResult:
    """The figures of one concurrency level."""

    concurrency: int
    requests: int
    failed: int
    mismatched: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_batch: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def sample_jpegs(count: int = 8) -> list[bytes]:
    """JPEG bytes of the built-in sample photos."""
    import cv2

    from ppdeploy.samples import sample_images

    return [cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes() for img in sample_images(count)]


class _Protocol:
    """How one image is sent and its answer read: ``v1`` (``/v1/classify``), ``v2`` (Open Inference Protocol) or
    ``grpc`` (the same protocol over gRPC, at ``grpc_address``)."""

    def __init__(self, name: str, model: str, topk: int, grpc_address: str | None = None) -> None:
        if name not in ("v1", "v2", "grpc"):
            raise ValueError(f"protocol {name!r}: use v1, v2 or grpc")
        if name == "grpc" and not grpc_address:
            raise ValueError("protocol grpc: give the server's gRPC address (HOST:PORT)")
        self.name, self.model, self.topk = name, model, topk
        self.channel = self.stub = None
        if name == "grpc":
            import grpc
            from tritonclient.grpc import service_pb2_grpc

            self.channel = grpc.aio.insecure_channel(grpc_address)
            self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def classify(self, client, image: bytes) -> tuple[int, list | None]:
        """(HTTP status, the answer's class ids and 5-decimal scores) for one image."""
        if self.name == "v1":
            answer = await client.post("/v1/classify", content=image, params={"topk": self.topk})
            return answer.status_code, _scores(answer.json()) if answer.status_code == 200 else None
        if self.name == "grpc":
            return await self._classify_grpc(image)
        from ppdeploy.serving.tensors import HEADER_LENGTH, Tensor, decode_tensors, encode_tensors

        header = {"parameters": {"topk": self.topk},
                  "outputs": [{"name": "topk_ids"}, {"name": "topk_scores", "parameters": {"binary_data": True}}]}
        body, length = encode_tensors(header, "inputs", [Tensor("image", "BYTES", np.array([image], object))],
                                      {"image"})
        answer = await client.post(f"/v2/models/{self.model}/infer", content=body,
                                   headers={HEADER_LENGTH: str(length)})
        if answer.status_code != 200:
            return answer.status_code, None
        length = answer.headers.get(HEADER_LENGTH)
        _, outputs = decode_tensors(answer.content, int(length) if length else None)
        return 200, _ranked(outputs)

    async def _classify_grpc(self, image: bytes) -> tuple[int, list | None]:
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        from ppdeploy.serving.grpc_v2 import CODES
        from ppdeploy.serving.tensors import from_binary, serialize_bytes

        request = pb.ModelInferRequest(
            model_name=self.model, raw_input_contents=[serialize_bytes([image])],
            inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in ("topk_ids", "topk_scores")])
        request.parameters["topk"].int64_param = self.topk
        try:
            answer = await self.stub.ModelInfer(request)
        except grpc.aio.AioRpcError as exc:  # reported as the HTTP status the server refused with
            return next((status for status, code in CODES.items() if code == exc.code()), 500), None
        return 200, _ranked({out.name: from_binary(out.name, out.datatype, list(out.shape), raw)
                             for out, raw in zip(answer.outputs, answer.raw_output_contents)})


def _ranked(outputs: dict[str, np.ndarray]) -> list:
    """(class ids, 5-decimal scores) per row of Open Inference Protocol ``topk_ids`` and ``topk_scores``."""
    scores = np.round(outputs["topk_scores"].astype(np.float64), 5)
    return [(ids.tolist(), row.tolist()) for ids, row in zip(outputs["topk_ids"], scores)]


async def run_level(client, images: list[bytes], expected: list[list], concurrency: int, requests: int,
                    protocol: _Protocol) -> LevelResult:
    """Send ``requests`` requests with ``concurrency`` in flight at any time."""
    latencies: list[float] = []
    counters = {"next": 0, "failed": 0, "mismatched": 0}
    batches_before = await _batch_totals(client)

    async def one_client() -> None:
        while counters["next"] < requests:
            index = counters["next"] % len(images)
            counters["next"] += 1
            tick = time.perf_counter()
            status, answer = await protocol.classify(client, images[index])
            latencies.append(time.perf_counter() - tick)
            if status != 200:
                counters["failed"] += 1
            elif answer != expected[index]:
                counters["mismatched"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    images_done, batches_done = (after - before for after, before in zip(await _batch_totals(client),
                                                                         batches_before))
    millis = np.asarray(latencies) * 1000
    return LevelResult(concurrency, requests, counters["failed"], counters["mismatched"], seconds,
                       float(np.percentile(millis, 50)), float(np.percentile(millis, 99)),
                       images_done / batches_done if batches_done else 0.0)


def _scores(records: list[dict]) -> list:
    return [(r["class_ids"], r["scores"]) for r in records]


async def _batch_totals(client) -> tuple[float, float]:
    """(images, batches) the server has run so far, from ``ppdeploy_batch_size``."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"ppdeploy_batch_size_sum": 0.0, "ppdeploy_batch_size_count": 0.0}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] = sample.value
    return totals["ppdeploy_batch_size_sum"], totals["ppdeploy_batch_size_count"]


async def load_test(url: str, images: list[bytes], levels: list[int], requests: int, topk: int = 5,
                    warmup: int = 10, protocol: str = "v1", grpc_address: str | None = None
                    ) -> tuple[dict, list[LevelResult]]:
    """Warm up, take each image's answer alone, then run every level. Returns ``/readyz`` and the results.

    ``protocol``: ``v1`` (``/v1/classify``), ``v2`` (the Open Inference Protocol's ``infer``) or ``grpc`` (its
    ``ModelInfer`` at ``grpc_address``, ``HOST:PORT``; ``/readyz`` and ``/metrics`` are still read at ``url``).
    """
    import httpx

    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        ready = (await client.get("/readyz")).json()
        sender = _Protocol(protocol, ready.get("model", ""), topk, grpc_address)
        try:
            expected = []
            for data in images:
                status, answer = await sender.classify(client, data)
                if status != 200:
                    raise RuntimeError(f"{url}: an image alone got HTTP {status}")
                expected.append(answer)
            for index in range(warmup):
                await sender.classify(client, images[index % len(images)])
            results = [await run_level(client, images, expected, level, requests, sender) for level in levels]
        finally:
            await sender.close()
    ready["protocol"] = protocol
    return ready, results


def render(ready: dict, results: list[LevelResult]) -> str:
    title = (f"{ready.get('protocol', 'v1')}: model {ready.get('model')} on {ready.get('backend')} "
             f"({ready.get('precision')}), max batch "
             f"{ready.get('max_batch')}, max delay {ready.get('max_delay_ms')} ms, {ready.get('workers')} worker(s)")
    lines = [title, "",
             "| concurrency | requests | failed | differing | requests/s | p50 (ms) | p99 (ms) | mean batch |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.concurrency} | {r.requests} | {r.failed} | {r.mismatched} | {r.rps:.1f} | {r.p50_ms:.1f} | "
              f"{r.p99_ms:.1f} | {r.mean_batch:.2f} |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", action="append", type=Path, help="JPEG/PNG to send (repeatable; default: "
                        "8 sample photos)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma list of levels")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--protocol", choices=("v1", "v2", "grpc"), default="v1", help="v1: POST /v1/classify; "
                        "v2: the Open Inference Protocol (BYTES input, binary tensor data); grpc: the same over gRPC")
    parser.add_argument("--grpc-address", help="--protocol grpc: the server's gRPC HOST:PORT (deploy serve "
                        "--grpc-port)")
    args = parser.parse_args(argv)
    images = [path.read_bytes() for path in args.image] if args.image else sample_jpegs()
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    ready, results = asyncio.run(load_test(args.url, images, levels, args.requests, args.topk, args.warmup,
                                           args.protocol, args.grpc_address))
    print(render(ready, results))
    return 1 if any(r.failed or r.mismatched for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
