"""``deploy bench``: latency, throughput, memory and load time per backend and batch size, against Paddle Inference.

Fair by construction:

- every backend runs with the same thread count, in a child process of its own (so its peak resident memory is
  its own and nothing accumulates), loaded one at a time (so load times do not compete);
- warm-up calls are excluded, and so is one call at the start of every round (the first call after another
  backend ran meets cold caches);
- the iterations are split into rounds and the rounds interleaved across backends in a rotating order, so
  machine drift (other jobs, thermal limits) hits every backend alike;
- images/s is ``batch / median latency``: a median is what a shared machine can still measure reliably.

Every row also carries its parity verdict (``ppdeploy.parity`` profiles on real photos), so a fast wrong answer
shows as wrong. ``--e2e`` adds the whole pipeline over a folder of photos (decode + preprocess + infer + top-k,
``Classifier.predict``), the same backend's model-only figure, and a PaddleClas-style serial loop as the anchor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.errors import BackendUnavailableError, DeployError, one_line

Log = Callable[[str], None]

REFERENCE = "paddle"
ANCHOR = "paddle (PaddleClas serial loop)"
# Bench-only rows: an artifact run with other runtime options, judged against the profile of what it computes in.
EXTRA_VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "openvino-bf16": ("openvino", {"precision_override": "bf16"}, "bf16"),
}
# The targets (docs/benchmarks.md).
TARGET_SPEEDUP = 6.0
TARGET_E2E_RATIO = 0.90
TARGET_ANCHOR_RATIO = 4.0
TARGET_WRAPPER_OVERHEAD = 0.02
TARGET_CONVERSION_SECONDS = 15.0
CALL_TIMEOUT_S = 1800.0


# --------------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One benchmark row: what ``--backend`` resolves to, extra runtime options, and the parity profile it answers to.

    Attributes:
        label: row name (``openvino-int8``, ``openvino-bf16``, ...).
        choice: the name ``resolve_backend`` takes for the artifact and runtime.
        profile: parity profile name (``fp32``, ``fp16``, ``bf16``, ``int8``).
        options: extra keyword arguments for the runtime class.
    """

    label: str
    choice: str
    profile: str
    options: dict[str, Any] = field(default_factory=dict)


def bench_names() -> list[str]:
    """Every row ``--backends all`` runs: the reference, each conversion target, then the bench-only variants."""
    from ppdeploy.converters.base import TARGETS

    names = [REFERENCE, *TARGETS]
    for extra, (base, _, _) in EXTRA_VARIANTS.items():
        names.insert(names.index(base) + 1 if base in names else len(names), extra)
    return list(dict.fromkeys(names))


def expand_variants(spec: str | Sequence[str]) -> list[Variant]:
    """``all`` or a comma list → variants, the reference first (it is always run: speed-ups need it)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    names = bench_names() if names == ["all"] else names
    return [make_variant(name) for name in dict.fromkeys([REFERENCE, *names])]


def make_variant(name: str) -> Variant:
    """The variant for a backend, target or bench-only name; raise ``BackendUnavailableError`` for unknown names."""
    from ppdeploy.converters.base import TARGETS
    from ppdeploy.runtimes.select import all_choices, resolve_backend

    if name in EXTRA_VARIANTS:
        base, options, profile = EXTRA_VARIANTS[name]
        return Variant(name, base, profile, dict(options))
    try:
        choice = resolve_backend(name)
    except BackendUnavailableError as exc:
        valid = ", ".join([*all_choices(), *EXTRA_VARIANTS])
        raise BackendUnavailableError(one_line(f"backend '{name}'", "unknown", f"choose 'all' or: {valid}")) from exc
    if name == "auto":
        name = choice.label
    return Variant(name, name, TARGETS[choice.target].precision if choice.target else "fp32")


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
class E2EResult:
    """Seconds per pass over the image folder of one pipeline at one batch size."""

    backend: str
    batch_size: int
    images: int
    pass_seconds: list[float]
    ordered: bool = True  # one record per input, in input order

    @property
    def images_per_s(self) -> float:
        return self.images / statistics.median(self.pass_seconds) if self.pass_seconds else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "images": self.images,
                "pass_seconds": self.pass_seconds, "images_per_s": self.images_per_s, "ordered": self.ordered}


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

    def targets(self) -> list[dict[str, Any]]:
        """The issue's targets that this run measures, each with its figure and whether it is met."""
        return evaluate_targets(self)

    def to_dict(self) -> dict[str, Any]:
        results = [{**r.to_dict(), "speedup_vs_paddle": self.speedup(r.backend, r.batch_size)} for r in self.results]
        e2e = [{**e.to_dict(), "model_only_images_per_s": self.model_only(e.backend, e.batch_size)}
               for e in self.e2e]
        return {"model": self.model, "synthetic": self.synthetic, "settings": dataclasses.asdict(self.settings),
                "machine": self.machine, "images_dir": self.images_dir,
                "backends": [{**dataclasses.asdict(b), "parity_status": b.parity_status} for b in self.backends],
                "results": results, "e2e": e2e, "anchor": [a.to_dict() for a in self.anchor],
                "wrapper_overhead": [{**dataclasses.asdict(o), "fraction": o.fraction} for o in self.overhead],
                "targets": self.targets()}

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2)

    def render(self) -> str:
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


