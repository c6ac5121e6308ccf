"""Benchmark settings and results, and the issue's targets evaluated on them."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppdeploy.bench.ceiling import ceiling_fraction

REFERENCE = "paddle"
ANCHOR = "paddle (PaddleClas serial loop)"
# The targets (docs/benchmarks.md).
TARGET_SPEEDUP = 6.0
TARGET_E2E_RATIO = 0.90
TARGET_ANCHOR_RATIO = 4.0
TARGET_FAST_DECODE_ANCHOR_RATIO = 8.0  # issue 16: phone photos with --fast-decode against the exact serial loop
TARGET_WRAPPER_OVERHEAD = 0.02
TARGET_CONVERSION_SECONDS = 15.0
TARGET_THROUGHPUT_RATIO = 1.15  # issue 13: throughput mode over latency mode at batch 1
TARGET_CEILING_FRACTION = 0.80  # issue 13: the fastest passing row against the int8 ceiling
SWEEP_MIN_GAIN = 0.05  # a batch-size sweep stops when images/s grows by less than this


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BenchSettings:
    """How the benchmark runs.

    Attributes:
        batch_sizes: the table's columns.
        threads: inference threads, the same for every backend.
        warmup: untimed calls per backend and batch size before the first round.
        iters: timed calls per backend and batch size.
        rounds: how many interleaved rounds the timed calls are split into.
        parity_images: sample photos for the parity verdicts (0: no parity check).
        e2e_passes: timed passes over the folder per backend and batch size in ``--e2e`` mode (0: no e2e).
        overhead_iters: timed calls of the wrapper and of the raw backend API each, at batch 1 (0: skip).
        throughput: also time each row in throughput mode (several requests in flight; ``Runtime``), beside
            latency mode, at every batch size.
        ceiling: measure this machine's dense-compute ceiling per precision through the backends
            (``ppdeploy.bench.ceiling``) and give each row its fraction of it (zoo models: their GMACs are known).
        fast_decode: the e2e pipelines decode large JPEGs at reduced size (``Classifier(fast_decode=True)``); the
            serial-loop anchor always decodes exactly, as PaddleClas does.
        only_passing: time only the rows that passed parity (and the reference).
        sweep: treat ``batch_sizes`` as a ladder and stop climbing it when the best row's images/s grows by less
            than :data:`SWEEP_MIN_GAIN` over the previous size (Model Navigator's rule).
        settle_s: pause before each backend's round, so that threads the previous backend left spinning are idle
            before the next one is timed (Paddle's OpenMP threads spin ~0.2 s after a run and slowed the next
            backend's first calls 4x; ONNX Runtime's pool spins too).
    """

    batch_sizes: tuple[int, ...] = (1, 4, 8)
    threads: int = 2
    warmup: int = 5
    iters: int = 50
    rounds: int = 5
    parity_images: int = 120
    e2e_passes: int = 0
    overhead_iters: int = 200
    settle_s: float = 0.3
    fast_decode: bool = False
    throughput: bool = True
    ceiling: bool = True
    sweep: bool = False
    only_passing: bool = False


@dataclass
class BenchResult:
    """Latencies of one backend at one batch size (one call = one batch)."""

    backend: str
    batch_size: int
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def images_per_s(self) -> float:
        """``batch / median latency``."""
        return self.batch_size / self.p50 * 1000.0 if self.latencies_ms else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "iters": len(self.latencies_ms),
                "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "images_per_s": self.images_per_s,
                "latencies_ms": [round(v, 4) for v in self.latencies_ms]}


@dataclass
class BackendInfo:
    """Everything about one row that does not depend on the batch size."""

    label: str
    profile: str
    status: str = "ok"  # "ok", "skipped" or "error"
    reason: str = ""
    runs_as: str = ""
    parity: dict[str, Any] | None = None  # status, profile, reasons, metrics summary; None: not checked
    load_seconds: float | None = None
    conversion_seconds: float | None = None  # this artifact's own step, from its manifest
    conversion_chain: list[tuple[str, float]] = field(default_factory=list)  # every step from the Paddle model
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None  # the child process before loading the model
    details: dict[str, str] = field(default_factory=dict)

    @property
    def parity_status(self) -> str:
        """``reference``, ``pass``, ``fail``, ``error`` or ``not checked``."""
        if self.label == REFERENCE:
            return "reference"
        return self.parity["status"] if self.parity else "not checked"


@dataclass
class ThroughputResult:
    """One backend at one batch size in throughput mode: ``calls`` batches streamed with ``requests`` in flight."""

    backend: str
    batch_size: int
    calls: int
    seconds: float
    requests: int

    @property
    def images_per_s(self) -> float:
        return self.calls * self.batch_size / self.seconds if self.seconds > 0 else math.nan

    @property
    def mean_latency_ms(self) -> float:
        """Mean time a batch spends in flight: ``requests`` overlap, so ``seconds × requests / calls``."""
        return self.seconds * 1000.0 * self.requests / self.calls if self.calls else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "calls": self.calls, "seconds": self.seconds,
                "requests": self.requests, "images_per_s": self.images_per_s,
                "mean_latency_ms": self.mean_latency_ms}


@dataclass
class E2EResult:
    """Seconds per pass over the image folder of one pipeline at one batch size."""

    backend: str
    batch_size: int
    images: int
    pass_seconds: list[float]
    ordered: bool = True  # one record per input, in input order
    mode: str = "latency"  # the runtime mode the pipeline ran in
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time (all threads) per pass

    def cpu_busy(self, cores: int) -> float:
        """Share of the machine's cores the pass kept busy (CPU seconds / wall seconds / cores)."""
        if not self.cpu_seconds or not self.pass_seconds:
            return math.nan
        return statistics.median(self.cpu_seconds) / statistics.median(self.pass_seconds) / max(1, cores)

    @property
    def images_per_s(self) -> float:
        return self.images / statistics.median(self.pass_seconds) if self.pass_seconds else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "images": self.images,
                "pass_seconds": self.pass_seconds, "images_per_s": self.images_per_s, "ordered": self.ordered,
                "mode": self.mode, "cpu_seconds": self.cpu_seconds}


