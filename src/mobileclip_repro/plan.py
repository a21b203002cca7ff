"""`plan`: size a config before anything runs.

For one experiment config, from the config alone (nothing is downloaded, no job is started):

- the data: shards (``data.hub.shards``, or ``data.toy``) and samples;
- the bytes to download: DataCompDR tars, DataComp metadata (per-shard tars for the 12M set,
  the whole parquet set for ``datacomp_1b``) and the images, estimated from a mean size;
- the disk each stage fills: data, reinforcement (when the DAG generates it), checkpoints
  (parameters x bytes kept per parameter x files kept), evaluation records;
- the GPU-hours of each training run (``flops.paper_projection``'s FLOP projection; this part
  imports torch, about 40 s for a paper config on 2 cores, and ``--no-gpu-hours`` skips it);
- the jobs the DAG would submit, with the runtime each requests, flagged against the
  cluster's limit (``--cluster-max-runtime``).

Every per-unit figure is a named constant in the block below, with where it comes from. The
job list follows ``workflow/rules/common.smk``'s selection of targets; the rules' own
``resources`` come from the same places the rules ask (``Experiment.*_resources``, sized by
``launch``; ``launch.FETCH_RESOURCES``), and what a rule leaves unset from the SLURM profile's
``default-resources`` (slurm/config.yaml).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import yaml

from mobileclip_repro.config import REPO_ROOT, captioner_sets, reinforcement_variant
from mobileclip_repro.experiment import Experiment
from mobileclip_repro.hub import expand_shard_spec
from mobileclip_repro.launch import FETCH_RESOURCES

# -- per-unit facts: each with its source -------------------------------------------------------

# apple/DataCompDR-1B file listing on the hub: every tar of `{00..65}/*.tar` is 1.98-2.09 GB, most
# 2.02-2.05 GB (e.g. 12/00000409.tar: 2,041,907,200 bytes). 65,536 of them: ~133 TB.
DATACOMPDR_1B_TAR_BYTES = 2.03e9
# mlfoundations/DataComp-12M's dataset card: 12,784,978 samples in 1,024 shards; apple/DataCompDR-12M
# holds the same uids per shard (apple/DataComp-12M's card).
DATACOMP_12M_SAMPLES = 12_784_978
DATACOMP_12M_SHARDS = 1_024
# DataCompDR-1B: 1.28B samples over 65,536 shards, 19,531 a shard. Not stated on the card; it is
# what the listing's 2.03 GB a tar gives at dr_sample_bytes' 103,936 bytes a sample (10
# augmentations), and the size cost.py already prices DataComp-1B's reinforcement at.
DATACOMPDR_1B_SAMPLES = 1_280_000_000
DATACOMPDR_1B_SHARDS = 65_536
# mlfoundations/datacomp_1b: parquet metadata (uid, url, text, sha256, ...) of all of DataComp-1B,
# about 300 GB (the figure of the project's issue 32, read off the repo's file listing). A fetch
# group needs only its shards' uids but the files are not split by shard: every group downloads
# the whole set once into the shared staging folder, and then reads all of it (fetch.py).
DATACOMP_1B_PARQUET_BYTES = 300e9
# The images: fetch stores each image's original bytes (re-encoding would break its sha256).
# MobileCLIP paper (docs/reference.md §6): DataComp-12M takes 0.9 TB on disk for 12.8M samples,
# i.e. ~70 KB a sample with its caption and metadata. An upper bound for what arrives: 10 to 40%
# of the URLs no longer serve the image (docs/reference.md §8).
MEAN_IMAGE_BYTES = 0.9e12 / 12.8e6
# A tar member: a 512-byte header, then its content padded to 512-byte blocks (POSIX ustar).
TAR_BLOCK = 512
# A DataCompDR sample's small members, measured on shards this project writes (configs/toy.yaml,
# reinforced): `json` (uid + sha256) 121 bytes; `url.txt` one URL; `paug.json` ~45 bytes per
# augmentation; `syn.json` ~60 bytes per caption (CoCa captions are cut at 30 tokens); the `npz`
# holds its float arrays plus 520 bytes of zip and array headers. With these dr_sample_bytes gives
# 103,936 bytes for DataCompDR-1B's layout (19,531 samples: 2.03 GB, the listing's size) and 11,264
# for the toy's (measured: 11,274 a sample, the tar's end record included).
PAUG_BYTES_PER_AUGMENTATION = 45
SYN_BYTES_PER_CAPTION = 60
NPZ_OVERHEAD_BYTES = 520
# The DataComp-12M metadata tars (url.txt, txt, json per sample, each under 512 bytes): three
# members of one header and one block each, no image.
DATACOMP_METADATA_SAMPLE_BYTES = 3 * 2 * TAR_BLOCK
# A toy-world sample (image, caption, json) in its tar: measured on `toy-data` (seed 0): 9.17 MB
# for 1,000 samples.
TOY_SAMPLE_BYTES = 9_170
# A checkpoint file (train._save_checkpoint): the model's fp32 weights and AdamW's two fp32
# moments per parameter (the grad scaler's state is a few numbers). A teacher's exported weights
# (train --export): the fp32 weights only.
CHECKPOINT_BYTES_PER_PARAMETER = 3 * 4
EXPORTED_WEIGHTS_BYTES_PER_PARAMETER = 4
# An evaluation record (evaluate.build_record): the metrics and provenance (~1 KB) and the run's
# resolved spec (2-3 KB as JSON), one per checkpoint and benchmark.
EVAL_RECORD_BYTES = 4_000
# Bytes per stored embedding value by reinforcement.dtype (the bf16 variant stores gzip'd tensors:
# counted here at 2 bytes, before gzip).
EMBEDDING_DTYPE_BYTES = {"float32": 4, "bf16": 2}
DEFAULT_TEACHER_DIMENSION = [768, 768]  # two ViT-L-14 teachers (docs/reference.md §2)

# The hub repos the plan knows: how their samples are counted and what fetch downloads of them.
SAMPLES_PER_SHARD = {
    "mlfoundations/DataComp-12M": DATACOMP_12M_SAMPLES / DATACOMP_12M_SHARDS,
    "apple/DataCompDR-12M": DATACOMP_12M_SAMPLES / DATACOMP_12M_SHARDS,
    "apple/DataCompDR-1B": DATACOMPDR_1B_SAMPLES / DATACOMPDR_1B_SHARDS,
}
LISTED_DR_TAR_BYTES = {"apple/DataCompDR-1B": DATACOMPDR_1B_TAR_BYTES}  # else: dr_sample_bytes x samples
PARQUET_REPOS = {"mlfoundations/datacomp_1b": DATACOMP_1B_PARQUET_BYTES}
SHARD_REPOS = {"mlfoundations/DataComp-12M"}  # per-shard metadata tars, the same ids as DataCompDR's

SLURM_PROFILE = REPO_ROOT / "slurm" / "config.yaml"
# slurm/config.yaml's default-resources, where the profile is not there to read (an installed wheel)
FALLBACK_DEFAULT_RESOURCES = {"runtime": 60, "mem_mb": 16000}


def tar_member_bytes(content_bytes: float) -> int:
    """A tar member's size on disk: its header and its content in whole 512-byte blocks."""
    return TAR_BLOCK + TAR_BLOCK * math.ceil(content_bytes / TAR_BLOCK)


