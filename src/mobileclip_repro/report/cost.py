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
counts its outputs record: one row per job. Counting itself, and the projection to the paper's
scale, are ``flops``'.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from mobileclip_repro.layout import (WHOLE_DAG, group_job_name, parse_job_benchmark, parse_job_name,
                                     parse_reinforce_manifest)

COST_COLUMNS = ["stage", "rule", "run", "seed", "wall_s", "cpu_s", "max_rss_mb", "flops", "samples",
                "flops_per_sample", "benchmark_tsv"]
# Which DAG stage each rule belongs to (the README's five stages).
STAGES = {"toy_data": "data", "fetch": "data", "local_data": "data", "select_subsets": "data",
          "fetch_benchmark": "data", "train_teacher": "reinforce",
          "reinforce": "reinforce", "train": "train", "evaluate": "evaluate", "evaluate_teachers": "evaluate",
          "report": "report"}


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
    """(rule, run, seed) of the job a benchmark file measured (``layout.parse_job_benchmark``): a train
    job's run and seed; any other job's name as its run (none for a job of the whole DAG)."""
    job = parse_job_benchmark(path, benchmarks_dir)
    run = job.run if job.seed is not None else (None if job.name == WHOLE_DAG else job.name)
    return {"stage": STAGES.get(job.rule, job.rule), "rule": job.rule, "run": run, "seed": job.seed}


def cost_table(benchmark_tsvs: list[str | os.PathLike], benchmarks_dir: str | os.PathLike,
               ledger: dict[tuple, dict]):
    """One row per job (a DataFrame): each benchmark TSV the DAG handed the report (under
    ``benchmarks_dir``, which names its job) joined with ``ledger`` {(rule, run, seed): {flops, samples}}."""
    import pandas as pd  # the report's; train and reinforce jobs import this module without it

    benchmarks_dir = Path(benchmarks_dir)
    rows = []
    for path in sorted(Path(path) for path in benchmark_tsvs):
        job = job_of_benchmark(path, benchmarks_dir)
        counted = ledger.get((job["rule"], job["run"], job["seed"]), {})
        flops, samples = counted.get("flops"), counted.get("samples")
        rows.append({**job, **read_benchmark_tsv(path), "flops": flops, "samples": samples,
                     "flops_per_sample": flops / samples if flops and samples else None,
                     "benchmark_tsv": str(path.relative_to(benchmarks_dir))})
    table = pd.DataFrame(rows, columns=COST_COLUMNS)
    table["seed"] = table["seed"].astype("Int64")  # an integer column with gaps (jobs of no seed)
    return table


SI_PREFIXES = ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def format_si(value: float, digits: int = 3) -> str:
    """A count with an SI prefix, ``digits`` significant: 547628898461 -> '548 G', 30089216 -> '30.1 M'."""
    for divisor, prefix in SI_PREFIXES:
        if abs(value) >= divisor:
            return f"{value / divisor:.{digits}g} {prefix}"
    return f"{value:.{digits}g} "


def format_flops(value: float | None, digits: int = 3) -> str:
    """FLOPs as people read them: 547628898461 -> '548 GFLOPs', 30089216 -> '30.1 MFLOPs'; None -> 'n/a'."""
    return "n/a" if value is None else f"{format_si(value, digits)}FLOPs"


