"""The ceiling: the dense-compute rate this machine achieves per precision, through the backends themselves.

A model's row is judged against it as ``model GMACs x images/s / peak GMAC/s`` (:func:`ceiling_fraction`). The
peak is measured, not taken from a data sheet: a chain of ResNet-like 3x3 convolutions (the layers that hold
most of a ResNet's MACs), built in memory and run through the same library a row runs on, with every core busy
(OpenVINO's THROUGHPUT hint and its optimal number of requests; ONNX Runtime's intra-op threads):

- OpenVINO fp32: the convolutions compiled with ``INFERENCE_PRECISION_HINT=f32``; bf16/fp16 the same hint set
  to ``bf16``/``f16``, measured only where the CPU computes them natively (its ``OPTIMIZATION_CAPABILITIES``).
- OpenVINO int8: a FakeQuantize on each convolution's activations and weights, which OpenVINO's low-precision
  transformations turn into an int8 convolution.
- ONNX Runtime fp32: plain ``Conv`` nodes; int8: QDQ (QuantizeLinear/DequantizeLinear around each ``Conv``),
  which ORT fuses into ``QLinearConv``.

A figure is kept only when the library says it really ran in that precision: the runtime precision of every
convolution in OpenVINO's executed graph, and the op types of ORT's optimized graph. Each shape is timed in
windows until the last three windows agree within 3 % (or a time cap); of the shapes tried the fastest is kept.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.doctor import cpu_info
from ppdeploy.errors import DeployError, one_line

Log = Callable[[str], None]

BACKENDS = ("openvino", "onnx")
PRECISIONS = ("fp32", "int8", "bf16", "fp16")
# ResNet's 3x3 stages (every stage's 3x3 layers have the same MACs) at batch 1 and 8: on a 2-core Xeon, int8 was
# fastest at batch 1 (its maps stay in cache) and ONNX Runtime's fp32 at batch 8.
DEFAULT_SHAPES = ((1, 128, 28), (1, 256, 14), (8, 128, 28), (8, 256, 14))
DEFAULT_LAYERS = 4  # convolutions chained per call, so layout reorders at the ends weigh little
WINDOW_S = 0.3  # one timing window
AGREEMENT = 0.03  # the last three windows agree within this fraction
TIME_CAP_S = 3.0  # per shape, warm-up excluded
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # OpenVINO's inference precision per float precision
_OV_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
_OV_INT8 = frozenset({"u8", "i8"})
_ORT_INT8_OPS = frozenset({"QLinearConv", "ConvInteger"})


@dataclass(frozen=True)
class Ceiling:
    """The achievable dense-compute rate of one backend in one precision.

    Attributes:
        gmacs_per_s: 1e9 multiply-accumulates per second, the fastest shape's stable rate.
        shape: the convolution chain that gave it, e.g. ``8x256x14x14, 3x3 256->256, 4 layers``.
        seconds: time spent timing that shape (warm-up excluded).
        stable: whether its last three windows agreed within 3 % before the time cap.
        executed_as: what the library ran, as it says (e.g. ``Convolution brgconv_avx512_I8 u8``, ``QLinearConv``).
        tried: GMAC/s of every shape tried, by shape.
    """

    backend: str
    precision: str
    gmacs_per_s: float
    shape: str
    seconds: float
    stable: bool
    executed_as: str
    tried: dict[str, float] = field(default_factory=dict)


@dataclass
class CeilingReport:
    """Every ceiling measured here, the ones that could not be, and the CPU they were measured on."""

    cpu: str
    isa: dict[str, bool]
    threads: int
    ceilings: list[Ceiling] = field(default_factory=list)
    load_average: tuple[list[float], list[float]] | None = None  # 1/5/15 min, before and after: others' work
    skipped: dict[str, str] = field(default_factory=dict)  # "backend/precision" -> reason

    def peak(self, precision: str) -> Ceiling | None:
        """The machine's ceiling for ``precision``: the fastest backend's."""
        found = [c for c in self.ceilings if c.precision == precision]
        return max(found, key=lambda c: c.gmacs_per_s) if found else None

    def get(self, backend: str, precision: str) -> Ceiling | None:
        return next((c for c in self.ceilings if c.backend == backend and c.precision == precision), None)

    def row_fields(self, model_gmacs: float, images_per_s: float, details: dict[str, str]) -> dict[str, Any]:
        """The fields a bench row gets: its compute precision, the ceiling it is judged by and the fraction.

        A precision without a ceiling of its own (fp16 on a CPU that computes it in f32) is judged by fp32's; a row
        without a throughput (an error row: NaN) or without any ceiling gets ``None`` fields.
        """
        precision = compute_precision(details)
        peak = self.peak(precision) or self.peak("fp32")
        if peak is None or not math.isfinite(images_per_s):
            return {"ceiling_precision": None, "ceiling_gmacs_per_s": None, "ceiling_fraction": None}
        return {"ceiling_precision": peak.precision, "ceiling_gmacs_per_s": round(peak.gmacs_per_s, 1),
                "ceiling_fraction": round(ceiling_fraction(model_gmacs, images_per_s, peak.gmacs_per_s), 4)}

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "isa": [name for name, present in self.isa.items() if present],
                "threads": self.threads, "load_average": self.load_average,
                "ceilings": [asdict(c) for c in self.ceilings], "skipped": self.skipped}

    def render(self) -> str:
        isa = " ".join(name for name, present in self.isa.items() if present) or "none of " + ", ".join(self.isa)
        lines = [f"CPU: {self.cpu}, {self.threads} threads; ISA: {isa}"]
        if self.load_average:
            lines.append(f"  load average (1/5/15 min) before {self.load_average[0]}, after {self.load_average[1]}")
        for c in sorted(self.ceilings, key=lambda c: (PRECISIONS.index(c.precision), c.backend)):
            note = "" if c.stable else " (not stable within 3% before the time cap)"
            lines.append(f"  {c.backend:<9} {c.precision:<5} {c.gmacs_per_s:8.1f} GMAC/s  [{c.shape}; "
                         f"{c.executed_as}; {c.seconds:.1f} s]{note}")
        lines += [f"  {key:<15} skipped: {reason}" for key, reason in self.skipped.items()]
        return "\n".join(lines)


def ceiling_fraction(gmacs: float, images_per_s: float, peak_gmacs_per_s: float) -> float:
    """``gmacs x images_per_s / peak``: the share of the measured ceiling a model's throughput uses."""
    if not (gmacs > 0 and peak_gmacs_per_s > 0 and images_per_s >= 0):
        raise DeployError(one_line("ceiling fraction", f"got gmacs={gmacs}, images/s={images_per_s}, "
                                   f"peak={peak_gmacs_per_s}", "pass positive figures"))
    return gmacs * images_per_s / peak_gmacs_per_s


