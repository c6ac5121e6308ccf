"""``deploy optimize``: the fastest deployment that passes parity, measured on this machine, and packaged.

Every available target is converted; each is judged by the parity checker on held-out judge photos (its verdicts,
nothing of our own); the passing ones (and Paddle itself, the reference) are timed by the bench in latency mode
and throughput mode over a batch-size ladder that stops climbing when images/s grows by less than 5%; the strategy
picks among the passing candidates. The decision is kept in the cache (``--backend auto`` uses it on this machine)
and, with ``output``, written as a deployment package (``ppdeploy.optimize.package``).
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppdeploy.errors import DeployError, one_line
from ppdeploy.optimize.decide import Candidate, Strategy, candidates, choose, parse_strategy
from ppdeploy.optimize.package import (
    DECISION_FILE,
    FORMAT,
    MODEL_DIR,
    is_package,
    machine_fingerprint,
    save_decision,
)

Log = Callable[[str], None]
AUTO_BATCH_SIZES = (1, 4, 8, 16, 32)


@dataclass
class OptimizeResult:
    report: Any  # BenchReport
    candidates: list[Candidate]
    chosen: Candidate | None
    strategy: Strategy
    decision: dict[str, Any]
    package: Path | None = None

    def render(self) -> str:
        return render_summary(self)


def parse_batch_sizes(text: str) -> tuple[tuple[int, ...], bool]:
    """``auto`` → the ladder and sweep on; ``1,8`` → those sizes, all measured."""
    if text.strip() == "auto":
        return AUTO_BATCH_SIZES, True
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise DeployError(one_line(f"--batch-sizes '{text}'", "not 'auto' or a comma list of positive integers",
                                   "e.g. auto or 1,8"))
    return tuple(sorted(set(sizes))), False


def check_output(output: Path | None) -> None:
    """An existing non-empty folder that is not a package is never overwritten."""
    if output is not None and output.exists() and not (output.is_dir() and (is_package(output)
                                                                             or not any(output.iterdir()))):
        raise DeployError(one_line(str(output), "exists and is not a deployment package",
                                   "give a new folder, an empty one, or a package to replace"))


def optimize(model: str | Path, *, synthetic: bool = False, fmt: str = "json", targets: str = "all",
             strategy: str = "throughput", batch_sizes: str = "auto", images: str | Path | None = None,
             output: str | Path | None = None, threads: int | None = None, iters: int = 12,
             parity_images: int = 120, log: Log | None = None) -> OptimizeResult:
    """Convert, judge, time and choose; return the result (``chosen`` is None when nothing passed).

    Args:
        model: zoo name or Paddle model folder.
        targets: ``all`` or a comma list of targets/variants (``paddle`` always takes part).
        strategy: ``throughput``, ``latency`` or ``latency-budget=MS``.
        batch_sizes: ``auto`` (a ladder, stopped when images/s gains < 5%) or a comma list.
        images: the user's judge photos (default: the built-in held-out judge set).
        output: write the deployment package here.
        iters: timed calls per row, batch size and mode.
    """
    import os

    from ppdeploy.bench import BenchSettings, run_bench
    from ppdeploy.models.resolve import resolve_model
    from ppdeploy.samples import image_set

    chosen_strategy = parse_strategy(strategy)  # cheap checks before any export or conversion
    sizes, sweep = parse_batch_sizes(batch_sizes)
    out = Path(output) if output is not None else None
    check_output(out)
    if images is not None:
        image_set("judge", images, parity_images)  # the user's folder decodes
    say = log or (lambda line: None)
    cores = threads or os.cpu_count() or 1
    settings = BenchSettings(batch_sizes=sizes, threads=cores, warmup=2, iters=iters, rounds=min(3, iters),
                             parity_images=parity_images, overhead_iters=0, throughput=True, sweep=sweep,
                             only_passing=True, ceiling=False)
    report = run_bench(model, targets, settings, synthetic=synthetic, fmt=fmt, judge_images=images, log=say)
    found = candidates(report)
    chosen = choose(found, chosen_strategy)
    resolved = resolve_model(model, synthetic=synthetic, fmt=fmt)
    decision = decision_record(resolved, report, found, chosen, chosen_strategy, str(model), targets, batch_sizes,
                               images)
    result = OptimizeResult(report, found, chosen, chosen_strategy, decision)
    if chosen is None:
        return result
    from ppdeploy.converters.pipeline import model_key

    save_decision(model_key(resolved), decision)
    if out is not None:
        say(f"writing the deployment package to {out} ...")
        result.package = write_package(out, resolved, chosen, report, decision)
    return result


def decision_record(resolved: Any, report: Any, found: list[Candidate], chosen: Candidate | None,
                    strategy: Strategy, model_arg: str, targets: str, batch_sizes: str,
                    images: str | Path | None) -> dict[str, Any]:
    from ppdeploy import __version__
    from ppdeploy.registry import resolve

    choice = None
    if chosen is not None:
        record = resolve(chosen.label, "cpu")
        choice = {**chosen.to_dict(), "backend": record.backend, "target": record.target}
    command = (f"deploy optimize {model_arg}{' --synthetic' if resolved.synthetic else ''} --targets {targets} "
               f"--strategy {strategy} --batch-sizes {batch_sizes}" + (f" --images {images}" if images else ""))
    return {"format": FORMAT, "ppdeploy": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": resolved.name, "synthetic": resolved.synthetic, "argument": model_arg},
            "machine": machine_fingerprint(), "versions": report.machine.get("versions", {}),
            "strategy": str(strategy), "command": command, "choice": choice,
            "candidates": [c.to_dict() for c in found],
            "rows": [{"label": b.label, "profile": b.profile, "status": b.status, "reason": b.reason,
                      "parity": b.parity_status, "runs_as": b.runs_as} for b in report.backends]}


def write_package(out: Path, resolved: Any, chosen: Candidate, report: Any, decision: dict[str, Any]) -> Path:
    """The package folder, staged and renamed into place in one step."""
    from ppdeploy.bench import write_chart
    from ppdeploy.fsutil import staging_dir
    from ppdeploy.preprocess import YAML_NAMES

    target = decision["choice"]["target"]
    with staging_dir(out) as tmp:
        if target is None:  # Paddle itself won: the model folder is the artifact
            source = resolved.paddle.directory
        else:
            from ppdeploy.converters.pipeline import convert_model

            source = convert_model(resolved, target)  # cached: only finds it
        shutil.copytree(source, tmp / MODEL_DIR, ignore=shutil.ignore_patterns(".*"))
        yaml = next((resolved.paddle.directory / name for name in YAML_NAMES
                     if (resolved.paddle.directory / name).is_file()), None)
        if yaml is not None:
            shutil.copy2(yaml, tmp / "inference_cls.yaml")
        (tmp / DECISION_FILE).write_text(json.dumps(decision, indent=2), encoding="utf-8")
        (tmp / "bench.json").write_text(report.to_json(), encoding="utf-8")
        write_chart(report, tmp / "bench.png")
        if report.parity_report is not None:
            (tmp / "parity.json").write_text(report.parity_report.to_json(), encoding="utf-8")
            (tmp / "parity.junit.xml").write_text(report.parity_report.to_junit(), encoding="utf-8")
        (tmp / "README.md").write_text(package_readme(out, decision, render_summary_rows(decision)),
                                       encoding="utf-8")
    return out


def package_readme(out: Path, decision: dict[str, Any], table: str) -> str:
    choice, model = decision["choice"], decision["model"]
    machine = decision["machine"]
    return f"""# Deployment package: {model['name']}{' (synthetic weights)' if model['synthetic'] else ''}

