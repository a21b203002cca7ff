"""Part 5, the smoke toy DAG on CUDA (``snakemake`` with ``configs/toy-smoke.yaml`` and a GPU overlay),
or its plan (``-n -p``) elsewhere; ``check_dag_outputs`` checks a real run's outputs."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO


def _merged(base: dict, overlay: dict) -> dict:
    """Snakemake's merge of a second --configfile into the first: nested mappings updated key by key."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dag_overlay(base: dict, results_dir: Path, precision: str | None) -> dict:
    def run_overlay():
        return {"gpus_per_node": 1, **({"precision": precision} if precision else {})}

    return {"results_dir": str(results_dir),
            "teachers": {name: run_overlay() for name in base.get("teachers", {})},
            "runs": {name: run_overlay() for name in base["runs"]},
            "evaluation": {"device": "auto"}}


def part_dag(args, device, tmp: Path) -> dict:
    import yaml

    from mobileclip_repro import config as config_lib

    mode = args.dag
    if mode == "auto":
        mode = "run" if device.type == "cuda" and not args.smoke else "dry-run"
    base_path = REPO / "configs" / "toy-smoke.yaml"
    base = yaml.safe_load(base_path.read_text())
    results = tmp / "dag_results"
    overlay = dag_overlay(base, results, args.dag_precision)
    overlay_path = tmp / "gpu_overlay.yaml"
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    # What Snakemake will see: the merged config, validated and resolved by the project's loader.
    merged = config_lib.load_config(_merged(base, overlay))
    jobs = [run for section in ("runs", "teachers") for run in merged[section].values()]
    if {run["gpus_per_node"] for run in jobs} != {1} or merged["evaluation"]["device"] != "auto":
        raise RuntimeError("the overlay did not take: gpus_per_node / evaluation.device unchanged")
    command = [sys.executable, "-m", "snakemake", "--cores", str(args.dag_cores or os.cpu_count() or 1),
               "--configfile", str(base_path.relative_to(REPO)), str(overlay_path)]
    if mode == "dry-run":
        command += ["-n", "-p"]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.dag_timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"snakemake did not finish in {args.dag_timeout} s: "
                           f"{(error.stderr or b'')[-2000:]!r}") from None
    seconds = time.perf_counter() - start
    out = result.stdout + result.stderr
    report = {"mode": mode, "command": " ".join(command), "overlay": overlay, "seconds": seconds,
              "returncode": result.returncode}
    if result.returncode != 0:
        raise RuntimeError(f"snakemake exited {result.returncode}:\n{out[-4000:]}")
    total = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
    report["jobs"] = int(total.group(1)) if total else None
    if mode == "dry-run":
        # the evaluate command's device: an option, or a key of the spec the rule hands it
        evaluations = [line for line in out.splitlines() if re.search(r"mobileclip[-_]repro evaluate ", line)]
        checks = {"jobs planned": bool(report["jobs"]),
                  "evaluate jobs with device auto": bool(evaluations) and all(
                      "--device auto" in line or '"device": "auto"' in line for line in evaluations),
                  # one process per job is started directly, without a torchrun agent around it
                  "train/teacher jobs with one process each": out.count("-m mobileclip_repro train") >= len(jobs)
                  and "torch.distributed.run" not in out,
                  "run specs with gpus_per_node 1": out.count('"gpus_per_node": 1') >= len(jobs)}
    else:
        checks = check_dag_outputs(results, merged, device.type)
    report["checks"] = checks
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError(f"smoke DAG ({mode}) checks failed: {failed}\n{out[-3000:]}")
    report["ok"] = True
    return report


def check_dag_outputs(results: Path, config: dict, device_type: str) -> dict:
    """The run's outputs, checked without assuming more of the results layout than the report's place.

    Report tables written and non-empty, every run in them, and every manifest that names a
    device (train jobs, teachers, reinforced shards) naming this one.
    """
    checks = {}
    report_dir = results / "report"
    for name in ("results.csv", "results.md"):
        checks[f"report/{name} written"] = (report_dir / name).is_file() and (report_dir / name).stat().st_size > 0
    table = report_dir / "results_long.csv" if (report_dir / "results_long.csv").is_file() else report_dir / "results.csv"
    rows = []
    if table.is_file():
        with open(table, newline="") as stream:
            rows = list(csv.DictReader(stream))
    checks[f"every run in report/{table.name}"] = set(config["runs"]) <= {row.get("run") for row in rows}
    devices = [str(manifest["device"]) for path in sorted(results.rglob("*manifest.json"))
               if isinstance(manifest := _read_json(path), dict) and "device" in manifest]
    checks[f"train/teacher/reinforce manifests name {device_type} (>= {len(config['runs']) + len(config['teachers'])})"] = (
        len(devices) >= len(config["runs"]) + len(config["teachers"])
        and all(name.startswith(device_type) for name in devices))
    return checks


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