def compute_precision(details: dict[str, str]) -> str:
    """The precision a row computes in, from its runtime's ``details``: ``int8``, ``fp32``, ``bf16`` or ``fp16``."""
    if details.get("precision") == "int8":
        return "int8"
    compute = details.get("inference_precision") or details.get("precision", "fp32")
    return {"f32": "fp32", "f16": "fp16", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(compute,
                                                                                                       compute)


def measure_ceilings(backends: Sequence[str] = BACKENDS, precisions: Sequence[str] = ("fp32", "int8", "bf16"),
                     *, shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES, layers: int = DEFAULT_LAYERS,
                     threads: int | None = None, window_s: float = WINDOW_S, time_cap_s: float = TIME_CAP_S,
                     say: Log | None = None) -> CeilingReport:
    """Measure each (backend, precision) this machine can run; what it cannot is in ``skipped`` with the reason.

    Args:
        backends: ``openvino`` and/or ``onnx``; a backend whose library is missing is skipped.
        precisions: among ``fp32``, ``int8``, ``bf16``, ``fp16`` (bf16/fp16: OpenVINO, where the CPU has them).
        shapes: ``(batch, channels, side)`` of the 3x3 convolutions tried; the fastest is kept.
        layers: convolutions chained in one call.
        threads: threads per backend (default: every core).
        window_s: length of one timing window; time_cap_s: timing time per shape at most.
        say: progress lines (default: stderr).
    """
    if say is None:
        from ppdeploy.progress import say
    unknown = sorted(set(backends) - set(BACKENDS)) + sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise DeployError(one_line(f"ceiling {', '.join(unknown)}", "unknown backend or precision",
                                   f"choose from {', '.join(BACKENDS)} and {', '.join(PRECISIONS)}"))
    cpu, isa = cpu_info()
    report = CeilingReport(cpu, isa, threads or os.cpu_count() or 1)
    before = _load_average()
    for backend in backends:
        for precision in precisions:
            key = f"{backend}/{precision}"
            say(f"ceiling: {key}, {len(shapes)} shape(s)...")
            try:
                report.ceilings.append(_measure(backend, precision, shapes, layers, report.threads, window_s,
                                                time_cap_s))
            except _Unmeasurable as reason:
                report.skipped[key] = str(reason)
    report.load_average = (before, _load_average()) if before else None
    return report


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


class _Unmeasurable(Exception):
    """This backend cannot run this precision here (missing library, no native support, not what ran)."""


def _measure(backend: str, precision: str, shapes: Sequence[tuple[int, int, int]], layers: int, threads: int,
             window_s: float, time_cap_s: float) -> Ceiling:
    compile_chain = {"openvino": _openvino_chain, "onnx": _onnx_chain}[backend]
    tried, best = {}, None
    for batch, channels, side in shapes:
        label = f"{batch}x{channels}x{side}x{side}, 3x3 {channels}->{channels}, {layers} layers"
        macs = layers * batch * channels * channels * 9 * side * side
        for run, executed_as in compile_chain(precision, batch, channels, side, layers, threads):
            rate, seconds, stable = _stable_rate(run, macs, window_s, time_cap_s)
            tried[f"{label}; {executed_as}"] = round(rate, 1)
            if best is None or rate > best.gmacs_per_s:
                best = Ceiling(backend, precision, rate, label, round(seconds, 2), stable, executed_as)
    return Ceiling(**{**asdict(best), "tried": tried})


def _stable_rate(run: Callable[[], int], macs_per_call: int, window_s: float, time_cap_s: float
                 ) -> tuple[float, float, bool]:
    """GMAC/s: the median of the last three windows' medians once they agree within 3 %, else at the time cap.

    A window's figure is its median call (``run()`` keeps every core busy and returns how many inferences it
    completed): on a shared machine a call that another process preempted is an outlier, not the rate.
    """
    run()  # warm-up: first-call allocations and kernel generation
    medians: list[float] = []
    start = time.perf_counter()
    while True:
        rates, began = [], time.perf_counter()
        while time.perf_counter() - began < window_s or len(rates) < 3:
            called = time.perf_counter()
            done = run()
            rates.append(done * macs_per_call / (time.perf_counter() - called) / 1e9)
        medians.append(statistics.median(rates))
        last = medians[-3:]
        stable = len(last) == 3 and max(last) <= min(last) * (1 + AGREEMENT)
        if stable or time.perf_counter() - start >= time_cap_s:
            return statistics.median(last), time.perf_counter() - start, stable


def _weights(layers: int, channels: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    scale = math.sqrt(2.0 / (9 * channels))  # He init: activations keep their range through the chain
    return [(rng.standard_normal((channels, channels, 3, 3)) * scale).astype(np.float32) for _ in range(layers)]


def _input(batch: int, channels: int, side: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(0.0, 4.0, (batch, channels, side, side)).astype(np.float32)


# --------------------------------------------------------------------------------------------------- OpenVINO


def _openvino_chain(precision: str, batch: int, channels: int, side: int, layers: int, threads: int
                    ) -> list[tuple[Callable[[], int], str]]:
    try:
        import openvino as ov
    except ImportError as exc:
        raise _Unmeasurable("openvino is not installed (extra ppdeploy[openvino])") from exc
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision in _OV_CAPABILITY and _OV_CAPABILITY[precision] not in capabilities:
        raise _Unmeasurable(f"this CPU does not compute {precision} natively (capabilities: "
                            f"{', '.join(capabilities)})")
    model = openvino_model(batch, channels, side, layers, int8=precision == "int8")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _OV_HINT.get(precision, "f32"),
                                                 "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads})
    executed = openvino_conv_precisions(compiled)
    wanted = _OV_INT8 if precision == "int8" else {_OV_HINT[precision]}
    if not executed or not {runtime for _, runtime in executed} <= wanted:
        raise _Unmeasurable(f"OpenVINO ran the convolutions as {executed}, not {precision}")
    queue = ov.AsyncInferQueue(compiled, 0)  # 0: the compiled model's optimal number of requests
    data = _input(batch, channels, side)
    jobs = len(queue)

    def run() -> int:
        for _ in range(jobs):
            queue.start_async({0: data})
        queue.wait_all()
        return jobs

    kinds = sorted({f"{primitive} {runtime}" for primitive, runtime in executed})
    return [(run, f"Convolution {', '.join(kinds)}, THROUGHPUT hint, {jobs} requests")]


def openvino_model(batch: int, channels: int, side: int, layers: int, *, int8: bool) -> Any:
    """``layers`` 3x3 convolutions with ReLU; ``int8``: a FakeQuantize on each one's activations and weights."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([batch, channels, side, side], ov.Type.f32, name="x")
    node = x
    for weights in _weights(layers, channels):
        kernel = ops.constant(weights)
        if int8:
            low, high = ops.constant(np.float32(0.0)), ops.constant(np.float32(4.0))  # ReLU'd activations: u8
            node = ops.fake_quantize(node, low, high, low, high, 256)
            limit = np.abs(weights).max(axis=(1, 2, 3), keepdims=True)  # per output channel, symmetric: i8
            w_low, w_high = ops.constant(-limit), ops.constant(limit)
            kernel = ops.fake_quantize(kernel, w_low, w_high, w_low, w_high, 255)
        node = ops.relu(ops.convolution(node, kernel, [1, 1], [1, 1], [1, 1], [1, 1]))
    return ov.Model([node], [x], "ceiling")


def openvino_conv_precisions(compiled: Any) -> list[tuple[str, str]]:
    """(primitive, runtime precision) of every convolution in a compiled model's executed graph.

    E.g. ``("brgconv_avx512_I8", "u8")`` for an int8 convolution, ``("brgconv_avx512_f32", "f32")`` for fp32.
    """
    found = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            found.append((info["primitiveType"].astype(str), info["runtimePrecision"].astype(str)))
    return found


# --------------------------------------------------------------------------------------------------- ONNX Runtime


def _onnx_chain(precision: str, batch: int, channels: int, side: int, layers: int, threads: int
                ) -> list[tuple[Callable[[], int], str]]:
    """Two ways to keep every core busy: one call with ``threads`` intra-op threads, or ``threads`` concurrent
    calls of one thread each (ORT's sessions are thread-safe); the faster one is the ceiling."""
    if precision not in ("fp32", "int8"):
        raise _Unmeasurable(f"ONNX Runtime's CPU provider has no {precision} convolution to measure")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise _Unmeasurable("onnxruntime is not installed (extra ppdeploy[onnx])") from exc
    model = onnx_model(batch, channels, side, layers, int8=precision == "int8").SerializeToString()
    feed = {"x": _input(batch, channels, side)}
    configurations = []
    for intra_op, streams in ((threads, 1), (1, threads)) if threads > 1 else ((1, 1),):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op
        options.log_severity_level = 3  # the optimized-model dump warns that it is hardware specific: it is meant
        with tempfile.TemporaryDirectory(prefix="ppdeploy-ceiling-") as tmp:
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            convs = [op for op in onnx_op_types(options.optimized_model_filepath) if "Conv" in op]
        int8_convs = [op for op in convs if op in _ORT_INT8_OPS]
        if precision == "int8" and (not int8_convs or len(int8_convs) != len(convs)):
            raise _Unmeasurable(f"ONNX Runtime ran the convolutions as {convs}, not QLinearConv/ConvInteger")
        if precision == "fp32" and (not convs or int8_convs):
            raise _Unmeasurable(f"ONNX Runtime ran the convolutions as {convs}, not fp32 Conv")
        how = f"{len(convs)} x {convs[0]}, {streams} stream(s) x {intra_op} intra-op thread(s)"
        configurations.append((_concurrent_calls(session, feed, streams), how))
    return configurations


def _concurrent_calls(session: Any, feed: dict[str, np.ndarray], streams: int) -> Callable[[], int]:
    if streams == 1:
        def run() -> int:
            session.run(None, feed)
            return 1
        return run
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(streams, thread_name_prefix="ppdeploy-ceiling")  # idle, then gone with ``run``

    def run_streams() -> int:
        for future in [pool.submit(session.run, None, feed) for _ in range(streams)]:
            future.result()
        return streams

    return run_streams


def onnx_model(batch: int, channels: int, side: int, layers: int, *, int8: bool) -> Any:
    """``layers`` Conv+Relu; ``int8``: QDQ around each Conv (u8 activations, per-channel i8 weights)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, current = [], [], "x"
    for index, weights in enumerate(_weights(layers, channels)):
        conv_input, kernel = current, f"w{index}"
        if int8:
            scale = np.abs(weights).max(axis=(1, 2, 3)) / 127.0
            quantized = np.round(weights / scale[:, None, None, None]).astype(np.int8)
            initializers += [numpy_helper.from_array(quantized, f"w{index}_q"),
                             numpy_helper.from_array(scale.astype(np.float32), f"w{index}_scale"),
                             numpy_helper.from_array(np.zeros(channels, np.int8), f"w{index}_zero"),
                             numpy_helper.from_array(np.array(4.0 / 255, np.float32), f"a{index}_scale"),
                             numpy_helper.from_array(np.array(0, np.uint8), f"a{index}_zero")]
            activation = [f"a{index}_scale", f"a{index}_zero"]
            nodes += [helper.make_node("QuantizeLinear", [current, *activation], [f"q{index}"]),
                      helper.make_node("DequantizeLinear", [f"q{index}", *activation], [f"dq{index}"]),
                      helper.make_node("DequantizeLinear", [f"w{index}_q", f"w{index}_scale", f"w{index}_zero"],
                                       [kernel], axis=0)]
            conv_input = f"dq{index}"
        else:
            initializers.append(numpy_helper.from_array(weights, kernel))
        nodes += [helper.make_node("Conv", [conv_input, kernel], [f"c{index}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{index}"], [f"r{index}"])]
        current = f"r{index}"
    if int8:  # a final Q/DQ, so the last Conv has a quantized output too and fuses like the others
        initializers += [numpy_helper.from_array(np.array(4.0 / 255, np.float32), "y_scale"),
                         numpy_helper.from_array(np.array(0, np.uint8), "y_zero")]
        nodes += [helper.make_node("QuantizeLinear", [current, "y_scale", "y_zero"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", [current], ["y"]))
    shape = [batch, channels, side, side]
    graph = helper.make_graph(nodes, "ceiling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnx_op_types(path: str | Path) -> list[str]:
    """Op types of an ONNX file's graph, in order (here: ORT's optimized graph)."""
    import onnx

    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