def _e2e_targets(report: BenchReport) -> list[dict[str, Any]]:
    targets = []
    for row in report.e2e:
        info = report.info(row.backend)
        if info and info.profile == "fp32":
            ratio = row.images_per_s / report.model_only(row.backend, row.batch_size)
            targets.append(_target(f"end-to-end / model-only, {row.backend} batch {row.batch_size}", ratio * 100,
                                   f">= {TARGET_E2E_RATIO:.0%}", ratio >= TARGET_E2E_RATIO, "{:.1f} %"))
    for anchor in report.anchor:
        passing = [e for e in report.e2e if e.batch_size == anchor.batch_size
                   and (info := report.info(e.backend)) and info.parity_status in ("pass", "reference")]
        if passing:
            best = max(passing, key=lambda e: e.images_per_s)
            ratio = best.images_per_s / anchor.images_per_s
            targets.append(_target(f"end-to-end fastest passing ({best.backend}) vs PaddleClas serial loop, batch "
                                   f"{anchor.batch_size}", ratio, f">= {TARGET_ANCHOR_RATIO:.0f}x",
                                   ratio >= TARGET_ANCHOR_RATIO, "{:.2f}x"))
    return targets


# --------------------------------------------------------------------------------------------------- rendering


def render_report(report: BenchReport) -> str:
    """Markdown tables: the seed-like summary, percentiles, per-backend facts, e2e, overhead, targets."""
    settings = report.settings
    head = (f"{report.model}{' (synthetic weights)' if report.synthetic else ''}: {settings.threads} threads for "
            f"every backend, {settings.warmup} warm-up + {settings.iters} timed calls per cell in "
            f"{settings.rounds} interleaved rounds; images/s = batch / p50 latency; x = images/s over Paddle "
            "Inference fp32 (oneDNN) at the same batch size.")
    sections = [head, _machine_line(report.machine), _summary_table(report), _percentile_table(report),
                _backend_table(report)]
    if report.e2e or report.anchor:
        sections.append(_e2e_table(report))
    if report.overhead:
        sections.append(_overhead_table(report))
    sections.append(_targets_table(report))
    return "\n\n".join(sections)


def _machine_line(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in machine.get("versions", {}).items())
    gpus = ", ".join(machine.get("gpus") or []) or "none"
    return (f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, ISA {' '.join(machine.get('isa', []))}; "
            f"GPU: {gpus}; load average (1/5/15 min) before {machine.get('loadavg_before')}, after "
            f"{machine.get('loadavg_after')}; {versions}.")


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[str(cell).replace(" | ", "; ").replace("|", "/") for cell in row] for row in rows]  # error messages
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def parity_mark(info: BackendInfo) -> str:
    """``reference``, ``PASS fp32``, ``FAIL int8``, ``ERROR``, ``not checked`` or ``skipped``."""
    if info.status != "ok":
        return info.status
    status = info.parity_status
    if status in ("pass", "fail"):
        return f"{status.upper()} {info.profile}"
    return status.upper() if status == "error" else status


