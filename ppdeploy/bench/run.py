"""Orchestration of ``deploy bench``: artifacts, parity verdicts, then the timed runs in one child per row.

Fair by construction:

- every backend runs with the same thread count, in a child process of its own (so its peak resident memory is
  its own and nothing accumulates), loaded one at a time (so load times do not compete);
- warm-up calls are excluded, and so is one call at the start of every round (the first call after another
  backend ran meets cold caches);
- the iterations are split into rounds and the rounds interleaved across backends in a rotating order, so
  machine drift (other jobs, thermal limits) hits every backend alike;
- images/s is ``batch / median latency``: a median is what a shared machine can still measure reliably.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.bench.corpus import corpus_folder
from ppdeploy.bench.report import (
    ANCHOR,
    REFERENCE,
    SWEEP_MIN_GAIN,
    BackendInfo,
    BenchReport,
    BenchResult,
    BenchSettings,
    E2EResult,
    Overhead,
    StageResult,
    ThroughputResult,
)
from ppdeploy.bench.worker import Worker, WorkerSpec
from ppdeploy.errors import BackendUnavailableError, DeployError
from ppdeploy.registry import Choice
from ppdeploy.runtimes.base import runs_as

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------- variants


def bench_names() -> list[str]:
    """Every row ``--backends all`` runs: the reference, each target and each run variant (the registry's matrix)."""
    from ppdeploy.registry import matrix_names

    return matrix_names()


def expand_variants(spec: str | Sequence[str]) -> list[Choice]:
    """``all`` or a comma list → rows, the reference first (it is always run: speed-ups need it)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    names = bench_names() if names == ["all"] else names
    return list({choice.label: choice for choice in (make_variant(n) for n in [REFERENCE, *names])}.values())


def make_variant(name: str) -> Choice:
    """The row for a backend, target or variant name; raise ``BackendUnavailableError`` for unknown names."""
    from ppdeploy.registry import resolve

    try:
        return resolve(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(str(exc).replace("choose one of:", "choose 'all' or one of:")) from exc


# --------------------------------------------------------------------------------------------------- orchestration


def run_bench(model: str | Path = "ResNet50", backends: str | Sequence[str] = "paddle,onnx,openvino",
              settings: BenchSettings | None = None, *, synthetic: bool = False, fmt: str = "json",
              images: str | Path | None = None, judge_images: str | Path | None = None,
              log: Log | None = None) -> BenchReport:
    """Benchmark ``backends`` of ``model`` and return the report.

    Args:
        model: zoo name or Paddle model folder.
        backends: ``all`` or a comma list (backends, targets, ``openvino-bf16``); ``paddle`` is always added.
        settings: batch sizes, threads, iterations, parity and e2e options.
        synthetic: seeded synthetic weights for a zoo name.
        fmt: Paddle format of a synthetic export.
        images: photos for the e2e run (``settings.e2e_passes > 0``): a corpus name (``imagenet``, ``phone``:
            ``ppdeploy.bench.corpus``) or a folder; default: the ``imagenet`` corpus.
        judge_images: the user's folder of judge photos for the parity verdicts; default: the built-in judge set.
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
        check_parity(resolved, variants, artifacts, report, settings, say, judge_images)
    runnable = [v for v in variants if report.info(v.label).status == "ok"
                and not (settings.only_passing and report.info(v.label).parity_status not in ("pass", "reference"))]
    with _workers(runnable, artifacts, report, settings, str(model), synthetic, fmt, say) as workers:
        measure_model_only(workers, report, settings, _input_batch(resolved, max(settings.batch_sizes)), say)
        if settings.ceiling:
            measure_ceiling(resolved, runnable, report, settings, say)
        measure_overhead(workers, report, settings, say)
        if settings.e2e_passes:
            with corpus_folder(images) as (folder, described):
                report.images_dir = f"{described} ({_count_images(folder)} images)"
                measure_e2e(workers, report, settings, folder, say)
    report.machine["loadavg_after"] = _loadavg()
    return report


def prepare_artifacts(resolved: Any, variants: Sequence[Choice], report: BenchReport, say: Log) -> dict[str, Path]:
    """Convert (or reuse) every variant's artifact in this process; unavailable rows become ``skipped``."""
    from ppdeploy.converters.pipeline import convert_model

    artifacts: dict[str, Path] = {}
    for choice in variants:
        info = report.info(choice.label)
        ok, reason = choice.availability()
        if not ok:
            info.status, info.reason = "skipped", reason
            continue
        try:
            artifacts[choice.label] = (resolved.paddle.directory if choice.target is None
                                       else convert_model(resolved, choice.target, log=say))
        except DeployError as exc:
            info.status, info.reason = "error", str(exc)
            continue
        if choice.target is not None:
            info.conversion_chain = conversion_chain(artifacts[choice.label])
            info.conversion_seconds = info.conversion_chain[-1][1] if info.conversion_chain else None
    return artifacts


def conversion_chain(artifact_dir: Path) -> list[tuple[str, float]]:
    """``[(target, seconds), ...]`` from the Paddle model to this artifact, read from the manifests."""
    from ppdeploy.artifacts import load_manifest
    from ppdeploy.registry import targets

    chain: list[tuple[str, float]] = []
    directory: Path | None = Path(artifact_dir)
    while directory is not None and (directory / "manifest.json").is_file():
        manifest = load_manifest(directory)
        target = targets().get(str(manifest.get("target")))
        chain.insert(0, (str(manifest.get("target")), float(manifest.get("conversion_seconds") or 0.0)))
        if target is None:
            break
        source = target.source
        if source is None and manifest.get("source_format") not in target.paddle_formats:
            source = target.fallback
        directory = directory.parent / source if source else None
    return chain


def check_parity(resolved: Any, variants: Sequence[Choice], artifacts: dict[str, Path], report: BenchReport,
                 settings: BenchSettings, say: Log, judge_images: str | Path | None = None) -> None:
    """Judge every runnable row against its parity profile on ``settings.parity_images`` held-out judge photos
    (or on the user's ``judge_images``); the full parity report is kept in ``report.parity_report``."""
    from ppdeploy.parity import PROFILES, ParityChecker, finish_report
    from ppdeploy.samples import image_set

    judge = image_set("judge", judge_images, settings.parity_images)
    say(f"parity: reference outputs on {len(judge.images)} judge photos ...")
    checker = ParityChecker(resolved, judge, threads=settings.threads)
    results = []
    for variant in variants:
        info = report.info(variant.label)
        if info.status != "ok" or variant.label == REFERENCE:
            continue
        say(f"parity: {variant.label} ({variant.profile} profile) ...")
        try:
            with _make_runtime(variant, artifacts[variant.label], settings.threads) as runtime:
                result = checker.check(variant.label, runtime, PROFILES[variant.profile])
            results.append(result)
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
    report.parity_report = finish_report(checker, results, [], strict=False)


def _make_runtime(variant: Choice, artifact_dir: Path, threads: int) -> Any:
    return variant.runtime(artifact_dir, device=_device(variant), threads=threads)


def _device(variant: Choice) -> str:
    return variant.record.preferred_device


@contextlib.contextmanager
def _workers(variants: Sequence[Choice], artifacts: dict[str, Path], report: BenchReport, settings: BenchSettings,
             model: str, synthetic: bool, fmt: str, say: Log) -> Iterator[dict[str, Worker]]:
    """Start one child per row, one after the other (load times must not compete), and stop them all after."""
    workers: dict[str, Worker] = {}
    try:
        for variant in variants:
            info = report.info(variant.label)
            spec = WorkerSpec(variant.label, variant.backend, variant.label, str(artifacts[variant.label]),
                              _device(variant), settings.threads, dict(variant.options), model, synthetic, fmt,
                              settings.fast_decode)
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
            info.runs_as = runs_as(info.details, full=True)
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


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
        if settings.throughput:
            measure_throughput(workers, report, settings, batch_size, live, say)
        if settings.sweep and _sweep_done(report, batch_size):
            say(f"batch {batch_size}: images/s grew by less than {SWEEP_MIN_GAIN:.0%}; larger batches not measured")
            break
    for label, worker in workers.items():
        report.info(label).peak_rss_mb = _safe_call(worker, report, "peak_rss")


def measure_throughput(workers: dict[str, Worker], report: BenchReport, settings: BenchSettings, batch_size: int,
                       live: Sequence[str], say: Log) -> None:
    """Each live row again in throughput mode (a second runtime in its child, several requests in flight)."""
    say(f"batch {batch_size}: throughput mode, {settings.iters} batches streamed per backend ...")
    for label in live:
        time.sleep(settings.settle_s)
        answer = _safe_call(workers[label], report, "throughput", calls=settings.iters)
        if answer:
            report.throughput.append(ThroughputResult(label, batch_size, answer["calls"], answer["seconds"],
                                                      answer["requests"]))


def measure_ceiling(resolved: Any, variants: Sequence[Choice], report: BenchReport, settings: BenchSettings,
                    say: Log) -> None:
    """This machine's dense-compute ceiling per precision, through the benchmarked backends that can build the
    probe (OpenVINO, ONNX Runtime), measured between the timed rounds (never during them); zoo models only."""
    from ppdeploy.bench.ceiling import BACKENDS, measure_ceilings
    from ppdeploy.models.macs import gmacs

    if resolved.spec is None:
        return
    backends = [name for name in BACKENDS if any(v.backend == name for v in variants)]
    if not backends:
        return
    say(f"ceiling: dense convolutions through {', '.join(backends)} in fp32 and int8 ...")
    report.model_gmacs = gmacs(resolved.spec.name, resolved.spec.input_size)
    report.ceiling = measure_ceilings(backends, threads=settings.threads)


def _sweep_done(report: BenchReport, batch_size: int) -> bool:
    """Whether the best row's images/s (either mode) grew by less than SWEEP_MIN_GAIN over the previous size."""
    sizes = sorted({r.batch_size for r in report.results})
    if sizes.index(batch_size) == 0:
        return False
    previous = sizes[sizes.index(batch_size) - 1]
    labels = {r.backend for r in report.results}

    def best(size: int) -> float:
        return max([v for label in labels if math.isfinite(v := report.best_images_per_s(label, size)[0])],
                   default=0.0)

    return best(batch_size) < best(previous) * (1 + SWEEP_MIN_GAIN)


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
    """Runtime.infer against the backend's own API at batch 1, for each backend's default (fp32) row whose registry
    record declares a ``raw_call``."""
    from ppdeploy.registry import get_backend

    if not settings.overhead_iters:
        return
    for label, worker in workers.items():
        record = get_backend(worker.spec.backend)
        if label != record.default_target or record.raw_call is None or report.info(label).status != "ok":
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
        mode = "throughput" if settings.throughput else "latency"
        for row in rows.values():
            row.mode = mode
        jobs = [(label, "e2e", rows[label], {"mode": mode}) for label in workers]
        jobs += [(REFERENCE, "serial", anchor, {})] if REFERENCE in workers else []
        for pass_index in range(settings.e2e_passes + 1):  # pass 0 warms up (and builds the Classifier)
            for label, command, row, extra in jobs[pass_index % len(jobs):] + jobs[:pass_index % len(jobs)]:
                time.sleep(settings.settle_s)
                answer = _safe_call(workers[label], report, command, folder=str(folder), batch_size=batch_size,
                                    **extra)
                if answer and pass_index:
                    row.images, row.ordered = answer["images"], row.ordered and answer["ordered"]
                    row.pass_seconds.append(answer["seconds"])
                    row.cpu_seconds.append(answer.get("cpu_seconds", math.nan))
        report.e2e += [row for row in rows.values() if row.pass_seconds]
        if anchor.pass_seconds:
            report.anchor.append(anchor)
    batch_size = max(settings.batch_sizes)
    say(f"end to end: time per stage, batch {batch_size}, one thread ...")
    for label, worker in workers.items():
        answer = _safe_call(worker, report, "stages", folder=str(folder), batch_size=batch_size)
        if answer:
            images = int(answer.pop("images"))
            report.stages.append(StageResult(label, batch_size, images, answer))


def _input_batch(resolved: Any, size: int) -> np.ndarray:
    """Preprocessed real photos: what every backend is timed on."""
    from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
    from ppdeploy.samples import sample_images

    default = resolved.spec.preprocess_config() if resolved.spec else PreprocessConfig()
    cfg = PreprocessConfig.for_model_dir(resolved.paddle.directory, default)
    return preprocess_batch(sample_images(size), cfg)


def _tile(batch: np.ndarray, size: int) -> np.ndarray:
    reps = math.ceil(size / len(batch))
    return np.ascontiguousarray(np.concatenate([batch] * reps)[:size])


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
