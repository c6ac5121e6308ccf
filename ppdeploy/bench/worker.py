"""The child process each backend runs in, and the parent's handle on it: one command at a time over a pipe."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.errors import BackendUnavailableError, DeployError, one_line

CALL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a child process needs to load one row's runtime (and, for e2e, build its Classifier)."""

    label: str
    backend: str
    choice: str
    artifact_dir: str
    device: str
    threads: int
    options: dict[str, Any]
    model: str
    synthetic: bool
    fmt: str
    fast_decode: bool = False


class Worker:
    """A child process holding one backend's runtime; the parent sends it one command at a time."""

    def __init__(self, spec: WorkerSpec, timeout: float = CALL_TIMEOUT_S) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a process that has loaded Paddle's threads
        self.spec = spec
        self.timeout = timeout
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=worker_main, args=(child_conn, spec), daemon=True,
                                        name=f"bench-{spec.label}")
        self._process.start()
        child_conn.close()
        try:
            self.ready = self._reply()
        except DeployError:
            self.close()
            raise

    def call(self, command: str, **kwargs: Any) -> Any:
        """Run ``command`` in the child and return its answer; a failure there raises ``DeployError`` here."""
        self._conn.send((command, kwargs))
        return self._reply()

    def _reply(self) -> Any:
        if not self._conn.poll(self.timeout):
            self.close()
            raise DeployError(one_line(f"bench worker '{self.spec.label}'", f"no answer within {self.timeout:.0f} s",
                                       "rerun with fewer --iters, or check the backend on its own"))
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise DeployError(one_line(f"bench worker '{self.spec.label}'", "the child process died "
                                       f"(exit code {self._process.exitcode})", "run the backend with 'deploy run' "
                                       "to see its error")) from None
        if status == "error" and payload.startswith("unavailable:"):
            raise BackendUnavailableError(payload.removeprefix("unavailable:"))
        if status == "error":
            raise DeployError(payload)
        return payload

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(("stop", {}))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()