def dr_sample_bytes(augmentations: int, captions: int, embedding_dim: int, dtype_bytes: int = 4) -> int:
    """One DataCompDR sample in its tar (docs/reference.md §3): ``npz`` with ``image_emb``
    (augmentations x dim) and ``text_emb`` (1 + captions rows), ``paug.json``, ``syn.json``,
    ``url.txt`` and ``json``."""
    npz = (augmentations + 1 + captions) * embedding_dim * dtype_bytes + NPZ_OVERHEAD_BYTES
    return (tar_member_bytes(npz) + tar_member_bytes(PAUG_BYTES_PER_AUGMENTATION * augmentations)
            + tar_member_bytes(SYN_BYTES_PER_CAPTION * captions) + 2 * tar_member_bytes(1))


# -- what the DAG selects (experiment.Experiment, as workflow/rules/common.smk) -----------------------------------------------

def _experiment(config: dict) -> Experiment:
    """The config's jobs as the DAG selects them (experiment.Experiment, which common.smk reads too)."""
    return Experiment(config)


# -- data -------------------------------------------------------------------------------------------

def data_size(config: dict) -> dict:
    """Shards and samples of the experiment's training data (None where no fact gives them)."""
    data = config["data"]
    if data["source"] == "toy":
        toy = data["toy"]
        return {"source": "toy", "shards": math.ceil(toy["train_samples"] / toy["samples_per_shard"]),
                "samples": toy["train_samples"], "samples_per_shard": toy["samples_per_shard"],
                "samples_basis": "data.toy.train_samples"}
    if data["source"] == "local":
        tars = sorted(Path(data["datacomp_dir"]).rglob("*.tar")) if Path(data["datacomp_dir"]).is_dir() else []
        return {"source": "local", "shards": len(tars), "samples": None, "samples_per_shard": None,
                "samples_basis": "local data: counted when local-data lists it", "local_bytes": sum(
                    path.stat().st_size for path in tars)}
    hub, experiment = data["hub"], _experiment(config)
    shards = len(expand_shard_spec(hub["shards"]))
    repo = next((repo for repo in (hub["dr_repo"] if experiment.fetches_dr_tars() else None, hub["datacomp_repo"])
                 if repo in SAMPLES_PER_SHARD), None)
    per_shard = SAMPLES_PER_SHARD.get(repo)
    return {"source": "hub", "shards": shards, "samples": round(shards * per_shard) if per_shard else None,
            "samples_per_shard": per_shard, "groups": len(experiment.group_ids),
            "samples_basis": f"{repo}: {per_shard:,.1f} samples a shard" if per_shard else
            f"no sample count known for {hub['datacomp_repo']} / {hub['dr_repo']}"}


