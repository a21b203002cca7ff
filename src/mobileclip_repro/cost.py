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
STAGES = {"toy_data": "data", "fetch": "data", "local_data": "data", "select_subsets": "data",
          "fetch_benchmark": "data", "train_teacher": "reinforce",
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


def reinforce_ledger(reinforce_manifests: list[str | os.PathLike]) -> dict[tuple, dict]:
    """FLOPs (teachers and captioners) and images written by each reinforce job, from its group manifest
    (``data/reinforce/<reinforcement>/group_<g>.json``, the job's declared output)."""
    ledger = {}
    for manifest_path in sorted(Path(path) for path in reinforce_manifests):
        manifest = _read_json(manifest_path)
        totals = manifest.get("totals") or {}
        flops = totals.get("flops") or {}
        reinforced = totals.get("shards_reinforced", 0)
        ledger[("reinforce", f"{manifest_path.parent.name}_{manifest_path.stem}", None)] = {
            "flops": flops.get("total"), "samples": totals.get("written", 0) if reinforced else 0,
            "reinforcement": manifest_path.parent.name}
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
            record["break_even_note"] = (f"reinforcing once ({one_time:.3g} FLOPs) pays for itself after this many "
                                         f"training runs against {rival['run']} (online distillation, "
                                         f"{extra:.3g} FLOPs more per run)" if extra > 0 else
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

    return pd.DataFrame([{"run": e["run"], "arm": e["arm"], "seeds": e["seeds"],
                          "FLOPs / seen sample": e["flops_per_sample"],
                          "wall s / seen sample": e.get("wall_s_per_sample"),
                          "CPU s / seen sample": e.get("cpu_s_per_sample")} for e in runs.values()])


# -- the paper's scale, projected: FLOPs counted on the meta device (shapes, no weights) ---------

# Dense bf16 peak of one GPU (vendor figures); MFU: the share of it a well-tuned CLIP training reaches.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100/H200": 989e12}
DEFAULT_MFU = 0.4
CAPTION_TOKENS = 30  # the CoCa captioner's default caption length (teachers.CocaCaptioner)


def meta_model(name: str):
    from mobileclip_repro.models import create_model_and_transforms

    model, _, _ = create_model_and_transforms(name, device="meta", output_dict=True)
    return model


def _image_size(model) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def _inputs(model, images: int, texts: int):
    import torch

    size = _image_size(model)
    return (torch.empty(images, 3, size, size, device="meta"),
            torch.zeros(texts, model.context_length, dtype=torch.long, device="meta"))


def training_flops_per_sample(model, captions_per_image: int) -> float:
    """One seen sample of a training step: the student's forward on its image and
    ``captions_per_image`` captions and the backward of both towers (the contrastive and
    distillation heads' B x B logits left out: under local loss they are a few MFLOPs)."""
    batch = 2
    images, texts = _inputs(model, batch, batch * captions_per_image)
    model.train()

    def step():
        out = model(images, texts)
        (out["image_features"].sum() + out["text_features"].sum()).backward()

    _, flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops / batch


def forward_flops(model, images: int = 0, texts: int = 0) -> float:
    """Inference FLOPs of ``images`` images and ``texts`` captions through ``model``'s towers."""
    import torch

    image_batch, text_batch = _inputs(model, max(images, 1), max(texts, 1))
    model.eval()  # as the teachers run (a batch norm counts the same either way, but refuses one image in training)
    total = 0.0
    with torch.no_grad():
        if images:
            total += count_flops(model.encode_image, image_batch)[1] * images / max(images, 1)
        if texts:
            total += count_flops(model.encode_text, text_batch)[1] * texts / max(texts, 1)
    return total


def captioner_flops_per_image(model_name: str, captions: int, tokens: int = CAPTION_TOKENS) -> float:
    """A CoCa writing ``captions`` captions of ``tokens`` tokens for one image, as the reinforce
    job's sampling loop runs it: the image tower once, then the text towers on every prefix
    (no key-value cache, as open_clip's CoCa forward has none)."""
    import torch

    model = meta_model(model_name)
    size = _image_size(model)
    with torch.no_grad():
        encoded, image_flops = count_flops(model, torch.empty(1, 3, size, size, device="meta"))
        latent = encoded["image_features"].repeat_interleave(captions, dim=0)
        embs = encoded["image_embs"].repeat_interleave(captions, dim=0)
        decoding = 0
        for length in range(1, tokens):
            prefix = torch.zeros(captions, length, dtype=torch.long, device="meta")
            decoding += count_flops(model, None, prefix, image_latent=latent, image_embs=embs, output_labels=False)[1]
    return image_flops + decoding


def run_accumulation(run: dict, name: str) -> int:
    """A config's run's micro-batches per step (``accum_freq``, ``auto`` resolved)."""
    from mobileclip_repro.config import accumulation

    world_size = run.get("nodes", 1) * max(run.get("gpus_per_node", 1), 1)
    return accumulation({"accum_freq": 1, **run}, world_size, f"runs.{name}")


def paper_projection(config: dict, mfu: float = DEFAULT_MFU) -> dict:
    """FLOPs per seen sample of plain, DR and online-distillation training for each run of
    ``config``, the one-time reinforcement FLOPs of its dataset, and GPU-hours at ``mfu``."""
    from mobileclip_repro.config import reinforcement_variant
    from mobileclip_repro.teachers import ReinforceConfig

    reinforcement = reinforcement_variant(config)
    reinforce_config = ReinforceConfig.load(reinforcement["config"])
    teachers = [meta_model(name) for name in reinforce_config.model_names]
    captions = reinforcement["num_syn_captions"]
    captioner = reinforcement["captioner"]
    if reinforcement["generate"] and captioner == "world":  # the toy world's oracle captions: no model runs
        captioner_name, caption_flops, one_caption = "world (the toy's oracle, no model)", 0.0, 0.0
    else:
        # a published reinforcement, or several caption sets: Apple's open_clip CoCa ViT-L-14 wrote v1's captions
        captioner_name = captioner["coca"]["model_name"] if isinstance(captioner, dict) and "coca" in captioner \
            else "coca_ViT-L-14"
        caption_flops = captioner_flops_per_image(captioner_name, captions)
        one_caption = captioner_flops_per_image(captioner_name, 1)
    teacher_online = sum(forward_flops(t, images=1, texts=2) for t in teachers)  # its image, real + synthetic caption
    per_image_reinforcement = {
        "teachers": sum(forward_flops(t, images=reinforce_config.num_samples, texts=1 + captions) for t in teachers),
        "captioner": caption_flops}
    runs = {}
    for name, run in config["runs"].items():
        student = meta_model(run["model"])
        plain, dr = training_flops_per_sample(student, 1), training_flops_per_sample(student, 2)
        accum_freq = run_accumulation(run, name)
        if accum_freq > 1:  # exact accumulation forwards every micro-batch once more, without gradients
            plain += forward_flops(student, images=1, texts=1)
            dr += forward_flops(student, images=1, texts=2)
        # online: the teachers on a fresh augmentation and both captions each step, captions from syn.json
        # (once per micro-batch under accumulation); online + captioning: one fresh synthetic caption per seen sample too
        arms = {"plain": plain, "DR": dr, "online": dr + teacher_online,
                "online + captioning": dr + teacher_online + one_caption}
        epoch = 12.8e6  # the paper's epoch-time table is per DataComp-12M epoch, on 8 GPUs
        runs[name] = {"model": run["model"], "seen_samples": run["seen_samples"], "accum_freq": accum_freq,
                      "flops_per_sample": arms,
                      "ratios": {"DR/plain": dr / plain, "online/DR": arms["online"] / dr},
                      "epoch_hours_8_gpus": {gpu: {arm: epoch * flops / (8 * peak * mfu) / 3600
                                                   for arm, flops in arms.items()}
                                             for gpu, peak in PEAK_BF16_FLOPS.items()},
                      "run_gpu_hours": {gpu: {arm: run["seen_samples"] * flops / (peak * mfu) / 3600
                                              for arm, flops in arms.items()}
                                        for gpu, peak in PEAK_BF16_FLOPS.items()}}
    per_image = sum(per_image_reinforcement.values())
    datasets = {"12.8M images (DataComp-12M)": 12.8e6, "1.28B images (DataComp-1B)": 1.28e9}
    return {"mfu": mfu, "teachers": list(reinforce_config.model_names), "augmentations": reinforce_config.num_samples,
            "synthetic_captions": captions, "captioner": captioner_name, "runs": runs,
            "reinforcement_flops_per_image": {**per_image_reinforcement, "total": per_image},
            "reinforcement_gpu_hours": {dataset: {gpu: images * per_image / (peak * mfu) / 3600
                                                  for gpu, peak in PEAK_BF16_FLOPS.items()}
                                        for dataset, images in datasets.items()},
            "paper_epoch_hours_8xA100": {"plain": 1.3, "DR": 1.3, "online": 21.1}}


def describe_projection(projection: dict) -> str:
    lines = [f"Projected from FLOPs counted on the meta device (FlopCounterMode), at {100 * projection['mfu']:.0f}% "
             f"MFU of the dense bf16 peak; teachers {', '.join(projection['teachers'])} "
             f"({projection['augmentations']} stored augmentations, {projection['synthetic_captions']} captions "
             f"by {projection['captioner']})."]
    paper = projection["paper_epoch_hours_8xA100"]
    for name, run in projection["runs"].items():
        flops = run["flops_per_sample"]
        accumulating = f", accum_freq {run['accum_freq']} (one more forward)" if run.get("accum_freq", 1) > 1 else ""
        lines.append(f"{name} ({run['model']}{accumulating}): training GFLOPs per seen sample: "
                     f"plain {flops['plain'] / 1e9:.1f}, "
                     f"DR {flops['DR'] / 1e9:.1f} (x{run['ratios']['DR/plain']:.2f}), online distillation "
                     f"{flops['online'] / 1e9:.1f} (x{run['ratios']['online/DR']:.2f} of DR), online with a fresh "
                     f"caption {flops['online + captioning'] / 1e9:.1f}")
        a100 = run["epoch_hours_8_gpus"]["A100"]
        lines.append(f"  one DataComp-12M epoch on 8xA100: plain {a100['plain']:.2f} h, DR {a100['DR']:.2f} h, "
                     f"online {a100['online']:.2f} h, online + captioning {a100['online + captioning']:.2f} h "
                     f"(paper, measured: {paper['plain']} / {paper['DR']} / {paper['online']} h online)")
        hours = run["run_gpu_hours"]
        lines.append(f"  the whole run ({run['seen_samples']:,} seen samples): " + "; ".join(
            f"{gpu} plain {h['plain']:,.0f}, DR {h['DR']:,.0f}, online {h['online']:,.0f} GPU-h" for gpu, h in hours.items()))
    per_image = projection["reinforcement_flops_per_image"]
    lines.append(f"reinforcement at this config's settings, once per image: teachers {per_image['teachers'] / 1e9:.0f} "
                 f"GFLOPs, captioner {per_image['captioner'] / 1e9:.0f} GFLOPs")
    for dataset, hours in projection["reinforcement_gpu_hours"].items():
        lines.append(f"  {dataset}: " + ", ".join(f"{gpu} {h:,.0f} GPU-h" for gpu, h in hours.items()))
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (its runs and its reinforcement JSON)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilization assumed for GPU-hours")
    parser.add_argument("--json", action="store_true", help="print the projection as JSON")


def command(args) -> int:
    from mobileclip_repro.preflight import load_experiment

    projection = paper_projection(load_experiment(args.config), args.mfu)
    print(json.dumps(projection, indent=2) if args.json else describe_projection(projection))
    return 0
