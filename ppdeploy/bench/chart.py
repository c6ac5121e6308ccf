"""The benchmark report as a PNG bar chart (matplotlib is imported only when a chart is drawn)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ppdeploy.bench.render import parity_mark
from ppdeploy.bench.report import BenchReport


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