def _embedding_layout(config: dict, name: str) -> tuple[int, int, int, int]:
    """(augmentations, captions, embedding dim, bytes per value) of a reinforcement's DR samples."""
    settings = reinforcement_variant(config, name)
    augmentations = json.loads(Path(settings["config"]).read_text())["num_samples"]
    sets, _ = captioner_sets(settings["captioner"])
    widths = [sum(run["distill"]["teacher_dimension"]) for run in config["runs"].values()
              if run["data"] == "dr" and run.get("reinforcement", "default") == name]
    dim = widths[0] if widths else sum(DEFAULT_TEACHER_DIMENSION)
    return augmentations, len(sets) * settings["num_syn_captions"], dim, EMBEDDING_DTYPE_BYTES[settings["dtype"]]


def download_rows(config: dict, size: dict) -> list[dict]:
    """What the fetch jobs download: one row per kind of file."""
    if config["data"]["source"] != "hub":
        return []
    hub, shards, samples = config["data"]["hub"], size["shards"], size["samples"]
    rows = []
    if _experiment(config).fetches_dr_tars():
        repo = hub["dr_repo"]
        if repo in LISTED_DR_TAR_BYTES:
            per_tar, basis = LISTED_DR_TAR_BYTES[repo], f"{repo} file listing"
        elif size["samples_per_shard"]:
            layout = _embedding_layout(config, "default")
            per_tar = dr_sample_bytes(*layout) * size["samples_per_shard"]
            basis = (f"{repo}: the card's sample layout ({layout[0]} augmentations, {layout[1]} captions, "
                     f"{layout[2]}-d {'float32' if layout[3] == 4 else 'bf16'}) x {size['samples_per_shard']:,.0f} "
                     f"samples")
        else:
            per_tar, basis = None, f"{repo}: no per-tar size known"
        rows.append({"item": "DataCompDR tars", "repo": repo, "units": shards, "bytes_per_unit": per_tar,
                     "bytes": per_tar * shards if per_tar else None, "basis": basis})
    repo = hub["datacomp_repo"]
    if repo in PARQUET_REPOS:
        rows.append({"item": "DataComp parquet metadata (whole set, once)", "repo": repo, "units": 1,
                     "bytes_per_unit": PARQUET_REPOS[repo], "bytes": PARQUET_REPOS[repo],
                     "basis": f"{repo} file listing (issue 32's ~300 GB)"})
    elif repo in SHARD_REPOS and samples:
        per_tar = DATACOMP_METADATA_SAMPLE_BYTES * size["samples_per_shard"]
        rows.append({"item": "DataComp metadata tars", "repo": repo, "units": shards, "bytes_per_unit": per_tar,
                     "bytes": per_tar * shards, "basis": "3 tar members of < 512 bytes a sample (url.txt, txt, json)"})
    else:
        rows.append({"item": "DataComp metadata", "repo": repo, "units": shards, "bytes_per_unit": None,
                     "bytes": None, "basis": f"{repo}: no size known"})
    rows.append({"item": "images (by URL, at most)", "repo": "the web", "units": samples,
                 "bytes_per_unit": MEAN_IMAGE_BYTES, "bytes": samples * MEAN_IMAGE_BYTES if samples else None,
                 "basis": "MobileCLIP paper: DataComp-12M 0.9 TB / 12.8M samples"})
    return rows


