"""Render parity_matrix.py's records as the markdown tables of docs/parity.md, judged by today's profiles.

    python scripts/matrix_markdown.py parity-matrix.json [--raw RAW_DIR]

With ``--raw`` (the folder parity_matrix.py wrote with ``--raw``) every row is compared and judged again from its
raw outputs with the current ``ppdeploy.profiles.PROFILES``; without it, the recorded verdicts are shown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def rejudge(row: dict, raw: Path) -> dict:
    from ppdeploy.parity import compare, judge
    from ppdeploy.profiles import PROFILES

    folder = raw / row["model"]
    output = folder / f"{row['backend']}.npy"
    if row["metrics"] is None or not output.is_file():
        return row
    reference = np.load(folder / "reference.npy")
    profile = PROFILES[row["profile"]]
    metrics = compare(reference, np.load(output), [str(i) for i in range(len(reference))], profile.tie_margin)
    reasons, notes = judge(metrics, profile)
    return {**row, "status": "fail" if reasons else "pass", "reasons": reasons, "notes": notes,
            "metrics": dataclasses.asdict(metrics)}


def cell(row: dict) -> str:
    m = row["metrics"]
    if m is None:
        return row["status"]
    mark = {"pass": "PASS", "fail": "FAIL", "skipped": "skip", "error": "ERROR"}[row["status"]]
    if row["profile"] == "fp32":
        return f"{mark} {m['max_abs']:.1e}"
    return f"{mark} {m['mean_tv']:.3f} / {m['max_tv']:.2f} / {len(m['flipped'])}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records", nargs="+")
    parser.add_argument("--raw", type=Path)
    args = parser.parse_args()
    rows = [row for path in args.records for row in json.load(open(path))]
    if args.raw:
        rows = [rejudge(row, args.raw) for row in rows]
    backends = list(dict.fromkeys(row["backend"] for row in rows if row["backend"] != "paddle"
                                  and row["status"] != "skipped"))
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        table[row["model"]][row["backend"]] = cell(row)
    print("| model | " + " | ".join(backends) + " |")
    print("|---" * (len(backends) + 1) + "|")
    for model, cells in table.items():
        print(f"| {model} | " + " | ".join(cells.get(b, "-") for b in backends) + " |")
    print()
    print("| backend | rows | passed | max abs (max) | max TV (max) | mean TV (max) | margin shift (max) | "
          "decisive flips | near-tie flips |")
    print("|---|---|---|---|---|---|---|---|---|")
    for backend in backends:
        judged = [row for row in rows if row["backend"] == backend and row["metrics"]]
        ms = [row["metrics"] for row in judged]
        if not ms:
            continue
        print(f"| {backend} | {len(ms)} | {sum(row['status'] == 'pass' for row in judged)} | "
              f"{max(m['max_abs'] for m in ms):.2e} | {max(m['max_tv'] for m in ms):.2e} | "
              f"{max(m['mean_tv'] for m in ms):.2e} | {max(m['max_margin_shift'] for m in ms):.3f} | "
              f"{sum(len(m['flipped']) for m in ms)} | {sum(len(m['near_ties']) for m in ms)} |")
    failed = [row for row in rows if row["status"] in ("fail", "error")]
    for row in failed:
        print(f"- {row['model']} {row['backend']}: {'; '.join(row['reasons'])}")


if __name__ == "__main__":
    main()