def _read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def train_ledger(run_manifests: list[str | os.PathLike],
                 teacher_manifests: list[str | os.PathLike] = ()) -> dict[tuple, dict]:
    """The FLOPs and seen samples of the given train jobs' manifests (students, then teachers)."""
    ledger = {}
    for manifest_path in sorted(Path(path) for path in run_manifests):
        manifest = _read_json(manifest_path)
        flops = manifest.get("flops") or {}
        ledger[("train", manifest["run"], manifest["seed"])] = {"flops": flops.get("total"),
                                                              "samples": flops.get("seen_samples")}
    for manifest_path in sorted(Path(path) for path in teacher_manifests):
        manifest = _read_json(manifest_path)
        flops = manifest.get("flops") or {}
        # the teacher as the teachers section names it (the manifest's run), the job's name too
        ledger[("train_teacher", manifest["run"], None)] = {
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


def reinforce_ledger(reinforce_manifests: list[str | os.PathLike]) -> dict[tuple, dict]:
    """FLOPs (teachers and captioners) and images written by each reinforce job, from its group manifest
    (``data/reinforce/<reinforcement>/group_<g>.json``, the job's declared output)."""
    ledger = {}
    for manifest_path in sorted(Path(path) for path in reinforce_manifests):
        manifest = _read_json(manifest_path)
        totals = manifest.get("totals") or {}
        flops = totals.get("flops") or {}
        reinforced = totals.get("shards_reinforced", 0)
        reinforcement, group = parse_reinforce_manifest(manifest_path)
        ledger[("reinforce", group_job_name(group, reinforcement), None)] = {
            "flops": flops.get("total"), "samples": totals.get("written", 0) if reinforced else 0,
            "reinforcement": reinforcement}
    return ledger


def full_ledger(inputs, records: list[dict]) -> dict[tuple, dict]:
    """Every job's counted FLOPs and samples from the report's declared inputs (``report.ReportInputs``)."""
    return {**train_ledger(inputs.run_manifests, inputs.teacher_manifests), **eval_ledger(records),
            **reinforce_ledger(inputs.reinforce_manifests)}


def run_costs(run_manifests: list[str | os.PathLike], table) -> dict[str, dict]:
    """Per training run of the given manifests: its arm (plain, DR), the reinforcement it reads, and per
    seen sample its FLOPs (counted) and wall and CPU seconds (Snakemake's benchmark, mean over seeds)."""
    runs: dict[str, dict] = {}
    for manifest_path in sorted(Path(path) for path in run_manifests):
        manifest = _read_json(manifest_path)
        flops = manifest.get("flops") or {}
        entry = runs.setdefault(manifest["run"], {"run": manifest["run"], "seeds": 0, "arm": None,
                                                  "reinforcement": None, "flops_per_sample": None,
                                                  "seen_samples": None})
        entry["seeds"] += 1
        if "data" in manifest:  # manifests of older runs do not say
            entry["arm"] = ("online" if manifest["online"] else "DR") if manifest["data"] == "dr" else "plain"
            entry["reinforcement"] = manifest["reinforcement"]
        entry["flops_per_sample"] = flops.get("per_seen_sample", entry["flops_per_sample"])
        entry["seen_samples"] = flops.get("seen_samples", entry.get("seen_samples"))
    for run, entry in runs.items():
        rows = table[(table["rule"] == "train") & (table["run"] == run)] if len(table) else table
        for column in ("wall_s", "cpu_s"):
            per_sample = [row[column] / row["samples"] for _, row in rows.iterrows()
                          if row[column] is not None and row["samples"]]
            entry[f"{column}_per_sample"] = sum(per_sample) / len(per_sample) if per_sample else None
    return runs


def reinforcement_flops(table, reinforce_manifests: list[str | os.PathLike] = ()) -> dict[str, float]:
    """The one-time cost of each reinforcement: the FLOPs (teachers and captioners) of the shards its
    groups hold, whichever job made them (``totals.shards_flops``: a rerun that keeps finished shards
    paid nothing for them, yet they cost what they cost). A group whose manifest predates per-shard
    counts falls back to its job's own FLOPs (the ledger row in ``table``)."""
    totals: dict[str, float] = {}
    counted = set()
    for manifest_path in sorted(Path(path) for path in reinforce_manifests):
        shards_flops = (_read_json(manifest_path).get("totals") or {}).get("shards_flops")
        if shards_flops is not None:
            reinforcement, group = parse_reinforce_manifest(manifest_path)
            totals[reinforcement] = totals.get(reinforcement, 0.0) + float(shards_flops)
            counted.add(group_job_name(group, reinforcement))
    for _, row in table[table["rule"] == "reinforce"].iterrows() if len(table) else []:
        if str(row["run"]) in counted:
            continue
        name = parse_job_name("reinforce", str(row["run"])).reinforcement
        totals[name] = totals.get(name, 0.0) + float(row["flops"] or 0.0)
    return totals


def reinforcement_per_job(runs: dict[str, dict], reinforcements: dict[str, float]) -> dict[str, float]:
    """DR run -> its share of the one-time reinforcement: the reinforcement's FLOPs over the DR training
    jobs (runs x seeds) of this experiment that read it, as ``compute_multiplier_with_reinforcement``
    amortizes it."""
    jobs: dict[str, int] = {}
    for entry in runs.values():
        if entry["arm"] == "DR":
            jobs[entry["reinforcement"]] = jobs.get(entry["reinforcement"], 0) + entry["seeds"]
    return {run: reinforcements[entry["reinforcement"]] / jobs[entry["reinforcement"]] for run, entry in runs.items()
            if entry["arm"] == "DR" and entry["reinforcement"] in reinforcements}


def add_compute_multipliers(multipliers: list[dict], runs: dict[str, dict], reinforcements: dict[str, float]) -> None:
    """Learning efficiency in compute, in place, for each efficiency record: the non-DR run's
    training FLOPs to reach its final accuracy (its budget) over the DR run's FLOPs to reach it
    (``compute_multiplier``), and the same with the DR run's reinforcement amortized over the DR
    training jobs of this experiment that read it (``compute_multiplier_with_reinforcement``).
    Both scale the sample multiplier, so a lower bound stays one. ``break_even_runs_vs_online``:
    with an online-distillation run on the same reinforcement's teachers in the experiment, the
    number of training runs after which reinforcing once and training DR costs fewer FLOPs
    than distilling online every time (the reinforcement's FLOPs over what one online run costs
    more than one DR run, at their budgets); None, and said, without one."""
    dr_jobs: dict[str, int] = {}
    online = {}
    for entry in runs.values():
        if entry["arm"] == "DR":
            dr_jobs[entry["reinforcement"]] = dr_jobs.get(entry["reinforcement"], 0) + entry["seeds"]
        if entry["arm"] == "online" and entry["flops_per_sample"]:
            online.setdefault(entry["reinforcement"], entry)
    for record in multipliers:
        dr, plain = runs.get(record["dr_run"]), runs.get(record["plain_run"])
        record.update(compute_multiplier=None, compute_multiplier_with_reinforcement=None,
                      break_even_runs_vs_online=None,
                      break_even_note="no online-distillation arm in this experiment: nothing measured to compare")
        if not dr or not plain or not dr["flops_per_sample"] or not plain["flops_per_sample"] or not record["multiplier"]:
            continue
        rival = online.get(dr["reinforcement"])
        one_time = reinforcements.get(dr["reinforcement"])
        if dr["arm"] == "DR" and rival is not None and one_time is not None:
            extra = rival["flops_per_sample"] * rival["seen_samples"] - dr["flops_per_sample"] * dr["seen_samples"]
            record["break_even_runs_vs_online"] = one_time / extra if extra > 0 else None
            record["break_even_note"] = (f"reinforcing once ({format_flops(one_time)}) pays for itself after this "
                                         f"many training runs against {rival['run']} (online distillation, "
                                         f"{format_flops(extra)} more per run)" if extra > 0 else
                                         f"{rival['run']} costs no more than {dr['run']} per run")
        ratio = plain["flops_per_sample"] / dr["flops_per_sample"]
        record["compute_multiplier"] = record["multiplier"] * ratio
        # absolute FLOPs at the crossing: the reference run used its whole budget
        if record["reference"] == "non-DR final":
            plain_compute = plain["seen_samples"] * plain["flops_per_sample"]
            dr_compute = plain_compute / record["compute_multiplier"]
        else:
            dr_compute = dr["seen_samples"] * dr["flops_per_sample"]
            plain_compute = dr_compute * record["compute_multiplier"]
        if dr["arm"] == "DR" and one_time is not None and dr_jobs.get(dr["reinforcement"]):
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
        lines.append(f"| {entry['run']} | {entry['arm'] or '?'} | {entry['seeds']} | {format_flops(entry['flops_per_sample'])} "
                     f"| {number(entry['wall_s_per_sample'])} | {number(entry['cpu_s_per_sample'])} |")
    arms = {entry["arm"]: entry for entry in runs.values() if entry["flops_per_sample"]}
    if "DR" in arms and "plain" in arms:
        ratio = arms["DR"]["flops_per_sample"] / arms["plain"]["flops_per_sample"]
        wall = (arms["DR"]["wall_s_per_sample"] / arms["plain"]["wall_s_per_sample"]
                if arms["DR"]["wall_s_per_sample"] and arms["plain"]["wall_s_per_sample"] else None)
        lines += ["", f"A DR step costs {ratio:.2f}x a plain one in FLOPs per seen sample (its student also encodes "
                      f"the synthetic caption) and {number(wall, 2)}x in wall time here."]
    for name, flops in reinforcements.items():
        lines.append(f"\nReinforcement `{name}` (one time, teachers and captioner): {format_flops(flops)}.")
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
    arms_seen = {entry["arm"] for entry in runs.values()}
    if "online" in arms and "DR" in arms:
        ratio = arms["online"]["flops_per_sample"] / arms["DR"]["flops_per_sample"]
        wall = (arms["online"]["wall_s_per_sample"] / arms["DR"]["wall_s_per_sample"]
                if arms["online"]["wall_s_per_sample"] and arms["DR"]["wall_s_per_sample"] else None)
        lines.append(f"\nOnline distillation costs {ratio:.2f}x a DR step in FLOPs per seen sample (the teachers run "
                     f"on every sample) and {number(wall, 2)}x in wall time here.")
    for record in multipliers:
        if record.get("break_even_runs_vs_online") is not None:
            lines.append(f"\n{record['dr_run']} on {record['benchmark']}: {record['break_even_note']}: "
                         f"{record['break_even_runs_vs_online']:.2f}.")
            break
    if "online" not in arms_seen:
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

    columns = ["run", "arm", "seeds", "FLOPs / seen sample", "wall s / seen sample", "CPU s / seen sample"]
    # no run manifests given (a report made by hand from records): the table is empty, not shapeless
    return pd.DataFrame([{"run": e["run"], "arm": e["arm"], "seeds": e["seeds"],
                          "FLOPs / seen sample": e["flops_per_sample"],
                          "wall s / seen sample": e.get("wall_s_per_sample"),
                          "CPU s / seen sample": e.get("cpu_s_per_sample")} for e in runs.values()], columns=columns)