def disk_rows(config: dict, size: dict, downloads: list[dict], count_parameters) -> list[dict]:
    """What each stage leaves on disk (peak, before any clean-up)."""
    experiment = _experiment(config)
    specs = experiment.specs
    rows = []
    data = config["data"]
    if data["source"] == "toy":
        toy = data["toy"]
        toy_sets = [b for b in config["evaluation"]["benchmarks"] if b["dataset"].startswith("wds/toy")]
        samples = toy["train_samples"] + toy["teacher_samples"] + len(toy_sets) * toy["benchmark_samples"]
        rows.append({"stage": "data", "item": "toy world: training, teacher and benchmark shards",
                     "bytes": samples * TOY_SAMPLE_BYTES,
                     "basis": f"{samples:,} samples x {TOY_SAMPLE_BYTES:,} bytes (measured)"})
    elif data["source"] == "local":
        rows.append({"stage": "data", "item": "local shards (already there)", "bytes": size.get("local_bytes", 0),
                     "basis": f"the {size['shards']:,} tars under data.datacomp_dir"})
    else:
        by_item = {row["item"]: row for row in downloads}
        images = by_item["images (by URL, at most)"]
        rows.append({"stage": "data", "item": "DataComp shards with images", "bytes": images["bytes"],
                     "basis": images["basis"]})
        if "DataCompDR tars" in by_item:
            rows.append({"stage": "data", "item": "DataCompDR tars", "bytes": by_item["DataCompDR tars"]["bytes"],
                         "basis": by_item["DataCompDR tars"]["basis"]})
        parquet = by_item.get("DataComp parquet metadata (whole set, once)")
        if parquet:
            rows.append({"stage": "data", "item": "parquet metadata (kept in the fetch staging folder)",
                         "bytes": parquet["bytes"], "basis": parquet["basis"]})
    samples = size["samples"]
    for name in experiment.generated_reinforcements():
        layout = _embedding_layout(config, name)
        per_sample = dr_sample_bytes(*layout)
        rows.append({"stage": "reinforcement", "item": f"DataCompDR shards written ({name})",
                     "bytes": per_sample * samples if samples else None,
                     "basis": f"{per_sample:,} bytes a sample: {layout[0]} augmentations, {layout[1]} captions, "
                              f"{layout[2]}-d embeddings"})
    for teacher in experiment.trained_teachers():
        spec = experiment.teacher_specs[teacher]
        parameters = count_parameters(spec["model"])
        files = spec["num_checkpoints"] + spec["save_most_recent"]
        rows.append({"stage": "checkpoints", "item": f"teacher {teacher} ({spec['model']})",
                     "bytes": parameters * (CHECKPOINT_BYTES_PER_PARAMETER * files
                                            + EXPORTED_WEIGHTS_BYTES_PER_PARAMETER),
                     "basis": f"{parameters:,} parameters x ({CHECKPOINT_BYTES_PER_PARAMETER} B x {files} files + "
                              f"{EXPORTED_WEIGHTS_BYTES_PER_PARAMETER} B exported)"})
    for run in config["runs"]:
        seeds = [spec for (name, _), spec in specs.items() if name == run]
        spec = seeds[0]
        parameters = count_parameters(spec["model"])
        files = spec["num_checkpoints"] + spec["save_most_recent"]  # epoch_<k>.pt, and epoch_latest.pt
        rows.append({"stage": "checkpoints", "item": f"run {run} ({spec['model']}, {len(seeds)} seed(s))",
                     "bytes": parameters * CHECKPOINT_BYTES_PER_PARAMETER * files * len(seeds),
                     "basis": f"{parameters:,} parameters x {CHECKPOINT_BYTES_PER_PARAMETER} B x {files} files "
                              f"x {len(seeds)} seed(s)"})
    checkpoints = sum(spec["num_checkpoints"] for spec in specs.values())
    benchmarks = len(config["evaluation"]["benchmarks"])
    records = checkpoints * benchmarks + (benchmarks if experiment.teachers_evaluated() else 0)
    rows.append({"stage": "eval", "item": "evaluation records", "bytes": records * EVAL_RECORD_BYTES,
                 "basis": f"{records:,} records ({checkpoints:,} checkpoints x {benchmarks} benchmarks"
                          f"{' + the teachers' if experiment.teachers_evaluated() else ''}) x "
                          f"{EVAL_RECORD_BYTES:,} B; benchmark sets not counted"})
    return rows