@dataclass
class StageResult:
    """Where one image's time goes in one row's pipeline: seconds per stage over the corpus, one thread."""

    backend: str
    batch_size: int
    images: int
    seconds: dict[str, float]

    def per_image_ms(self) -> dict[str, float]:
        return {stage: 1000.0 * value / max(1, self.images) for stage, value in self.seconds.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "images": self.images,
                "seconds": self.seconds, "per_image_ms": self.per_image_ms()}


@dataclass
class Overhead:
    """Median batch-1 latency through ``Runtime.infer`` and through the backend's own API."""

    backend: str
    wrapper_ms: float
    raw_ms: float
    raw_api: str

    @property
    def fraction(self) -> float:
        return self.wrapper_ms / self.raw_ms - 1.0


@dataclass
class BenchReport:
    """The whole benchmark: rows, per-batch results, e2e figures, wrapper overhead, machine and settings."""

    model: str
    synthetic: bool
    settings: BenchSettings
    machine: dict[str, Any]
    backends: list[BackendInfo]
    results: list[BenchResult] = field(default_factory=list)
    e2e: list[E2EResult] = field(default_factory=list)
    anchor: list[E2EResult] = field(default_factory=list)
    overhead: list[Overhead] = field(default_factory=list)
    images_dir: str | None = None
    throughput: list[ThroughputResult] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    ceiling: Any = None  # CeilingReport, when measured
    model_gmacs: float | None = None  # multiply-accumulates per image, for the ceiling fractions
    parity_report: Any = None  # the ParityReport behind the rows' verdicts (JSON/JUnit), when parity ran

    def result(self, backend: str, batch_size: int) -> BenchResult | None:
        return next((r for r in self.results if r.backend == backend and r.batch_size == batch_size), None)

    def info(self, backend: str) -> BackendInfo | None:
        return next((b for b in self.backends if b.label == backend), None)

    def speedup(self, backend: str, batch_size: int) -> float:
        """images/s over the reference's at the same batch size (nan when either is missing)."""
        row, ref = self.result(backend, batch_size), self.result(REFERENCE, batch_size)
        return row.images_per_s / ref.images_per_s if row and ref else math.nan

    def model_only(self, backend: str, batch_size: int) -> float:
        row = self.result(backend, batch_size)
        return row.images_per_s if row else math.nan

    def model_only_for(self, e2e: E2EResult) -> float:
        """Model-only images/s of an e2e row's backend and batch size, in the mode that pipeline ran in."""
        streamed = self.streamed(e2e.backend, e2e.batch_size) if e2e.mode == "throughput" else None
        return streamed.images_per_s if streamed is not None else self.model_only(e2e.backend, e2e.batch_size)

    def ceiling_fields(self, backend: str, images_per_s: float) -> dict[str, Any]:
        """A row's compute precision, the ceiling that judges it and its fraction of it (empty when not measured)."""
        if self.ceiling is None or not self.model_gmacs:
            return {}
        info = self.info(backend)
        return self.ceiling.row_fields(self.model_gmacs, images_per_s, info.details if info else {})

    def streamed(self, backend: str, batch_size: int) -> ThroughputResult | None:
        return next((r for r in self.throughput if r.backend == backend and r.batch_size == batch_size), None)

    def best_images_per_s(self, backend: str, batch_size: int) -> tuple[float, str]:
        """The higher images/s of the row's two modes at ``batch_size``, and which mode gave it."""
        latency = self.model_only(backend, batch_size)
        streamed = self.streamed(backend, batch_size)
        if streamed is not None and (not math.isfinite(latency) or streamed.images_per_s > latency):
            return streamed.images_per_s, "throughput"
        return latency, "latency"

    def targets(self) -> list[dict[str, Any]]:
        """The issue's targets that this run measures, each with its figure and whether it is met."""
        return evaluate_targets(self)

    def to_dict(self) -> dict[str, Any]:
        results = [{**r.to_dict(), "speedup_vs_paddle": self.speedup(r.backend, r.batch_size),
                    **self.ceiling_fields(r.backend, r.images_per_s)} for r in self.results]
        streamed = [{**t.to_dict(), **self.ceiling_fields(t.backend, t.images_per_s)} for t in self.throughput]
        e2e = [{**e.to_dict(), "model_only_images_per_s": self.model_only_for(e)}
               for e in self.e2e]
        return {"model": self.model, "synthetic": self.synthetic, "settings": dataclasses.asdict(self.settings),
                "machine": self.machine, "images_dir": self.images_dir,
                "backends": [{**dataclasses.asdict(b), "parity_status": b.parity_status} for b in self.backends],
                "results": results, "throughput": streamed, "e2e": e2e, "model_gmacs": self.model_gmacs,
                "ceiling": self.ceiling.to_dict() if self.ceiling is not None else None,
                "stages": [st.to_dict() for st in self.stages], "anchor": [a.to_dict() for a in self.anchor],
                "wrapper_overhead": [{**dataclasses.asdict(o), "fraction": o.fraction} for o in self.overhead],
                "targets": self.targets()}

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2)

    def render(self) -> str:
        from ppdeploy.bench.render import render_report  # render imports this module

        return render_report(self)


