"""This CPU's dense-compute ceilings, and how much of them ResNet50's rows use, for docs/benchmarks.md.

    python scripts/ceiling.py [--model ResNet50] [--backends onnx,openvino,openvino-int8,onnx-int8]
                              [--batch-sizes 1,8] [--bench-json F] [--json out.json]

Measures the ceilings (``ppdeploy.bench.ceiling``), runs ``deploy bench MODEL --synthetic --no-parity`` for the
rows (or reads a report written by ``deploy bench --json F``: ``--bench-json F``), measures the ceilings again, and
prints each row's fraction ``model GMACs x images/s / ceiling`` of the ceiling of the precision it computes in
(the higher of the two ceiling runs: the machine is shared). Uses $PPDEPLOY_HOME as the cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ppdeploy.bench.ceiling import CeilingReport, measure_ceilings
from ppdeploy.models.macs import gmacs

ROWS = "onnx,openvino,openvino-int8,onnx-int8"


def bench_report(model: str, backends: str, batch_sizes: str, bench_json: Path | None) -> dict:
    """``deploy bench``'s JSON report: read from ``bench_json``, or from a run made now."""
    if bench_json:
        return json.loads(bench_json.read_text())
    with tempfile.TemporaryDirectory(prefix="ppdeploy-ceiling-") as tmp:
        out = Path(tmp) / "bench.json"
        command = ["deploy", "bench", model, "--synthetic", "--no-parity", "--backends", backends,
                   "--batch-sizes", batch_sizes, "--json", str(out)]
        print("$ " + " ".join(command), file=sys.stderr)
        done = subprocess.run(command, stdout=subprocess.DEVNULL)
        if not out.exists():
            sys.exit(f"deploy bench failed (exit {done.returncode}); run the command above to see why")
        return json.loads(out.read_text())


def best_of(first: CeilingReport, second: CeilingReport) -> CeilingReport:
    """Per (backend, precision), the higher of two measurements: others' work only ever slows a run down."""
    merged = CeilingReport(first.cpu, first.isa, first.threads, skipped={**second.skipped, **first.skipped})
    for ceiling in first.ceilings:
        other = second.get(ceiling.backend, ceiling.precision)
        merged.ceilings.append(max((c for c in (ceiling, other) if c), key=lambda c: c.gmacs_per_s))
    return merged


def fraction_rows(bench: dict, ceilings: CeilingReport, model_gmacs: float) -> list[dict]:
    """One record per (row, batch size, mode): images/s and the fraction of its precision's ceiling."""
    details = {b["label"]: b.get("details", {}) for b in bench["backends"]}
    rows = []
    for mode, results in (("latency", bench["results"]), ("throughput", bench.get("throughput", []))):
        for result in results:
            fields = ceilings.row_fields(model_gmacs, result["images_per_s"], details.get(result["backend"], {}))
            rows.append({"backend": result["backend"], "batch_size": result["batch_size"], "mode": mode,
                         "images_per_s": round(result["images_per_s"], 2), **fields})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--backends", default=ROWS)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--bench-json", type=Path)
    parser.add_argument("--json", type=Path, help="also write everything as JSON")
    args = parser.parse_args()

    before = measure_ceilings()
    bench = bench_report(args.model, args.backends, args.batch_sizes, args.bench_json)
    after = measure_ceilings()
    ceilings = best_of(before, after)
    model_gmacs = gmacs(args.model)
    rows = fraction_rows(bench, ceilings, model_gmacs)

    print("Ceilings, first run:\n" + before.render() + "\nCeilings, second run:\n" + after.render())
    print(f"\n{args.model}: {model_gmacs:.3f} GMACs per image; fraction = GMACs x images/s / ceiling (best of "
          "the two runs)\n")
    print("| row | batch | mode | images/s | ceiling | fraction |\n|---|---|---|---|---|---|")
    for row in rows:
        ceiling = f"{row['ceiling_precision']} {row['ceiling_gmacs_per_s']}" if row["ceiling_precision"] else "-"
        fraction = f"{row['ceiling_fraction']:.1%}" if row["ceiling_fraction"] is not None else "-"
        print(f"| {row['backend']} | {row['batch_size']} | {row['mode']} | {row['images_per_s']:.1f} | "
              f"{ceiling} | {fraction} |")
    if args.json:
        args.json.write_text(json.dumps({"ceilings": [before.to_dict(), after.to_dict()], "gmacs": model_gmacs,
                                         "rows": rows, "machine": bench.get("machine")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