# -- jobs ---------------------------------------------------------------------------------------------

def profile_resources(profile: Path = SLURM_PROFILE) -> tuple[dict, dict]:
    """(default-resources, set-resources) of the SLURM profile."""
    if not Path(profile).is_file():
        return dict(FALLBACK_DEFAULT_RESOURCES), {}
    settings = yaml.safe_load(Path(profile).read_text()) or {}
    return ({**FALLBACK_DEFAULT_RESOURCES, **(settings.get("default-resources") or {})},
            settings.get("set-resources") or {})


def job_rows(config: dict, cluster_max_runtime_h: float | None = None, profile: Path = SLURM_PROFILE) -> list[dict]:
    """The jobs ``snakemake`` would submit for the experiment from scratch, one row per job kind."""
    defaults, per_rule = profile_resources(profile)
    experiment = _experiment(config)
    specs = experiment.specs
    source, groups = config["data"]["source"], len(experiment.group_ids)

    def row(rule, job, count, runtime=None, mem_mb=None, nodes=1, gpus=0, runtime_from="rule"):
        overrides = per_rule.get(rule) or {}
        if runtime is None:
            runtime, runtime_from = overrides.get("runtime", defaults["runtime"]), "profile default"
        mem_mb = overrides.get("mem_mb", mem_mb if mem_mb is not None else defaults["mem_mb"])
        gpus = overrides.get("gpu", gpus)
        over = None if cluster_max_runtime_h is None else runtime > cluster_max_runtime_h * 60
        return {"rule": rule, "job": job, "count": count, "nodes": nodes, "gpus_per_node": gpus,
                "mem_mb_per_node": mem_mb, "runtime_min": runtime, "runtime_from": runtime_from,
                "over_limit": over}

    rows = []
    if source == "toy":
        rows.append(row("toy_data", "all", 1))
    elif source == "hub":
        rows.append(row("fetch", f"group_00000..group_{groups - 1:05d}", groups, FETCH_RESOURCES["runtime"],
                        FETCH_RESOURCES["mem_mb"]))
    else:
        rows.append(row("local_data", "all", 1))
    if experiment.has_subsets:
        rows.append(row("select_subsets", "all", 1))
    for name in experiment.hub_benchmarks:
        rows.append(row("fetch_benchmark", name, 1))
    for teacher in experiment.trained_teachers():
        resources = experiment.teacher_resources(teacher)
        rows.append(row("train_teacher", teacher, 1, resources["runtime"], resources["mem_mb"],
                        nodes=resources["nodes"], gpus=experiment.teacher_specs[teacher]["gpus_per_node"],
                        runtime_from="teacher config (slurm.runtime)"))
    reinforce = experiment.reinforce_resources()
    for name in experiment.generated_reinforcements():
        rows.append(row("reinforce", f"{name}: {groups} group(s)", groups, reinforce["runtime"],
                        reinforce["mem_mb"], gpus=reinforce["gpu"]))
    for (run, seed), spec in specs.items():
        resources = experiment.train_resources(run, seed)
        rows.append(row("train", f"{run} seed {seed}", 1, resources["runtime"], resources["mem_mb"],
                        nodes=resources["nodes"], gpus=spec["gpus_per_node"],
                        runtime_from="run config (slurm.runtime)"))
    for run in experiment.runs:
        evaluation = experiment.evaluate_resources(run)
        rows.append(row("evaluate", run, 1, evaluation["runtime"], evaluation["mem_mb"], gpus=evaluation["gpu"]))
    if experiment.teachers_evaluated():
        evaluation = experiment.evaluate_teachers_resources()
        rows.append(row("evaluate_teachers", "all", 1, evaluation["runtime"], evaluation["mem_mb"],
                        gpus=evaluation["gpu"]))
    rows.append(row("report", "all", 1))
    return rows


