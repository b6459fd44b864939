"""Several benchmark runs in one table: the median of each metric, then each target's value run by run.

    .venv/bin/python bench/summarize.py bench/results/*.json

The machine is shared and noisy, so one run proves little; docs/benchmarks.md shows this script's output.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import report


def load(paths: list[Path], include_quick: bool) -> list[dict[str, Any]]:
    # The accuracy and sessions benches report other measures: their files are summarized by their own tables.
    others = ("accuracy", "sessions")
    runs = [run for run in (json.loads(path.read_text()) for path in paths) if run["meta"].get("bench") not in others]
    full = [run for run in runs if include_quick or not run["meta"]["options"].get("quick")]
    if len(full) < len(runs):
        print(f"skipping {len(runs) - len(full)} --quick run(s); pass --include-quick to count them")
    if not full:
        raise SystemExit("no runs to summarize")
    shapes = {(run["meta"]["options"].get("workers", 1), run["meta"]["options"].get("store", "memory")) for run in full}
    if len(shapes) > 1:
        raise SystemExit(f"runs of several shapes (workers, store): {sorted(shapes)}; summarize each on its own")
    return sorted(full, key=lambda run: str(run["meta"]["date"]))


def medians(runs: list[dict[str, Any]]) -> report.Metrics:
    """The median of every metric over the runs that have it (a run from an older bench may lack some)."""
    keys = {key for run in runs for key in run["metrics"]}
    return {
        key: statistics.median(run["metrics"][key] for run in runs if key in run["metrics"]) for key in sorted(keys)
    }


def per_run(runs: list[dict[str, Any]], targets: tuple[report.Target, ...]) -> str:
    """Each target's metric in each run, so the spread behind every median is visible."""
    header = "| metric | target | " + " | ".join(f"run {i}" for i in range(1, len(runs) + 1)) + " |"
    lines = [header, "|---|---|" + "--:|" * len(runs)]
    for target in targets:
        values = [report.derive(run["metrics"]).get(target.key) for run in runs]
        cells = " | ".join("-" if v is None else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}" for v in values)
        lines.append(f"| {target.key} | {target.op} {target.limit:g} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by bench/run.py")
    parser.add_argument("--include-quick", action="store_true", help="also count smoke runs (--quick)")
    args = parser.parse_args()
    runs = load(args.results, args.include_quick)
    dates = [run["meta"]["date"] for run in runs]
    commits = sorted({run["meta"]["commit"] for run in runs})
    print(f"{len(runs)} run(s) from {dates[0]} to {dates[-1]}; commit(s): {', '.join(commits)}\n")
    metrics = medians(runs)
    print(report.table(metrics))
    print()
    print(per_run(runs, report.targets(metrics)))


if __name__ == "__main__":
    main()
