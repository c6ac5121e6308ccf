"""The benchmark report as markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ppdeploy.bench.report import ANCHOR, BackendInfo, BenchReport


def render_report(report: BenchReport) -> str:
    """Markdown tables: the seed-like summary, percentiles, per-backend facts, e2e, overhead, targets."""
    settings = report.settings
    head = (f"{report.model}{' (synthetic weights)' if report.synthetic else ''}: {settings.threads} threads for "
            f"every backend, {settings.warmup} warm-up + {settings.iters} timed calls per cell in "
            f"{settings.rounds} interleaved rounds; images/s = batch / p50 latency; x = images/s over Paddle "
            "Inference fp32 (oneDNN) at the same batch size.")
    sections = [head, _machine_line(report.machine), _summary_table(report), _percentile_table(report),
                _backend_table(report)]
    if report.throughput:
        sections.append(_throughput_table(report))
    if report.ceiling is not None and report.model_gmacs:
        sections.append(_ceiling_table(report))
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


def _throughput_table(report: BenchReport) -> str:
    head = ["Backend", "Batch", "Parity", "Latency mode img/s", "Throughput mode img/s", "In flight",
            "Mean in-flight ms", "Throughput / latency"]
    rows = []
    for row in report.throughput:
        latency = report.model_only(row.backend, row.batch_size)
        rows.append([row.backend, str(row.batch_size), parity_mark(report.info(row.backend)),
                     _num(latency if math.isfinite(latency) else None, "{:.1f}"), f"{row.images_per_s:.1f}",
                     str(row.requests), f"{row.mean_latency_ms:.1f}",
                     f"{row.images_per_s / latency:.2f}x" if math.isfinite(latency) else "-"])
    return ("Latency mode (one request at a time, every core on it) beside throughput mode (several requests in "
            f"flight, the cores shared; {report.settings.iters} batches streamed)\n\n" + _markdown(head, rows))


def _ceiling_table(report: BenchReport) -> str:
    head = ["Backend", "Batch", "Mode", "Parity", "img/s", "GMAC/s", "Ceiling", "Fraction of ceiling"]
    rows = []
    for row in report.results:
        images_per_s, mode = report.best_images_per_s(row.backend, row.batch_size)
        fields = report.ceiling_fields(row.backend, images_per_s)
        if not fields.get("ceiling_fraction"):
            continue
        rows.append([row.backend, str(row.batch_size), mode, parity_mark(report.info(row.backend)),
                     f"{images_per_s:.1f}", f"{images_per_s * report.model_gmacs:.0f}",
                     f"{fields['ceiling_precision']} {fields['ceiling_gmacs_per_s']:.0f}",
                     f"{fields['ceiling_fraction']:.1%}"])
    return (f"Against this machine's measured ceiling ({report.model_gmacs:.2f} GMAC per image; each row in its "
            "faster mode, judged by the ceiling of the precision it computes in)\n\n" + report.ceiling.render()
            + "\n\n" + _markdown(head, rows))


def _e2e_table(report: BenchReport) -> str:
    head = ["Pipeline", "Batch", "Mode", "Parity", "End-to-end img/s", "Model-only img/s", "E2E / model-only",
            "x serial loop", "CPU busy", "Order kept"]
    anchors = {a.batch_size: a.images_per_s for a in report.anchor}
    cores = report.machine.get("cores") or 1
    rows = []
    for row in [*report.anchor, *report.e2e]:
        model_only = report.model_only_for(row) if row.backend != ANCHOR else math.nan
        info = report.info(row.backend)
        busy = row.cpu_busy(cores)
        rows.append([row.backend, str(row.batch_size), row.mode if row.backend != ANCHOR else "latency",
                     parity_mark(info) if info else "-",
                     f"{row.images_per_s:.1f}", _num(model_only if math.isfinite(model_only) else None, "{:.1f}"),
                     f"{row.images_per_s / model_only:.1%}" if math.isfinite(model_only) else "-",
                     f"{row.images_per_s / anchors[row.batch_size]:.2f}" if row.batch_size in anchors else "-",
                     f"{busy:.0%}" if math.isfinite(busy) else "-", "yes" if row.ordered else "NO"])
    fast = " with --fast-decode (the anchor decodes exactly)" if report.settings.fast_decode else ""
    title = (f"End to end over {report.images_dir or 'the image folder'}{fast} (decode + preprocess + infer + "
             "top-5, Classifier.predict; model-only in the same mode; anchor: decode → preprocess → Paddle "
             "Inference fp32, batch after batch)")
    table = title + "\n\n" + _markdown(head, rows)
    if report.stages:
        stage_head = ["Pipeline", "Batch", *[f"{stage} ms/img" for stage in report.stages[0].seconds], "total"]
        stage_rows = [[st.backend, str(st.batch_size), *[f"{v:.2f}" for v in st.per_image_ms().values()],
                       f"{sum(st.per_image_ms().values()):.2f}"] for st in report.stages]
        table += ("\n\nWhere an image's time goes (one thread, no overlap: read, decode, PaddleClas preprocessing "
                  "per image; inference and top-k per batch, divided by its images)\n\n"
                  + _markdown(stage_head, stage_rows))
    return table


def _overhead_table(report: BenchReport) -> str:
    head = ["Backend", "Runtime.infer p50 ms", "Raw API p50 ms", "Raw API", "Overhead"]
    rows = [[o.backend, f"{o.wrapper_ms:.3f}", f"{o.raw_ms:.3f}", o.raw_api, f"{o.fraction:+.2%}"]
            for o in report.overhead]
    return "Runtime wrapper overhead at batch 1 (calls alternated in blocks)\n\n" + _markdown(head, rows)


def _targets_table(report: BenchReport) -> str:
    rows = [[t["target"], t["shown"], t["goal"], t["verdict"]] for t in report.targets()]
    return "Targets measured in this run\n\n" + _markdown(["Target", "Measured", "Goal", "Verdict"], rows)