# -- compute --------------------------------------------------------------------------------------------

def gpu_hour_rows(config: dict, projection: dict, size: dict, train_jobs: list[dict]) -> list[dict]:
    """Per training run: its arm's GPU-hours from ``flops.paper_projection`` (per seed x seeds), and
    the wall-clock hours a job needs on its own allocation, against the runtime it requests; per
    generated reinforcement: the projection's FLOPs per image x this config's samples."""
    from mobileclip_repro import flops

    experiment = _experiment(config)
    specs = experiment.specs
    requested = {job["job"]: job["runtime_min"] for job in train_jobs if job["rule"] == "train"}
    rows = []
    for (run, seed), spec in specs.items():
        arm = "online" if spec["dr"] and spec["distill"].get("online") else ("DR" if spec["dr"] else "plain")
        hours = projection["runs"][run]["run_gpu_hours"]
        gpus = max(spec["nodes"] * spec["gpus_per_node"], 1)
        row = {"what": f"train {run} seed {seed}", "arm": arm, "gpus": gpus,
               "requested_h": requested[f"{run} seed {seed}"] / 60}
        for gpu in flops.PEAK_BF16_FLOPS:
            row[f"{gpu} GPU-h"] = hours[gpu][arm]
            row[f"{gpu} wall h"] = hours[gpu][arm] / gpus
        row["fits_requested"] = all(row[f"{gpu} wall h"] <= row["requested_h"] for gpu in flops.PEAK_BF16_FLOPS)
        rows.append(row)
    per_image = projection["reinforcement_flops_per_image"]["total"]
    for name in experiment.generated_reinforcements():
        row = {"what": f"reinforce {name} ({size['samples'] or 0:,} images)", "arm": "reinforcement", "gpus": None,
               "requested_h": None, "fits_requested": None}
        for gpu, peak in flops.PEAK_BF16_FLOPS.items():
            row[f"{gpu} GPU-h"] = (size["samples"] or 0) * per_image / (peak * projection["mfu"]) / 3600
            row[f"{gpu} wall h"] = None
        rows.append(row)
    return rows


