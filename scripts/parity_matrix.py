"""Measure the parity matrix over zoo models on the held-out judge photos, for docs/parity.md.

    python scripts/parity_matrix.py ResNet18_vd ResNet50 ... [--backends all] [--out matrix.json]

Writes one JSON record per (model, backend) with every metric (and the reference margins' distribution), so the
profiles' thresholds can be checked against what the zoo really measures. Uses $PPDEPLOY_HOME as the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np


def check(checker, backend: str):
    """One row, judged by the profile of what it computes in (``openvino-bf16``: skipped without native bf16)."""
    from ppdeploy.parity import PROFILES, profile_for

    return checker.check_backend(backend, profile=profile_for(backend, PROFILES))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--backends", default="all")
    parser.add_argument("--fmt", default="json")
    parser.add_argument("--bf16", action="store_true", help="add OpenVINO bf16 rows")
    parser.add_argument("--out", default="parity-matrix.json")
    parser.add_argument("--raw", help="folder for each row's raw outputs (.npy), to re-judge under other profiles")
    args = parser.parse_args()

    from ppdeploy.converters.pipeline import artifact_root, model_key
    from ppdeploy.models.resolve import resolve_model
    from ppdeploy.parity import ParityChecker, expand_backends, finish_report
    from ppdeploy.samples import builtin_set

    judge = builtin_set("judge")
    records = []
    for name in args.models:
        started = time.perf_counter()
        model = resolve_model(name, synthetic=True, fmt=args.fmt)
        checker = ParityChecker(model, judge)
        ref = checker.reference
        top = np.sort(ref, axis=1)[:, ::-1]
        margins = np.log(np.maximum(top[:, 0], 1e-7)) - np.log(np.maximum(top[:, 1], 1e-7))
        names, _ = expand_backends(args.backends)
        results = []
        for backend in dict.fromkeys(names + (["openvino-bf16"] if args.bf16 else [])):
            result = check(checker, backend)
            results.append(result)
            row = {"model": name, "backend": backend, "status": result.status, "profile": result.profile,
                   "reasons": result.reasons, "notes": result.notes, "seconds": result.seconds,
                   "runs_as": result.details.get("inference_precision") or result.details.get("precision"),
                   "metrics": dataclasses.asdict(result.metrics) if result.metrics else None,
                   "reference_top1_median": float(np.median(top[:, 0])),
                   "reference_margin_quantiles": [float(q) for q in np.quantile(margins, [0.1, 0.25, 0.5, 0.75, 0.9])],
                   "reference_classes": int(len(set(np.argmax(ref, axis=1))))}
            records.append(row)
            m = result.metrics
            line = (f"{name:22s} {backend:14s} {result.status:5s}" + (
                f" max_abs={m.max_abs:.2e} max_tv={m.max_tv:.2e} shift={m.max_margin_shift:.3f} "
                f"dec={m.decisive} dtop1={m.decisive_top1:.3f} top1={m.top1_agreement:.3f} flips={len(m.flipped)} "
                f"ties={len(m.near_ties)}" if m else " " + "; ".join(result.reasons)[:150]) + f" ({result.seconds:.0f}s)")
            print(line, flush=True)
        if args.raw:
            from pathlib import Path

            folder = Path(args.raw) / name
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "reference.npy", checker.reference)
            for label, output in checker.outputs.items():
                np.save(folder / f"{label}.npy", output)
        report = finish_report(checker, results, [], False)
        print(f"{name}: {'PASS' if report.passed else 'FAIL'} in {time.perf_counter() - started:.0f} s, median top-1 "
              f"{np.median(top[:, 0]):.3f}, margins q10/50/90 {np.quantile(margins, [0.1, 0.5, 0.9]).round(3)}, "
              f"{len(set(np.argmax(ref, axis=1)))} classes", flush=True)
        with open(args.out, "w") as fh:
            json.dump(records, fh, indent=1)
        import shutil

        shutil.rmtree(artifact_root() / model_key(model), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