def _summary_table(report: BenchReport) -> str:
    sizes = report.settings.batch_sizes
    head = ["Model", "Backend", "Runs as", "Parity", *[f"bs={bs}: p50 ms / img/s / x" for bs in sizes]]
    rows = []
    for info in report.backends:
        cells = [_cell(report, info.label, bs) if info.status == "ok" else "-" for bs in sizes]
        runs_as = info.runs_as if info.status == "ok" else info.reason.split(" | ")[0]  # the problem, not the fix
        rows.append([report.model, info.label, runs_as, parity_mark(info), *cells])
    return "Model-only latency and throughput (rows = model/backend, columns = batch sizes)\n\n" + _markdown(head, rows)


def _cell(report: BenchReport, backend: str, batch_size: int) -> str:
    row = report.result(backend, batch_size)
    if row is None or not row.latencies_ms:
        return "-"
    return f"{row.p50:.2f} / {row.images_per_s:.1f} / {report.speedup(backend, batch_size):.2f}x"


def _percentile_table(report: BenchReport) -> str:
    head = ["Backend", "Batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "x Paddle", "calls"]
    rows = [[r.backend, str(r.batch_size), f"{r.p50:.2f}", f"{r.p90:.2f}", f"{r.p99:.2f}", f"{r.images_per_s:.1f}",
             f"{report.speedup(r.backend, r.batch_size):.2f}", str(len(r.latencies_ms))] for r in report.results]
    return "Latency percentiles\n\n" + _markdown(head, rows)


def _backend_table(report: BenchReport) -> str:
    head = ["Backend", "Runs as", "Parity", "Parity detail", "Load s", "Conversion s (chain)", "Peak RSS MB"]
    rows = [[b.label, b.runs_as or "-", parity_mark(b), _parity_detail(b), _num(b.load_seconds, "{:.2f}"),
             _conversion_text(b), _rss_text(b)] for b in report.backends]
    return "Per backend: parity verdict, load/compile time, conversion time, peak memory\n\n" + _markdown(head, rows)


def _parity_detail(info: BackendInfo) -> str:
    if info.status != "ok":
        return info.reason
    if not info.parity:
        return "-"
    metrics = info.parity.get("metrics") or {}
    if not metrics:
        return "; ".join(info.parity.get("reasons", []))[:80] or "-"
    return (f"max abs {metrics['max_abs']:.1e}, max TV {metrics['max_tv']:.1e}, "
            f"top-1 {metrics['decisive_top1']:.0%} of {metrics['decisive']} decisive / {metrics['images']}")


def _conversion_text(info: BackendInfo) -> str:
    if not info.conversion_chain:
        return "-"
    total = sum(s for _, s in info.conversion_chain)
    steps = " + ".join(f"{s:.1f}" for _, s in info.conversion_chain)
    return f"{total:.1f} ({steps})" if len(info.conversion_chain) > 1 else f"{total:.1f}"


def _rss_text(info: BackendInfo) -> str:
    if info.peak_rss_mb is None:
        return "-"
    base = f" (process before load {info.baseline_rss_mb:.0f})" if info.baseline_rss_mb is not None else ""
    return f"{info.peak_rss_mb:.0f}{base}"


def _num(value: float | None, fmt: str) -> str:
    return fmt.format(value) if value is not None else "-"


def _e2e_table(report: BenchReport) -> str:
    head = ["Pipeline", "Batch", "Parity", "End-to-end img/s", "Model-only img/s", "E2E / model-only",
            "x serial loop", "Order kept"]
    anchors = {a.batch_size: a.images_per_s for a in report.anchor}
    rows = []
    for row in [*report.anchor, *report.e2e]:
        model_only = report.model_only(row.backend, row.batch_size) if row.backend != ANCHOR else math.nan
        info = report.info(row.backend)
        rows.append([row.backend, str(row.batch_size), parity_mark(info) if info else "-",
                     f"{row.images_per_s:.1f}", _num(model_only if math.isfinite(model_only) else None, "{:.1f}"),
                     f"{row.images_per_s / model_only:.1%}" if math.isfinite(model_only) else "-",
                     f"{row.images_per_s / anchors[row.batch_size]:.2f}" if row.batch_size in anchors else "-",
                     "yes" if row.ordered else "NO"])
    title = (f"End to end over {report.images_dir or 'the image folder'} (decode + preprocess + infer + top-5, "
             "Classifier.predict; anchor: decode → preprocess → Paddle Inference fp32, batch after batch)")
    return title + "\n\n" + _markdown(head, rows)


def _overhead_table(report: BenchReport) -> str:
    head = ["Backend", "Runtime.infer p50 ms", "Raw API p50 ms", "Raw API", "Overhead"]
    rows = [[o.backend, f"{o.wrapper_ms:.3f}", f"{o.raw_ms:.3f}", o.raw_api, f"{o.fraction:+.2%}"]
            for o in report.overhead]
    return "Runtime wrapper overhead at batch 1 (calls alternated in blocks)\n\n" + _markdown(head, rows)


def _targets_table(report: BenchReport) -> str:
    rows = [[t["target"], t["shown"], t["goal"], t["verdict"]] for t in report.targets()]
    return "Targets measured in this run\n\n" + _markdown(["Target", "Measured", "Goal", "Verdict"], rows)


def write_chart(report: BenchReport, path: str | os.PathLike) -> Path:
    """A PNG bar chart of images/s per backend and batch size (failing parity hatched); e2e in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if report.e2e else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(8.0, 1.1 * len(report.backends) + 3), 4.8 * panels),
                             squeeze=False)
    _model_only_panel(axes[0][0], report)
    if report.e2e:
        _e2e_panel(axes[1][0], report)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
    return path


def _model_only_panel(ax: Any, report: BenchReport) -> None:
    labels = [b.label for b in report.backends if b.status == "ok"]
    sizes = report.settings.batch_sizes
    width = 0.8 / max(1, len(sizes))
    for index, batch_size in enumerate(sizes):
        xs = [i + (index - (len(sizes) - 1) / 2) * width for i in range(len(labels))]
        values = [report.model_only(label, batch_size) for label in labels]
        bars = ax.bar(xs, [v if math.isfinite(v) else 0 for v in values], width, label=f"batch {batch_size}")
        for bar, label in zip(bars, labels):
            info = report.info(label)
            if info and info.parity_status in ("fail", "error"):
                bar.set_hatch("///")
                bar.set_edgecolor("black")
            speedup = report.speedup(label, batch_size)
            if math.isfinite(speedup):
                ax.annotate(f"{speedup:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), [_tick(report, label) for label in labels], fontsize=8)
    ax.set_ylabel("images/s (batch / p50 latency)")
    ax.set_title(f"{report.model}{' (synthetic weights)' if report.synthetic else ''}, model only, "
                 f"{report.settings.threads} threads; x = speed-up over Paddle fp32; hatched = fails parity")
    ax.legend(fontsize=8, loc="upper left")


def _tick(report: BenchReport, label: str) -> str:
    info = report.info(label)
    return f"{label}\n{parity_mark(info)}" if info else label


def _e2e_panel(ax: Any, report: BenchReport) -> None:
    rows = [*report.anchor, *report.e2e]
    labels = list(dict.fromkeys(r.backend for r in rows))
    sizes = report.settings.batch_sizes
    width = 0.8 / max(1, len(sizes))
    for index, batch_size in enumerate(sizes):
        for position, label in enumerate(labels):
            row = next((r for r in rows if r.backend == label and r.batch_size == batch_size), None)
            if row is None:
                continue
            x = position + (index - (len(sizes) - 1) / 2) * width
            ax.bar(x, row.images_per_s, width, color=f"C{index}", label=f"batch {batch_size}" if position == 0 else None)
            model_only = report.model_only(label, batch_size)
            if math.isfinite(model_only):
                ax.hlines(model_only, x - width / 2, x + width / 2, colors="black", linewidth=1.5)
    ax.plot([], [], color="black", label="model only (same backend, batch)")
    ax.set_xticks(range(len(labels)), [label.replace(" (", "\n(") for label in labels], fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title("End to end over the photo folder (decode + preprocess + infer + top-5) vs model only")
    ax.legend(fontsize=8, loc="upper left")


# --------------------------------------------------------------------------------------------------- child process


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
    """Child process entry point: load the runtime (timed), then answer commands until ``stop``."""
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
        self.batch: np.ndarray | None = None
        self.classifier: Any = None

    def load(self) -> dict[str, Any]:
        import importlib

        from ppdeploy.runtimes import RUNTIMES

        cls = RUNTIMES[self.spec.backend]
        for module in cls.requires:  # import cost is not load cost
            importlib.import_module(module)
        baseline = peak_rss_mb()
        started = time.perf_counter()
        self.runtime = cls(self.spec.artifact_dir, device=self.spec.device, threads=self.spec.threads,
                           **self.spec.options)
        seconds = time.perf_counter() - started
        return {"load_seconds": seconds, "baseline_rss_mb": baseline, "details": dict(self.runtime.details)}

    def cmd_set_input(self, batch: np.ndarray) -> None:
        self.batch = np.ascontiguousarray(batch)

    def cmd_time(self, calls: int, untimed: int = 0) -> list[float]:
        for _ in range(untimed):
            self.runtime.infer(self.batch)
        return time_calls(self.runtime.infer, self.batch, calls)

    def cmd_peak_rss(self) -> float:
        return peak_rss_mb()

    def cmd_overhead(self, calls: int, block: int = 10) -> dict[str, Any]:
        raw_api, raw_infer = RAW_APIS[self.spec.label](self.runtime, self.spec.artifact_dir, self.spec.threads)
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

    def cmd_e2e(self, folder: str, batch_size: int) -> dict[str, Any]:
        from ppdeploy.images import list_images

        classifier = self._classifier()
        files = [str(p) for p in list_images(folder)]
        started = time.perf_counter()
        names = [record["filename"] for batch in classifier.predict(folder, batch_size=batch_size) for record in batch]
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images": len(files), "ordered": names == files}

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
                                         fmt=self.spec.fmt, device=self.spec.device, threads=self.spec.threads)
            self.classifier.runtime.close()  # one loaded model per child: use the one that was timed
            self.classifier.runtime = self.runtime
        return self.classifier

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()


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


# --------------------------------------------------------------------------------------------------- raw APIs


def _raw_openvino(runtime: Any, artifact_dir: str, threads: int) -> tuple[str, Callable[[np.ndarray], Any]]:
    """The same IR compiled with the same properties, called through one InferRequest (no copy, no checks)."""
    import openvino as ov

    from ppdeploy.artifacts import artifact_model_file
    from ppdeploy.runtimes.ov import compile_config

    core = ov.Core()
    precision = runtime.details.get("inference_precision", "f32")
    hint = runtime.details.get("performance_hint", "LATENCY")
    compiled = core.compile_model(core.read_model(str(artifact_model_file(artifact_dir))), "CPU",
                                  compile_config(precision, threads, hint, "CPU"))
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray) -> Any:
        request.infer({0: batch})
        return request.get_output_tensor(0).data

    return "openvino InferRequest.infer", infer


def _raw_onnxruntime(runtime: Any, artifact_dir: str, threads: int) -> tuple[str, Callable[[np.ndarray], Any]]:
    """A second InferenceSession with the wrapper's options, called through ``session.run``."""
    import onnxruntime as ort

    from ppdeploy.artifacts import artifact_model_file

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(artifact_model_file(artifact_dir)), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return "onnxruntime InferenceSession.run", lambda batch: session.run([output_name], {input_name: batch})[0]


# Rows whose wrapper overhead is measured: the fp32 artifacts of the backends with a direct Python API.
RAW_APIS: dict[str, Callable[[Any, str, int], tuple[str, Callable[[np.ndarray], Any]]]] = {
    "openvino": _raw_openvino,
    "onnx": _raw_onnxruntime,
}


# --------------------------------------------------------------------------------------------------- orchestration


def run_bench(model: str | Path = "ResNet50", backends: str | Sequence[str] = "paddle,onnx,openvino",
              settings: BenchSettings | None = None, *, synthetic: bool = False, fmt: str = "json",
              images: str | Path | None = None, log: Log | None = None) -> BenchReport:
    """Benchmark ``backends`` of ``model`` and return the report.

    Args:
        model: zoo name or Paddle model folder.
        backends: ``all`` or a comma list (backends, targets, ``openvino-bf16``); ``paddle`` is always added.
        settings: batch sizes, threads, iterations, parity and e2e options.
        synthetic: seeded synthetic weights for a zoo name.
        fmt: Paddle format of a synthetic export.
        images: folder of photos for the e2e run (``settings.e2e_passes > 0``); default: 64 sample photos.
        log: progress lines.

    Each backend runs in a child process started with ``spawn``: a script calling this must guard its entry
    point with ``if __name__ == "__main__":``.
    """
    from ppdeploy.models.resolve import resolve_model

    settings = settings or BenchSettings()
    say = log or (lambda line: None)
    resolved = resolve_model(model, synthetic=synthetic, fmt=fmt)
    variants = expand_variants(backends)
    report = BenchReport(resolved.name, resolved.synthetic, settings, machine_info(settings.threads),
                         [BackendInfo(v.label, v.profile) for v in variants])
    artifacts = prepare_artifacts(resolved, variants, report, say)
    if settings.parity_images:
        check_parity(resolved, variants, artifacts, report, settings, say)
    runnable = [v for v in variants if report.info(v.label).status == "ok"]
    with _workers(runnable, artifacts, report, settings, str(model), synthetic, fmt, say) as workers:
        measure_model_only(workers, report, settings, _input_batch(resolved, max(settings.batch_sizes)), say)
        measure_overhead(workers, report, settings, say)
        if settings.e2e_passes:
            with _image_folder(images) as folder:
                count = _count_images(folder)
                report.images_dir = f"{images} ({count} images)" if images else f"{count} sample photos (JPEG+PNG)"
                measure_e2e(workers, report, settings, folder, say)
    report.machine["loadavg_after"] = _loadavg()
    return report


def prepare_artifacts(resolved: Any, variants: Sequence[Variant], report: BenchReport, say: Log) -> dict[str, Path]:
    """Convert (or reuse) every variant's artifact in this process; unavailable rows become ``skipped``."""
    from ppdeploy.converters.pipeline import convert_model
    from ppdeploy.runtimes.select import availability, resolve_backend

    artifacts: dict[str, Path] = {}
    for variant in variants:
        info = report.info(variant.label)
        choice = resolve_backend(variant.choice)
        ok, reason = availability(choice)
        if not ok:
            info.status, info.reason = "skipped", reason
            continue
        try:
            artifacts[variant.label] = (resolved.paddle.directory if choice.target is None
                                        else convert_model(resolved, choice.target, log=say))
        except DeployError as exc:
            info.status, info.reason = "error", str(exc)
            continue
        if choice.target is not None:
            info.conversion_chain = conversion_chain(artifacts[variant.label])
            info.conversion_seconds = info.conversion_chain[-1][1] if info.conversion_chain else None
    return artifacts


def conversion_chain(artifact_dir: Path) -> list[tuple[str, float]]:
    """``[(target, seconds), ...]`` from the Paddle model to this artifact, read from the manifests."""
    from ppdeploy.artifacts import load_manifest
    from ppdeploy.converters.base import TARGETS

    chain: list[tuple[str, float]] = []
    directory: Path | None = Path(artifact_dir)
    while directory is not None and (directory / "manifest.json").is_file():
        manifest = load_manifest(directory)
        target = TARGETS.get(str(manifest.get("target")))
        chain.insert(0, (str(manifest.get("target")), float(manifest.get("conversion_seconds") or 0.0)))
        if target is None:
            break
        source = target.source
        if source is None and manifest.get("source_format") not in target.paddle_formats:
            source = target.fallback
        directory = directory.parent / source if source else None
    return chain


def check_parity(resolved: Any, variants: Sequence[Variant], artifacts: dict[str, Path], report: BenchReport,
                 settings: BenchSettings, say: Log) -> None:
    """Judge every runnable row against its parity profile on ``settings.parity_images`` held-out judge photos."""
    from ppdeploy.parity import PROFILES, ParityChecker
    from ppdeploy.samples import builtin_set

    say(f"parity: reference outputs on {settings.parity_images} judge photos ...")
    checker = ParityChecker(resolved, builtin_set("judge", settings.parity_images), threads=settings.threads)
    for variant in variants:
        info = report.info(variant.label)
        if info.status != "ok" or variant.label == REFERENCE:
            continue
        say(f"parity: {variant.label} ({variant.profile} profile) ...")
        try:
            with _make_runtime(variant, artifacts[variant.label], settings.threads) as runtime:
                result = checker.check(variant.label, runtime, PROFILES[variant.profile])
        except BackendUnavailableError as exc:
            info.status, info.reason = "skipped", str(exc)
            continue
        except DeployError as exc:
            info.parity = {"status": "error", "profile": variant.profile, "reasons": [str(exc)], "metrics": None}
            continue
        metrics = dataclasses.asdict(result.metrics) if result.metrics else None
        if metrics:
            metrics.pop("flipped", None)
            metrics.pop("near_ties", None)
        info.parity = {"status": result.status, "profile": result.profile, "reasons": result.reasons,
                       "metrics": metrics}


def _make_runtime(variant: Variant, artifact_dir: Path, threads: int) -> Any:
    from ppdeploy.runtimes import RUNTIMES
    from ppdeploy.runtimes.select import resolve_backend

    backend = resolve_backend(variant.choice).backend
    return RUNTIMES[backend](artifact_dir, device=_device(backend), threads=threads, **variant.options)


def _device(backend: str) -> str:
    """CPU wherever the backend has it (a GPU-only backend, TensorRT, runs on its GPU)."""
    from ppdeploy.runtimes import RUNTIMES

    devices = RUNTIMES[backend].devices
    return "cpu" if "cpu" in devices else devices[0]


@contextlib.contextmanager
def _workers(variants: Sequence[Variant], artifacts: dict[str, Path], report: BenchReport, settings: BenchSettings,
             model: str, synthetic: bool, fmt: str, say: Log) -> Iterator[dict[str, Worker]]:
    """Start one child per row, one after the other (load times must not compete), and stop them all after."""
    from ppdeploy.runtimes.select import resolve_backend

    workers: dict[str, Worker] = {}
    try:
        for variant in variants:
            info = report.info(variant.label)
            backend = resolve_backend(variant.choice).backend
            spec = WorkerSpec(variant.label, backend, variant.choice, str(artifacts[variant.label]), _device(backend),
                              settings.threads, dict(variant.options), model, synthetic, fmt)
            say(f"loading {variant.label} in its own process ...")
            try:
                worker = Worker(spec)
            except DeployError as exc:
                info.status = "skipped" if isinstance(exc, BackendUnavailableError) else "error"
                info.reason = str(exc)
                continue
            workers[variant.label] = worker
            info.load_seconds = worker.ready["load_seconds"]
            info.baseline_rss_mb = worker.ready["baseline_rss_mb"]
            info.details = worker.ready["details"]
            info.runs_as = runs_as(info.details)
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


def runs_as(details: dict[str, str]) -> str:
    """What a runtime reports it runs: artifact precision, compute precision, provider (``int8, f32 compute``)."""
    parts = [details.get("precision", "?")]
    if details.get("inference_precision"):
        parts.append(f"{details['inference_precision']} compute")
    if details.get("provider"):
        parts.append(details["provider"].removesuffix("ExecutionProvider"))
    if details.get("onednn") == "on":
        parts.append("oneDNN")
    return ", ".join(parts)


def measure_model_only(workers: dict[str, Worker], report: BenchReport, settings: BenchSettings, batch: np.ndarray,
                       say: Log) -> None:
    """Warm up, then time every worker at every batch size in interleaved, rotating rounds; record peak RSS."""
    per_round = max(1, math.ceil(settings.iters / settings.rounds))
    for batch_size in settings.batch_sizes:
        say(f"batch {batch_size}: warm-up and {settings.iters} timed calls per backend ...")
        results = {label: BenchResult(label, batch_size, []) for label in workers}
        live = _call_each(workers, report, "set_input", batch=_tile(batch, batch_size))
        live = _call_each({k: workers[k] for k in live}, report, "time", calls=settings.warmup)
        remaining = settings.iters
        for round_index in range(settings.rounds):
            calls = min(per_round, remaining)
            if calls <= 0:
                break
            remaining -= calls
            order = live[round_index % len(live):] + live[:round_index % len(live)] if live else []
            for label in order:
                time.sleep(settings.settle_s)
                results[label].latencies_ms += _safe_call(workers[label], report, "time", calls=calls, untimed=1) or []
        report.results += [results[label] for label in live if results[label].latencies_ms]
    for label, worker in workers.items():
        report.info(label).peak_rss_mb = _safe_call(worker, report, "peak_rss")


def _call_each(workers: dict[str, Worker], report: BenchReport, command: str, **kwargs: Any) -> list[str]:
    """Send ``command`` to every worker; return the labels that answered (the rest are marked ``error``)."""
    answered = []
    for label, worker in workers.items():
        if report.info(label).status == "ok":
            _safe_call(worker, report, command, **kwargs)
            if report.info(label).status == "ok":
                answered.append(label)
    return answered


def _safe_call(worker: Worker, report: BenchReport, command: str, **kwargs: Any) -> Any:
    info = report.info(worker.spec.label)
    if info.status != "ok":
        return None
    try:
        return worker.call(command, **kwargs)
    except DeployError as exc:
        info.status, info.reason = "error", f"{command}: {exc}"
        return None


def measure_overhead(workers: dict[str, Worker], report: BenchReport, settings: BenchSettings, say: Log) -> None:
    """Runtime.infer against the backend's own API at batch 1, for the rows in ``RAW_APIS``."""
    if not settings.overhead_iters:
        return
    for label, worker in workers.items():
        if label not in RAW_APIS or report.info(label).status != "ok":
            continue
        say(f"wrapper overhead: {label} ...")
        answer = _safe_call(worker, report, "overhead", calls=settings.overhead_iters)
        if answer:
            report.overhead.append(Overhead(label, answer["wrapper_ms"], answer["raw_ms"], answer["raw_api"]))


def measure_e2e(workers: dict[str, Worker], report: BenchReport, settings: BenchSettings, folder: Path,
                say: Log) -> None:
    """Whole-pipeline passes over ``folder`` per row and batch size, interleaved, plus the serial-loop anchor."""
    for batch_size in settings.batch_sizes:
        say(f"end to end, batch {batch_size}: {settings.e2e_passes} timed passes per pipeline ...")
        rows = {label: E2EResult(label, batch_size, 0, []) for label in workers}
        anchor = E2EResult(ANCHOR, batch_size, 0, [])
        jobs = [(label, "e2e", rows[label]) for label in workers]
        jobs += [(REFERENCE, "serial", anchor)] if REFERENCE in workers else []
        for pass_index in range(settings.e2e_passes + 1):  # pass 0 warms up (and builds the Classifier)
            for label, command, row in jobs[pass_index % len(jobs):] + jobs[:pass_index % len(jobs)]:
                time.sleep(settings.settle_s)
                answer = _safe_call(workers[label], report, command, folder=str(folder), batch_size=batch_size)
                if answer and pass_index:
                    row.images, row.ordered = answer["images"], row.ordered and answer["ordered"]
                    row.pass_seconds.append(answer["seconds"])
        report.e2e += [row for row in rows.values() if row.pass_seconds]
        if anchor.pass_seconds:
            report.anchor.append(anchor)


def _input_batch(resolved: Any, size: int) -> np.ndarray:
    """Preprocessed real photos: what every backend is timed on."""
    from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
    from ppdeploy.samples import sample_images

    default = PreprocessConfig.from_spec(resolved.spec) if resolved.spec else PreprocessConfig()
    cfg = PreprocessConfig.for_model_dir(resolved.paddle.directory, default)
    return preprocess_batch(sample_images(size), cfg)


def _tile(batch: np.ndarray, size: int) -> np.ndarray:
    reps = math.ceil(size / len(batch))
    return np.ascontiguousarray(np.concatenate([batch] * reps)[:size])


@contextlib.contextmanager
def _image_folder(images: str | Path | None, count: int = 64) -> Iterator[Path]:
    """The user's folder, or ``count`` sample photos written to a temporary folder for the run."""
    if images is not None:
        yield Path(images)
        return
    from ppdeploy.samples import write_sample_folder

    with tempfile.TemporaryDirectory(prefix="ppdeploy-bench-") as tmp:
        write_sample_folder(tmp, count)
        yield Path(tmp)


def _count_images(folder: Path) -> int:
    from ppdeploy.images import list_images

    return len(list_images(folder))


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, ISA flags, core count, load average and library versions, for the report's header."""
    from ppdeploy.artifacts import tool_versions
    from ppdeploy.doctor import cpu_info, gpus

    cpu, isa = cpu_info()
    return {"cpu": cpu, "isa": [name for name, present in isa.items() if present], "cores": os.cpu_count(),
            "threads": threads, "gpus": [g["name"] for g in gpus()], "python": platform.python_version(),
            "versions": {k: v for k, v in tool_versions().items() if v}, "loadavg_before": _loadavg()}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