@functools.lru_cache(maxsize=None)
def counted_parameters(model_name: str) -> int:
    """The model's parameter count, built on the meta device (shapes only; imports torch)."""
    from mobileclip_repro import flops

    return sum(parameter.numel() for parameter in flops.meta_model(model_name).parameters())


def plan(config: dict, cluster_max_runtime_h: float | None = None, *, gpu_hours: bool = True,
         mfu: float | None = None, count_parameters=None, projection: dict | None = None,
         profile: Path = SLURM_PROFILE) -> dict:
    """The whole plan of a loaded config (``preflight.load_experiment``). ``count_parameters(model) -> int``
    defaults to counting on the meta device; ``projection`` to ``flops.paper_projection(config)``
    when ``gpu_hours``."""
    count_parameters = count_parameters or counted_parameters
    size = data_size(config)
    downloads = download_rows(config, size)
    disk = disk_rows(config, size, downloads, count_parameters)
    jobs = job_rows(config, cluster_max_runtime_h, profile)
    notes = []
    if size["source"] == "hub":
        hub = config["data"]["hub"]
        if _experiment(config).fetches_dr_tars() and not any(run["data"] == "dr" for run in config["runs"].values()):
            notes.append(f"fetch downloads {hub['dr_repo']}'s tars (reinforcement.generate is false) although no "
                         f"run of this config reads them")
        if hub["datacomp_repo"] in PARQUET_REPOS:
            total = PARQUET_REPOS[hub["datacomp_repo"]]
            notes.append(f"each of the {size['groups']:,} fetch groups reads the whole {hub['datacomp_repo']} "
                         f"parquet set ({_human_bytes(total)}): {_human_bytes(total * size['groups'])} read in all "
                         f"(downloaded once, into the shared staging folder)")
        notes.append("images: an upper bound; 10 to 40% of DataComp's URLs no longer serve the image "
                     "(docs/reference.md §8)")
    if cluster_max_runtime_h is not None:
        notes += [_over_limit_note(config, job, cluster_max_runtime_h) for job in jobs if job["over_limit"]]
    result = {"config": config["name"], "data": size, "download": downloads,
              "download_bytes": _total(downloads), "disk": disk, "disk_bytes": _total(disk),
              "jobs": jobs, "cluster_max_runtime_h": cluster_max_runtime_h,
              "over_limit": [f"{job['rule']} {job['job']}" for job in jobs if job["over_limit"]],
              "gpu_hours": None, "notes": notes}
    if gpu_hours:
        from mobileclip_repro import flops

        if projection is None:
            projection = flops.paper_projection(config, flops.DEFAULT_MFU if mfu is None else mfu)
        rows = gpu_hour_rows(config, projection, size, jobs)
        result["gpu_hours"] = {"mfu": projection["mfu"], "rows": rows,
                               "total": {gpu: sum(row[f"{gpu} GPU-h"] for row in rows)
                                         for gpu in flops.PEAK_BF16_FLOPS}}
        result["notes"] += [f"{row['what']}: projected {max(row[f'{gpu} wall h'] for gpu in flops.PEAK_BF16_FLOPS):,.1f} "
                            f"h on its {row['gpus']} GPU(s), more than the {row['requested_h']:g} h it requests: it "
                            f"runs as several jobs, resuming from its checkpoints"
                            for row in rows if row["fits_requested"] is False]
    return result


def _over_limit_note(config: dict, job: dict, limit_h: float) -> str:
    note = (f"{job['rule']} {job['job']}: asks for {_human_minutes(job['runtime_min'])}, over the cluster's "
            f"{limit_h:g} h limit")
    if job["rule"] != "train":
        return note
    run = job["job"].rsplit(" seed ", 1)[0]
    resume = config["runs"][run]["resume"]
    # a job cut at its time limit is retried (the profile's retries, slurm-requeue); only
    # `resume: latest` makes the retry continue from the newest checkpoint rather than start over
    return (f"{note}: lower runs.{run}.slurm.runtime to fit; "
            + ("its retries resume from the newest checkpoint (resume: latest)" if resume == "latest" else
               f"with resume: {resume} a retry starts the run over, so set resume: latest too"))


