"""How long `snakemake -n` takes to plan the full DataCompDR-1B reproduction (65,536 shards).

Target (issue 4): <= 10 s with shards grouped into fetch jobs (``data.hub.group_size``,
default 1,024 → 64 fetch jobs). The baseline is the same plan with one fetch job per
shard (``group_size: 1`` → 65,536 jobs), printed as a ratio from one run:

    .venv/bin/python benchmarks/dag_plan_time.py [--config configs/paper/datacompdr1b.yaml] [--skip-per-shard]

Wall time of the whole `snakemake -n` process, as a user experiences it (interpreter
start, config validation, DAG construction). Run from the repository root.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def plan(config: str, group_size: int | None) -> tuple[float, int]:
    """(seconds, number of jobs) of one dry run."""
    command = [sys.executable, "-m", "snakemake", "-n", "--configfile", config]
    with tempfile.TemporaryDirectory() as scratch:
        if group_size is not None:  # an overlay config file: Snakemake merges it into the first
            overlay = Path(scratch) / "group_size.yaml"
            overlay.write_text(f"data:\n  hub:\n    group_size: {group_size}\n")
            command.append(str(overlay))
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{result.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)", result.stdout, re.MULTILINE)
    return seconds, int(total.group(1)) if total else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper/datacompdr1b.yaml")
    parser.add_argument("--skip-per-shard", action="store_true", help="only time the grouped plan")
    args = parser.parse_args()

    grouped_seconds, grouped_jobs = plan(args.config, None)
    print(f"grouped shards (config's group_size): {grouped_jobs:,} jobs planned in {grouped_seconds:.1f} s "
          f"(target <= 10 s)")
    if args.skip_per_shard:
        return 0
    per_shard_seconds, per_shard_jobs = plan(args.config, 1)
    print(f"one fetch job per shard (group_size 1): {per_shard_jobs:,} jobs planned in {per_shard_seconds:.1f} s")
    print(f"grouped / per-shard planning time: {grouped_seconds / per_shard_seconds:.3f}x "
          f"({per_shard_seconds / grouped_seconds:.1f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