def worker_main(conn: Any, spec: WorkerSpec) -> None:
    """Child process entry point: load the runtime (timed), then answer commands until ``stop``.

    The child talks over the pipe only: its stdout goes to stderr, so what a backend library prints on load (MNN's
    banner) never lands in the parent's report on stdout.
    """
    sys.stdout.flush()
    os.dup2(2, 1)
    state = _ChildState(spec)
    try:
        conn.send(("ok", state.load()))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as one line
        conn.send(("error", _describe(exc)))
        return
    while True:
        try:
            command, kwargs = conn.recv()
        except EOFError:
            return
        if command == "stop":
            state.close()
            return
        try:
            conn.send(("ok", getattr(state, f"cmd_{command}")(**kwargs)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", _describe(exc)))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BackendUnavailableError):
        return "unavailable:" + str(exc)
    if isinstance(exc, DeployError):
        return str(exc)
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class _ChildState:
    """What lives in one child: the runtime, the current input batch, and (for e2e) a Classifier."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.runtime: Any = None
        self.streamed: Any = None
        self.batch: np.ndarray | None = None
        self.classifier: Any = None

    def load(self) -> dict[str, Any]:
        import importlib

        from ppdeploy.registry import get_backend

        record = get_backend(self.spec.backend)
        for module in record.imports:  # import cost is not load cost
            importlib.import_module(module)
        baseline = peak_rss_mb()
        started = time.perf_counter()
        self.runtime = self._runtime()
        seconds = time.perf_counter() - started
        return {"load_seconds": seconds, "baseline_rss_mb": baseline, "details": dict(self.runtime.details)}

    def _runtime(self, mode: str = "latency") -> Any:
        from ppdeploy.registry import get_backend

        return get_backend(self.spec.backend).runtime(self.spec.artifact_dir, device=self.spec.device,
                                                      threads=self.spec.threads, mode=mode, **self.spec.options)

    def cmd_set_input(self, batch: np.ndarray) -> None:
        self.batch = np.ascontiguousarray(batch)

    def cmd_time(self, calls: int, untimed: int = 0) -> list[float]:
        for _ in range(untimed):
            self.runtime.infer(self.batch)
        return time_calls(self.runtime.infer, self.batch, calls)

    def cmd_throughput(self, calls: int, untimed: int = 0) -> dict[str, Any]:
        """Throughput mode: a second runtime with several requests in flight (loaded, timed over ``calls``
        batches of the current input, closed); its seconds, its requests in flight and what it ran as."""
        runtime = self._streamed()
        for _ in runtime.infer_stream(self.batch for _ in range(untimed or 2 * runtime.requests)):
            pass
        started = time.perf_counter()
        for _ in runtime.infer_stream(self.batch for _ in range(calls)):
            pass
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "calls": calls, "requests": runtime.requests,
                "mode": runtime.details.get("mode", "")}

    def _streamed(self) -> Any:
        """This row's throughput-mode runtime (a second instance, loaded once)."""
        if self.streamed is None:
            self.streamed = self._runtime(mode="throughput")
        return self.streamed

    def cmd_peak_rss(self) -> float:
        return peak_rss_mb()

    def cmd_overhead(self, calls: int, block: int = 10) -> dict[str, Any]:
        from ppdeploy.registry import get_backend

        raw_call = get_backend(self.spec.backend).raw_call
        raw_api, raw_infer = raw_call(self.runtime, self.spec.artifact_dir, self.spec.threads)
        batch = self.batch[:1]
        wrapped: list[float] = []
        raw: list[float] = []
        for _ in range(2):
            self.runtime.infer(batch)
            raw_infer(batch)
        for _ in range(max(1, calls // block)):
            wrapped += time_calls(self.runtime.infer, batch, block)
            raw += time_calls(raw_infer, batch, block)
        return {"wrapper_ms": statistics.median(wrapped), "raw_ms": statistics.median(raw), "raw_api": raw_api}

    def cmd_e2e(self, folder: str, batch_size: int, mode: str = "latency") -> dict[str, Any]:
        from ppdeploy.images import list_images

        classifier = self._classifier()
        classifier.runtime = self._streamed() if mode == "throughput" else self.runtime
        files = [str(p) for p in list_images(folder)]
        cpu, started = _cpu_seconds(), time.perf_counter()
        names = [record["filename"] for batch in classifier.predict(folder, batch_size=batch_size) for record in batch]
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images": len(files), "ordered": names == files,
                "cpu_seconds": _cpu_seconds() - cpu}

    def cmd_stages(self, folder: str, batch_size: int) -> dict[str, float]:
        """Seconds per stage over the folder, one image at a time on one thread (reading, decoding, PaddleClas
        preprocessing) and batch by batch (inference, top-k): where an image's time goes."""
        from ppdeploy.images import decode_image_bytes, list_images
        from ppdeploy.postprocess import top_k
        from ppdeploy.preprocess import preprocess

        cfg, reduce_to = self._classifier().preprocess, self._classifier().reduce_to
        stages = dict.fromkeys(("read", "decode", "preprocess", "infer", "post"), 0.0)
        files = list_images(folder)
        for start in range(0, len(files), batch_size):
            tensors = []
            for path in files[start:start + batch_size]:
                tick = time.perf_counter()
                data = Path(path).read_bytes()
                stages["read"] += (tock := time.perf_counter()) - tick
                image = decode_image_bytes(data, str(path), reduce_to=reduce_to)
                stages["decode"] += (tick := time.perf_counter()) - tock
                tensors.append(preprocess(image, cfg))
                stages["preprocess"] += time.perf_counter() - tick
            tick = time.perf_counter()
            probs = self.runtime.infer(np.stack(tensors))
            stages["infer"] += (tock := time.perf_counter()) - tick
            top_k(probs, 5)
            stages["post"] += time.perf_counter() - tock
        return {**stages, "images": len(files)}

    def cmd_serial(self, folder: str, batch_size: int) -> dict[str, Any]:
        from ppdeploy.images import list_images

        files = list_images(folder)
        cfg = self._classifier().preprocess
        started = time.perf_counter()
        names = paddleclas_serial_loop(self.runtime, files, cfg, batch_size)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images": len(files), "ordered": names == [str(p) for p in files]}

    def _classifier(self) -> Any:
        """A Classifier for this row that runs on this child's runtime (bench-only options included)."""
        if self.classifier is None:
            from ppdeploy.classifier import Classifier
            from ppdeploy.models.resolve import warn_synthetic

            with contextlib.redirect_stderr(io.StringIO()):
                warn_synthetic()  # the parent has warned already
            self.classifier = Classifier(self.spec.model, self.spec.choice, synthetic=self.spec.synthetic,
                                         fmt=self.spec.fmt, device=self.spec.device, threads=self.spec.threads,
                                         fast_decode=self.spec.fast_decode)
            self.classifier.runtime.close()  # one loaded model per child: use the one that was timed
            self.classifier.runtime = self.runtime
        return self.classifier

    def close(self) -> None:
        for runtime in (self.runtime, self.streamed):
            if runtime is not None:
                runtime.close()


def _cpu_seconds() -> float:
    """This process's user + system CPU time so far (all threads)."""
    import os

    times = os.times()
    return times.user + times.system


def time_calls(infer: Callable[[np.ndarray], Any], batch: np.ndarray, calls: int) -> list[float]:
    """Milliseconds of ``calls`` consecutive ``infer(batch)`` calls."""
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        infer(batch)
        latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux: ``VmHWM``, which starts afresh at ``exec``; ``ru_maxrss`` would carry over the parent's peak into a
    spawned child.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import resource
    except ImportError:  # Windows: psutil reports the peak working set there
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def paddleclas_serial_loop(runtime: Any, files: Sequence[Path], cfg: Any, batch_size: int, topk: int = 5) -> list[str]:
    """PaddleClas ``deploy/python/predict_cls.py`` style: decode → preprocess → infer → top-k, batch after batch.

    Returns:
        The filenames of the records, in output order.
    """
    from ppdeploy.images import decode_image
    from ppdeploy.postprocess import top_k
    from ppdeploy.preprocess import preprocess_batch

    names: list[str] = []
    for start in range(0, len(files), batch_size):
        chunk = [str(p) for p in files[start:start + batch_size]]
        probs = runtime.infer(preprocess_batch([decode_image(p) for p in chunk], cfg))
        names += [record["filename"] for record in top_k(probs, topk, filenames=chunk)]
    return names
