"""The Runtime contract every backend implements; each runtime module registers a ``Backend`` record for it
(``ppdeploy.registry``)."""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ppdeploy.errors import BackendUnavailableError, InputSpecError, one_line
from ppdeploy.registry import MODES, Backend, get_backend

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic dim) and numpy dtype name of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def check(self, array: np.ndarray) -> None:
        """Raise ``InputSpecError`` unless ``array`` fits this spec."""
        import numpy as np

        fits = array.ndim == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, array.shape))
        if not fits or array.dtype != np.dtype(self.dtype):
            want = "(" + ", ".join("N" if d is None else str(d) for d in self.shape) + ")"
            raise InputSpecError(one_line(f"input '{self.name}'", f"got {array.dtype} shape {tuple(array.shape)}",
                                          f"expected {self.dtype} {want}"))


Lane = Callable[["np.ndarray"], "np.ndarray"]


class Runtime:
    """Loads one artifact directory and runs batches on it.

    Subclasses set ``name`` (their ``Backend`` record's name: packages, extra and devices are declared there)
    and implement ``_load`` and ``_infer``. Use as a context manager, or call ``close()``.

    Two modes. ``latency`` (default): one request at a time, every core on it. ``throughput``: several requests
    in flight (``requests``; default: the backend's choice), each on its share of the cores, used by
    :meth:`infer_stream`; a backend builds them in ``_load`` as ``self._lanes`` (callables, one per request, each
    used by one thread at a time) or overrides ``infer_stream`` (OpenVINO's AsyncInferQueue).
    """

    name: ClassVar[str] = ""

    def __init__(self, artifact_dir: str | Path, *, device: str = "cpu", threads: int | None = None,
                 mode: str = "latency", requests: int | None = None) -> None:
        ok, reason = self.availability()
        if not ok:
            raise BackendUnavailableError(one_line(f"backend '{self.name}'", reason))
        devices = self.record().devices
        if device not in devices:
            raise BackendUnavailableError(one_line(f"backend '{self.name}'", f"no device '{device}'",
                                                   "choose one of: " + ", ".join(devices)))
        if mode not in MODES:
            raise InputSpecError(one_line(f"mode '{mode}'", "unknown", "choose latency or throughput"))
        if requests is not None and requests < 1:
            raise InputSpecError(one_line(f"requests {requests}", "must be at least 1"))
        self.artifact_dir = Path(artifact_dir)
        self.device = device
        self.threads = threads
        self.mode = mode
        self.requests = 1 if mode == "latency" else requests  # None: _load picks and sets it
        self._lanes: list[Lane] = []
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.details: dict[str, str] = {}  # what really runs (provider, precision, ...) for reports
        self._load()
        if self.requests is None:  # a backend without a throughput mode of its own runs one request at a time
            self.requests = max(1, len(self._lanes))
        # Throughput mode: each lane runs on a thread of its own, always the same one (Paddle's oneDNN predictors
        # failed with "std::exception" when one predictor was run from changing threads); free lanes wait here.
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix=f"ppdeploy-{self.name}-lane") for _ in self._lanes]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for lane, thread in zip(self._lanes, self._threads):
            self._free.put((lane, thread))
        self.details.setdefault("mode", mode if mode == "latency" else f"throughput ({self.requests} in flight)")

    @classmethod
    def record(cls) -> Backend:
        """This backend's registry record."""
        return get_backend(cls.name)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(available, reason) without importing the backend."""
        return cls.record().availability()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one float32 NCHW batch and return the model's first output (probabilities).

        In throughput mode it is safe to call from several threads at once: each call takes a free lane.
        """
        batch = self.infer_checked(batch)
        return self._on_free_lane(batch) if self._lanes else self._infer(batch)

    def _on_free_lane(self, batch: np.ndarray) -> np.ndarray:
        lane, thread = self._free.get()
        try:
            return thread.submit(lane, batch).result()
        finally:
            self._free.put((lane, thread))

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch's output, in order. In throughput mode up to ``requests`` batches run at once (the
        iterable is read ahead by about twice that); in latency mode one at a time, as :meth:`infer`."""
        if len(self._lanes) < 2:
            for batch in batches:
                yield self.infer(batch)
            return
        yield from run_in_lanes(self._on_free_lane, len(self._lanes), batches, self.infer_checked)

    def infer_checked(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` checked against the input spec and made contiguous (what every lane is given)."""
        import numpy as np

        if not self.inputs:
            raise InputSpecError(one_line(f"backend '{self.name}'", "runtime is closed"))
        self.inputs[0].check(batch)
        return np.ascontiguousarray(batch)

    def lane_plan(self) -> tuple[int, int | None]:
        """Throughput mode: (requests in flight, threads each). Default: one request per core up to 4, the cores
        shared evenly; latency mode: (1, ``threads``)."""
        if self.mode == "latency":
            return 1, self.threads
        cores = self.threads or os.cpu_count() or 1
        lanes = self.requests or max(1, min(cores, 4))
        return lanes, max(1, cores // lanes)

    def close(self) -> None:
        """Release the backend's resources; the runtime cannot be used afterwards."""
        for thread in getattr(self, "_threads", ()):
            thread.shutdown(wait=True)
        self._lanes, self._threads = [], []
        self.inputs = ()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def run_in_lanes(run: Lane, lanes: int, batches: Iterable[np.ndarray],
                 prepare: Callable[[np.ndarray], np.ndarray]) -> Iterator[np.ndarray]:
    """``run`` (thread-safe, ``lanes`` calls at once) over ``batches`` from ``lanes`` threads, yielding the
    outputs in input order; at most ``2 × lanes`` batches are read ahead."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="ppdeploy-lane") as pool:
        try:
            for batch in batches:
                pending.append(pool.submit(run, prepare(batch)))
                if len(pending) >= 2 * lanes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


_SAME = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # artifact precision → the compute type that is no change


def runs_as(details: dict[str, str], *, full: bool = False) -> str:
    """What a runtime computes in, for reports, from its ``details``.

    ``fp32``; ``fp16 weights, f32 compute`` (decompressed on a CPU without native fp16); ``fp32 weights, bf16
    compute``; ``int8 (f32 for unquantized layers)``. ``full`` adds the provider and oneDNN (bench tables).
    """
    precision, compute = details.get("precision", "?"), details.get("inference_precision")
    if precision == "int8":
        text = "int8" + (f" ({compute} for unquantized layers)" if compute and compute != "int8" else "")
    elif compute and compute != _SAME.get(precision):
        text = f"{precision} weights, {compute} compute"
    else:
        text = precision
    parts = [text]
    if full and details.get("provider"):
        parts.append(details["provider"].removesuffix("ExecutionProvider"))
    if full and details.get("onednn") == "on":
        parts.append("oneDNN")
    return ", ".join(parts)