def _hours(value: float | None) -> str:
    """GPU or wall hours: thousands separated; a toy's fractions of an hour with 2 significant digits."""
    if value is None:
        return ""
    return f"{value:,.1f}" if value >= 0.1 or value == 0 else f"{value:.2g}"


def _human_minutes(minutes: float) -> str:
    hours, rest = divmod(round(minutes), 60)
    if not hours:
        return f"{rest} min"
    return f"{hours} h {rest:02d} min" if rest else f"{hours} h"


def _total(rows: list[dict]) -> int | None:
    """The sum of the rows' bytes; None when any is unknown."""
    values = [row["bytes"] for row in rows]
    return None if any(value is None for value in values) else round(sum(values))


def _human_bytes(value: float | None) -> str:
    if value is None:
        return "unknown"
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} B"


def describe_plan(result: dict) -> str:
    """The plan as plain-text tables."""
    import pandas as pd

    size = result["data"]
    samples = "unknown" if size["samples"] is None else f"{size['samples']:,}"
    lines = [f"Plan for {result['config']}: {size['source']} data, {size['shards']:,} shards, {samples} samples "
             f"({size['samples_basis']})"]
    if result["download"]:
        table = pd.DataFrame([{"download": row["item"], "repo": row["repo"],
                               "units": "?" if row["units"] is None else f"{row['units']:,}",
                               "per unit": _human_bytes(row["bytes_per_unit"]), "total": _human_bytes(row["bytes"]),
                               "source": row["basis"]} for row in result["download"]])
        lines += ["", table.to_string(index=False), f"download in all: {_human_bytes(result['download_bytes'])}"]
    table = pd.DataFrame([{"stage": row["stage"], "on disk": row["item"], "bytes": _human_bytes(row["bytes"]),
                           "basis": row["basis"]} for row in result["disk"]])
    lines += ["", table.to_string(index=False), f"disk in all: {_human_bytes(result['disk_bytes'])}"]
    if result["gpu_hours"]:
        gpus = [key[:-len(" GPU-h")] for key in result["gpu_hours"]["rows"][0] if key.endswith(" GPU-h")]
        table = pd.DataFrame([{"compute": row["what"], "arm": row["arm"],
                               **{f"{gpu} GPU-h": _hours(row[f"{gpu} GPU-h"]) for gpu in gpus},
                               **{f"{gpu} wall h": _hours(row[f"{gpu} wall h"]) for gpu in gpus},
                               "requested h": "" if row["requested_h"] is None else f"{row['requested_h']:g}"}
                              for row in result["gpu_hours"]["rows"]])
        total = result["gpu_hours"]["total"]
        lines += ["", f"GPU-hours (flops.paper_projection, {100 * result['gpu_hours']['mfu']:.0f}% MFU of the dense "
                      f"bf16 peak; wall h: on the job's own GPUs)", table.to_string(index=False),
                  "GPU-hours in all: " + ", ".join(f"{gpu} {_hours(hours)}" for gpu, hours in total.items())]
    limit = result["cluster_max_runtime_h"]
    table = pd.DataFrame([{"rule": row["rule"], "job": row["job"], "jobs": row["count"], "nodes": row["nodes"],
                           "GPUs/node": row["gpus_per_node"], "mem MB/node": row["mem_mb_per_node"],
                           "runtime": _human_minutes(row["runtime_min"]), "from": row["runtime_from"],
                           "over limit": "" if row["over_limit"] is None else ("OVER" if row["over_limit"] else "ok")}
                          for row in result["jobs"]])
    lines += ["", f"Jobs ({sum(row['count'] for row in result['jobs']):,} in all; cluster limit: "
                  f"{'not given' if limit is None else f'{limit:g} h'})", table.to_string(index=False)]
    if result["notes"]:
        lines += [""] + [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)