def _finite(value: Any) -> Any:
    """NaN/inf → None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------- targets


def evaluate_targets(report: BenchReport) -> list[dict[str, Any]]:
    """Target name, measured figure, goal and verdict (``met``, ``not met`` or ``not measured``)."""
    targets = [_speedup_target(report, bs) for bs in (1, 8) if report.result(REFERENCE, bs)]
    targets += _e2e_targets(report)
    targets += _throughput_targets(report)
    targets += _ceiling_targets(report)
    targets += [_target(f"Runtime wrapper overhead at batch 1 ({o.backend}, vs {o.raw_api})", o.fraction * 100,
                        f"<= {TARGET_WRAPPER_OVERHEAD:.0%}", o.fraction <= TARGET_WRAPPER_OVERHEAD, "{:+.2f} %")
                for o in report.overhead]
    chain = next((b.conversion_chain for b in report.backends if b.label == "openvino" and b.conversion_chain), None)
    if chain:
        seconds = sum(s for _, s in chain)
        steps = " + ".join(f"{name} {s:.1f} s" for name, s in chain)
        targets.append(_target(f"Paddle model to OpenVINO fp32 IR ({steps})", seconds,
                               f"< {TARGET_CONVERSION_SECONDS:.0f} s", seconds < TARGET_CONVERSION_SECONDS, "{:.1f} s"))
    return targets


def _target(name: str, value: float | None, goal: str, met: bool | None, fmt: str = "{:.2f}") -> dict[str, Any]:
    shown = fmt.format(value) if value is not None and math.isfinite(value) else "-"
    verdict = "not measured" if met is None else ("met" if met else "not met")
    return {"target": name, "value": value, "shown": shown, "goal": goal, "verdict": verdict}


def _speedup_target(report: BenchReport, batch_size: int) -> dict[str, Any]:
    goal = f">= {TARGET_SPEEDUP:.0f}x"
    passing = [b.label for b in report.backends if b.parity_status == "pass"]
    fastest = _fastest(report, passing, batch_size)
    if fastest is None:
        overall = _fastest(report, [b.label for b in report.backends if b.label != REFERENCE], batch_size)
        note = f" (fastest overall: {overall} {report.speedup(overall, batch_size):.2f}x)" if overall else ""
        return _target(f"fastest parity-passing config vs Paddle fp32, batch {batch_size}: none passed{note}", None,
                       goal, None if not any(b.parity for b in report.backends) else False)
    ratio = report.speedup(fastest, batch_size)
    return _target(f"fastest parity-passing config vs Paddle fp32, batch {batch_size}: {fastest}", ratio, goal,
                   ratio >= TARGET_SPEEDUP, "{:.2f}x")


def _fastest(report: BenchReport, labels: Sequence[str], batch_size: int) -> str | None:
    rows = [r for r in report.results if r.backend in labels and r.batch_size == batch_size]
    return max(rows, key=lambda r: r.images_per_s).backend if rows else None


def _throughput_targets(report: BenchReport) -> list[dict[str, Any]]:
    """Throughput mode over latency mode at batch 1 for the fastest parity-passing row (latency mode)."""
    passing = [b.label for b in report.backends if b.parity_status in ("pass", "reference")]
    fastest = _fastest(report, passing, 1)
    streamed = report.streamed(fastest, 1) if fastest else None
    if streamed is None:
        return []
    ratio = streamed.images_per_s / report.model_only(fastest, 1)
    return [_target(f"throughput mode / latency mode, batch 1, fastest passing ({fastest}, {streamed.requests} in "
                    "flight)", ratio, f">= {TARGET_THROUGHPUT_RATIO:.2f}x", ratio >= TARGET_THROUGHPUT_RATIO,
                    "{:.2f}x")]


def _ceiling_targets(report: BenchReport) -> list[dict[str, Any]]:
    """The fastest parity-passing row (either mode, any batch size) as a fraction of the measured int8 ceiling."""
    peak = report.ceiling.peak("int8") if report.ceiling is not None else None
    if peak is None or not report.model_gmacs:
        return []
    passing = {b.label for b in report.backends if b.parity_status == "pass"}
    cells = [(report.best_images_per_s(r.backend, r.batch_size), r.backend, r.batch_size)
             for r in report.results if r.backend in passing]
    cells = [(ips, label, bs, mode) for (ips, mode), label, bs in cells if math.isfinite(ips)]
    if not cells:
        return []
    ips, label, batch_size, mode = max(cells)
    fraction = ceiling_fraction(report.model_gmacs, ips, peak.gmacs_per_s)
    return [_target(f"fastest passing row ({label}, batch {batch_size}, {mode} mode: {ips:.1f} img/s x "
                    f"{report.model_gmacs:.2f} GMAC) / measured int8 ceiling ({peak.backend}, "
                    f"{peak.gmacs_per_s:.0f} GMAC/s)", fraction * 100, f">= {TARGET_CEILING_FRACTION:.0%}",
                    fraction >= TARGET_CEILING_FRACTION, "{:.1f} %")]


def _e2e_targets(report: BenchReport) -> list[dict[str, Any]]:
    targets = []
    for row in report.e2e:
        info = report.info(row.backend)
        if info and info.profile == "fp32":
            ratio = row.images_per_s / report.model_only_for(row)
            targets.append(_target(f"end-to-end / model-only, {row.backend} batch {row.batch_size}", ratio * 100,
                                   f">= {TARGET_E2E_RATIO:.0%}", ratio >= TARGET_E2E_RATIO, "{:.1f} %"))
    goal = TARGET_FAST_DECODE_ANCHOR_RATIO if report.settings.fast_decode else TARGET_ANCHOR_RATIO
    how = " (--fast-decode; the loop decodes exactly)" if report.settings.fast_decode else ""
    for anchor in report.anchor:
        passing = [e for e in report.e2e if e.batch_size == anchor.batch_size
                   and (info := report.info(e.backend)) and info.parity_status in ("pass", "reference")]
        if passing:
            best = max(passing, key=lambda e: e.images_per_s)
            ratio = best.images_per_s / anchor.images_per_s
            targets.append(_target(f"end-to-end fastest passing ({best.backend}){how} vs PaddleClas serial loop, "
                                   f"batch {anchor.batch_size}", ratio, f">= {goal:.0f}x", ratio >= goal, "{:.2f}x"))
    return targets
