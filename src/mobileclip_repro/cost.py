"""The compute ledger: what each job of the DAG cost, in FLOPs it counted and in the wall time,
CPU time and memory Snakemake's ``benchmark:`` directive measured.

FLOPs are counted by torch's own ``FlopCounterMode`` on real calls of the job's models, never
estimated from a formula: a train job counts one optimizer step (student forward, backward
and loss, teachers too where they run) and multiplies by its steps; evaluation and
reinforcement count the first call of each model entry point and scale by the items each
later call carries (``PerItemFlops``). FlopCounterMode counts matrix products and
convolutions (attention included), the ops that dominate a transformer; elementwise work
is left out, as in the usual 6ND accounting.

``cost.csv`` (the report stage) joins every job's benchmark TSV with the FLOPs and sample
counts its outputs record: one row per job.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

COST_COLUMNS = ["stage", "rule", "run", "seed", "wall_s", "cpu_s", "max_rss_mb", "flops", "samples",
                "flops_per_sample", "benchmark_tsv"]
# Which DAG stage each rule belongs to (the README's five stages).
STAGES = {"toy_data": "data", "fetch": "data", "fetch_benchmark": "data", "train_teacher": "reinforce",
          "reinforce": "reinforce", "train": "train", "evaluate": "evaluate", "evaluate_teachers": "evaluate",
          "report": "report"}


def count_flops(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """``fn(*args, **kwargs)`` and the FLOPs it spent (forward and, if it runs one, backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


class PerItemFlops:
    """Wraps one model entry point (``encode_image``, a teacher forward): the first call is counted
    with FlopCounterMode and divided by its batch size; every call adds that per item times its
    batch, so a long job pays for counting once. ``total`` and ``items`` accumulate."""

    def __init__(self, fn: Callable, batch_size: Callable = len):
        self.fn, self.batch_size = fn, batch_size
        self.per_item: float | None = None
        self.total, self.items = 0.0, 0

    def __call__(self, batch, *args, **kwargs):
        size = self.batch_size(batch)
        if self.per_item is None and size:
            result, flops = count_flops(self.fn, batch, *args, **kwargs)
            self.per_item = flops / size
        else:
            result = self.fn(batch, *args, **kwargs)
        self.total += (self.per_item or 0.0) * size
        self.items += size
        return result


def read_benchmark_tsv(path: str | os.PathLike) -> dict:
    """Snakemake's benchmark TSV of one job (its last repeat): wall s, CPU s, max RSS MB."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    if not rows:
        return {}
    row = rows[-1]

    def number(key):
        try:
            return float(row.get(key, "NA"))
        except ValueError:
            return None  # Snakemake writes NA where it could not measure

    return {"wall_s": number("s"), "cpu_s": number("cpu_time"), "max_rss_mb": number("max_rss")}


def job_of_benchmark(path: Path, benchmarks_dir: Path) -> dict:
    """(rule, run, seed) from a benchmark file's place: ``<rule>/<run>_seed_<s>.tsv``, ``<rule>/<name>.tsv``."""
    relative = path.relative_to(benchmarks_dir)
    rule, name = relative.parts[0], relative.stem
    run, seed = (None if name == "all" else name), None  # "all": a job of the whole DAG (toy data, report)
    if "_seed_" in name:
        run, _, seed_text = name.rpartition("_seed_")
        seed = int(seed_text) if seed_text.isdigit() else None
    return {"stage": STAGES.get(rule, rule), "rule": rule, "run": run, "seed": seed}


def cost_table(benchmarks_dir: str | os.PathLike, ledger: dict[tuple, dict]):
    """One row per job (a DataFrame): its benchmark TSV joined with ``ledger`` {(rule, run, seed):
    {flops, samples}}."""
    import pandas as pd  # the report's; train and reinforce jobs import this module without it

    benchmarks_dir = Path(benchmarks_dir)
    rows = []
    for path in sorted(benchmarks_dir.rglob("*.tsv")) if benchmarks_dir.is_dir() else []:
        job = job_of_benchmark(path, benchmarks_dir)
        counted = ledger.get((job["rule"], job["run"], job["seed"]), {})
        flops, samples = counted.get("flops"), counted.get("samples")
        rows.append({**job, **read_benchmark_tsv(path), "flops": flops, "samples": samples,
                     "flops_per_sample": flops / samples if flops and samples else None,
                     "benchmark_tsv": str(path.relative_to(benchmarks_dir))})
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def train_ledger(results_dir: str | os.PathLike) -> dict[tuple, dict]:
    """The FLOPs and seen samples of every finished train job (students and teachers), from their manifests."""
    results_dir = Path(results_dir)
    ledger = {}
    for manifest_path in sorted(results_dir.glob("runs/*/seed_*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        flops = manifest.get("flops") or {}
        ledger[("train", manifest["run"], manifest["seed"])] = {"flops": flops.get("total"),
                                                              "samples": flops.get("seen_samples")}
    for manifest_path in sorted(results_dir.glob("teachers/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        flops = manifest.get("flops") or {}
        ledger[("train_teacher", manifest_path.parent.name + ".pt", None)] = {
            "flops": flops.get("total"), "samples": flops.get("seen_samples")}
    return ledger


def eval_ledger(records: list[dict]) -> dict[tuple, dict]:
    """FLOPs and images of the evaluate jobs (one per run) and of evaluate_teachers, from the records."""
    ledger: dict[tuple, dict] = {}
    for record in records:
        counted = record.get("flops") or {}
        teacher = record.get("role") in ("teacher", "ensemble")
        key = ("evaluate_teachers", None, None) if teacher else ("evaluate", record["run"], None)
        entry = ledger.setdefault(key, {"flops": 0, "samples": 0})
        entry["flops"] += int(counted.get("total") or 0)
        entry["samples"] += int(record.get("num_samples") or 0)
    return ledger


def reinforce_ledger(results_dir: str | os.PathLike) -> dict[tuple, dict]:
    """FLOPs (teachers and captioners) and images written by each reinforce job, from its group manifest."""
    ledger = {}
    for manifest_path in sorted(Path(results_dir).glob("data/reinforce/*/group_*.json")):
        manifest = json.loads(manifest_path.read_text())
        totals = manifest.get("totals") or {}
        flops = totals.get("flops") or {}
        reinforced = totals.get("shards_reinforced", 0)
        ledger[("reinforce", f"{manifest_path.parent.name}_{manifest_path.stem}", None)] = {
            "flops": flops.get("total"), "samples": totals.get("written", 0) if reinforced else 0,
            "reinforcement": manifest_path.parent.name}
    return ledger


def full_ledger(results_dir: str | os.PathLike, records: list[dict]) -> dict[tuple, dict]:
    return {**train_ledger(results_dir), **eval_ledger(records), **reinforce_ledger(results_dir)}


def run_costs(results_dir: str | os.PathLike, table) -> dict[str, dict]:
    """Per training run: its arm (plain, DR), the reinforcement it reads, and per seen sample
    its FLOPs (counted) and wall and CPU seconds (Snakemake's benchmark, mean over seeds)."""
    runs: dict[str, dict] = {}
    for manifest_path in sorted(Path(results_dir).glob("runs/*/seed_*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        flops = manifest.get("flops") or {}
        checkpoint_spec = _spec_of(manifest_path.parent)
        entry = runs.setdefault(manifest["run"], {"run": manifest["run"], "seeds": 0, "arm": None,
                                                  "reinforcement": None, "flops_per_sample": None,
                                                  "seen_samples": None})
        entry["seeds"] += 1
        if checkpoint_spec:
            entry["arm"] = "DR" if checkpoint_spec.get("dr") else "plain"
            entry["reinforcement"] = checkpoint_spec.get("reinforcement") if checkpoint_spec.get("dr") else None
        entry["flops_per_sample"] = flops.get("per_seen_sample", entry["flops_per_sample"])
        entry["seen_samples"] = flops.get("seen_samples", entry.get("seen_samples"))
    for run, entry in runs.items():
        rows = table[(table["rule"] == "train") & (table["run"] == run)] if len(table) else table
        for column in ("wall_s", "cpu_s"):
            per_sample = [row[column] / row["samples"] for _, row in rows.iterrows()
                          if row[column] is not None and row["samples"]]
            entry[f"{column}_per_sample"] = sum(per_sample) / len(per_sample) if per_sample else None
    return runs


def _spec_of(run_dir: Path) -> dict | None:
    """A finished run's spec, from its last checkpoint (the tensors are not read)."""
    import torch

    checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.pt"))
    if not checkpoints:
        return None
    return torch.load(checkpoints[-1], map_location="cpu", weights_only=True, mmap=True).get("run")


def reinforcement_flops(table) -> dict[str, float]:
    """The one-time cost of each reinforcement: the FLOPs of its reinforce jobs (teachers and captioners)."""
    totals: dict[str, float] = {}
    for _, row in table[table["rule"] == "reinforce"].iterrows() if len(table) else []:
        name = str(row["run"]).rsplit("_group_", 1)[0]
        totals[name] = totals.get(name, 0.0) + float(row["flops"] or 0.0)
    return totals


def add_compute_multipliers(multipliers: list[dict], runs: dict[str, dict], reinforcements: dict[str, float]) -> None:
    """Learning efficiency in compute, in place, for each efficiency record: the non-DR run's
    training FLOPs to reach its final accuracy (its budget) over the DR run's FLOPs to reach it
    (``compute_multiplier``), and the same with the DR run's reinforcement amortized over the DR
    training jobs of this experiment that read it (``compute_multiplier_with_reinforcement``).
    Both scale the sample multiplier, so a lower bound stays one. ``break_even_runs_vs_online``
    needs an online-distillation arm's measured cost: None (and said) until one is run."""
    dr_jobs: dict[str, int] = {}
    for entry in runs.values():
        if entry["arm"] == "DR":
            dr_jobs[entry["reinforcement"]] = dr_jobs.get(entry["reinforcement"], 0) + entry["seeds"]
    for record in multipliers:
        dr, plain = runs.get(record["dr_run"]), runs.get(record["plain_run"])
        record.update(compute_multiplier=None, compute_multiplier_with_reinforcement=None,
                      break_even_runs_vs_online=None,
                      break_even_note="no online-distillation arm in this experiment: nothing measured to compare")
        if not dr or not plain or not dr["flops_per_sample"] or not plain["flops_per_sample"] or not record["multiplier"]:
            continue
        ratio = plain["flops_per_sample"] / dr["flops_per_sample"]
        record["compute_multiplier"] = record["multiplier"] * ratio
        # absolute FLOPs at the crossing: the reference run used its whole budget
        if record["reference"] == "non-DR final":
            plain_compute = plain["seen_samples"] * plain["flops_per_sample"]
            dr_compute = plain_compute / record["compute_multiplier"]
        else:
            dr_compute = dr["seen_samples"] * dr["flops_per_sample"]
            plain_compute = dr_compute * record["compute_multiplier"]
        one_time = reinforcements.get(dr["reinforcement"])
        if one_time is not None and dr_jobs.get(dr["reinforcement"]):
            amortized = dr_compute + one_time / dr_jobs[dr["reinforcement"]]
            record["compute_multiplier_with_reinforcement"] = plain_compute / amortized
            record["reinforcement_flops"] = one_time
            record["reinforcement_shared_by"] = dr_jobs[dr["reinforcement"]]


def cost_markdown(table, runs: dict[str, dict], reinforcements: dict[str, float], multipliers: list[dict]) -> str:
    """The report's Cost section: per seen sample per arm, the one-time reinforcement, compute multipliers."""
    lines = ["## Cost", "",
             "FLOPs are counted with torch's FlopCounterMode on real steps (matrix products and convolutions); "
             "wall and CPU seconds are Snakemake's `benchmark:` measurements of each job on this machine "
             "(CPU figures on a CPU machine: they say nothing of a GPU's ratios). Every job: `cost.csv`.", "",
             "| run | arm | seeds | FLOPs / seen sample | wall s / seen sample | CPU s / seen sample |",
             "|---|---|---|---|---|---|"]

    def number(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}g}"

    for entry in runs.values():
        lines.append(f"| {entry['run']} | {entry['arm'] or '?'} | {entry['seeds']} | {number(entry['flops_per_sample'])} "
                     f"| {number(entry['wall_s_per_sample'])} | {number(entry['cpu_s_per_sample'])} |")
    arms = {entry["arm"]: entry for entry in runs.values() if entry["flops_per_sample"]}
    if "DR" in arms and "plain" in arms:
        ratio = arms["DR"]["flops_per_sample"] / arms["plain"]["flops_per_sample"]
        wall = (arms["DR"]["wall_s_per_sample"] / arms["plain"]["wall_s_per_sample"]
                if arms["DR"]["wall_s_per_sample"] and arms["plain"]["wall_s_per_sample"] else None)
        lines += ["", f"A DR step costs {ratio:.2f}x a plain one in FLOPs per seen sample (its student also encodes "
                      f"the synthetic caption) and {number(wall, 2)}x in wall time here."]
    for name, flops in reinforcements.items():
        lines.append(f"\nReinforcement `{name}` (one time, teachers and captioner): {flops:.3g} FLOPs.")
    for record in multipliers:
        if record.get("compute_multiplier") is None:
            continue
        bound = "≥ " if record.get("lower_bound") else ""
        amortized = record.get("compute_multiplier_with_reinforcement")
        lines.append(f"\n{record['dr_run']} vs {record['plain_run']} on {record['benchmark']}: learning efficiency in "
                     f"compute {bound}{record['compute_multiplier']:.2f}x"
                     + (f", {bound}{amortized:.2f}x with the reinforcement amortized over "
                        f"{record['reinforcement_shared_by']} DR training jobs" if amortized is not None else "")
                     + ".")
    lines.append("\nOnline distillation (teachers run during training): not part of this experiment, so no "
                 "break-even is given.")
    return "\n".join(lines) + "\n"


def records_in_flops(records: list[dict], runs: dict[str, dict]) -> list[dict]:
    """The student records with ``seen_samples`` replaced by the training FLOPs spent to that
    checkpoint (seen samples x the run's FLOPs per seen sample), for the compute figure; runs
    without a count are left out."""
    converted = []
    for record in records:
        if record.get("role", "student") != "student":
            converted.append(record)  # teachers: levels, not curves
            continue
        per_sample = (runs.get(record["run"]) or {}).get("flops_per_sample")
        if per_sample:
            converted.append({**record, "seen_samples": record["seen_samples"] * per_sample})
    return converted if any(r.get("role", "student") == "student" for r in converted) else []


def runs_table(runs: dict[str, dict]):
    """The Cost section's table: per training run, its arm and per-seen-sample costs."""
    import pandas as pd

    return pd.DataFrame([{"run": e["run"], "arm": e["arm"], "seeds": e["seeds"],
                          "FLOPs / seen sample": e["flops_per_sample"],
                          "wall s / seen sample": e.get("wall_s_per_sample"),
                          "CPU s / seen sample": e.get("cpu_s_per_sample")} for e in runs.values()])