Chosen by `deploy optimize` on {decision['created']} with strategy `{decision['strategy']}`:
**{choice['label']}** at batch {choice['batch_size']} in {choice['mode']} mode
({choice['images_per_s']:.1f} images/s; parity {choice['parity']}).

Measured on: {machine['cpu']}, {machine['cores']} cores, ISA {' '.join(machine['isa'])}.
On another machine the choice may not hold: `deploy run`/`serve` say so; re-run the decision there.

{table}

## Run it

```bash
deploy run --model {out} --images photos/
deploy serve {out}
python -c "from ppdeploy import Classifier; print(next(Classifier('{out}').predict('photos/')))"
```

## Reproduce the decision

```bash
{decision['command']} -o {out}
```

Files: `decision.json` (machine, candidates, measurements, strategy, choice), `{MODEL_DIR}/` (the artifact and its
manifest), `inference_cls.yaml` (preprocessing), `parity.json` / `parity.junit.xml` (verdicts on held-out judge
photos), `bench.json` / `bench.png` (every measurement).
"""


def render_summary_rows(decision: dict[str, Any]) -> str:
    """Markdown: one line per row (candidate family) with its verdict, best images/s, its p99/in-flight ms, and
    which one was chosen."""
    choice = decision.get("choice") or {}
    head = "| candidate | parity | runs as | best img/s | at batch, mode | latency ms | chosen |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for row in decision["rows"]:
        mine = [c for c in decision["candidates"] if c["label"] == row["label"]]
        best = max(mine, key=lambda c: c["images_per_s"], default=None)
        verdict = row["parity"] if row["status"] == "ok" else f"{row['status']}: {row['reason'].split(' | ')[0]}"
        chosen = "**yes**" if choice.get("label") == row["label"] else ""
        if best is None:
            lines.append(f"| {row['label']} | {verdict} | {row['runs_as'] or '-'} | - | - | - | {chosen} |")
            continue
        if chosen:
            best = choice
        lines.append(f"| {row['label']} | {verdict} | {row['runs_as'] or '-'} | {best['images_per_s']:.1f} | "
                     f"{best['batch_size']}, {best['mode']}"
                     f"{' (' + str(best['requests']) + ' in flight)' if best['mode'] == 'throughput' else ''} | "
                     f"{best['latency_ms']:.1f} | {chosen} |")
    return "\n".join(lines)


def render_summary(result: OptimizeResult) -> str:
    chosen = result.chosen
    verdict = (f"Chosen ({result.strategy}): {chosen.label} at batch {chosen.batch_size} in {chosen.mode} mode, "
               f"{chosen.images_per_s:.1f} images/s" if chosen else
               f"No candidate passed parity and fits strategy '{result.strategy}': nothing was chosen.")
    where = f"\nPackage: {result.package}" if result.package else ""
    return (f"deploy optimize {result.decision['model']['name']}: candidates, verdicts, speed on this machine\n\n"
            f"{render_summary_rows(result.decision)}\n\n{verdict}{where}")
