# Shared once per DAG: validate the config against the schema (before any job runs),
# resolve every training job's spec once, and turn config into target lists.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from mobileclip_repro.config import (ConfigError, generated_benchmark, load_config, read_yaml, reinforcement_dr_dir,
                                     reinforcement_names, reinforcement_variant, resolve_run, run_dir, run_seeds,
                                     subset_sizes, subsets_file)
from mobileclip_repro.hub import shard_groups
from mobileclip_repro.launch import launcher_prefix, slurm_resources
from mobileclip_repro.preflight import check_benchmark_roots

DEFAULT_CONFIG = "configs/toy.yaml"

try:
    for configfile in workflow.configfiles:  # Snakemake's own reader lets a key given twice pass
        read_yaml(configfile)
    EXP = load_config(dict(config) if config else DEFAULT_CONFIG)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None


onstart:
    # A hub experiment loads (and plans: `snakemake -n`) without its benchmark roots, as it is
    # planned before its data exist, wherever it is planned. When jobs are about to run and
    # some evaluate, the roots it neither makes nor fetches must be there (toy and local
    # experiments checked them when they loaded): before any job, not after training.
    if {job.rule.name for job in workflow.dag.needrun_jobs()} & {"evaluate", "evaluate_teachers"}:
        try:
            check_benchmark_roots(EXP)
        except ConfigError as error:
            raise WorkflowError(f"invalid config: {error}") from None

RESULTS = Path(EXP["results_dir"])
DATA = EXP["data"]
DATA_ROOT = RESULTS / "data"
IS_TOY = DATA["source"] == "toy"
IS_HUB = DATA["source"] == "hub"  # else data the DAG makes (toy) or finds (local: data.datacomp_dir)
# Jobs run the CLI (`mobileclip-repro`, `python -m mobileclip_repro`) of the environment that
# runs Snakemake: its bin folder goes first on PATH, which jobs (and srun's tasks) inherit.
# Not a parameter, so a moved checkout does not rerun every job.
envvars:
    "PATH",


inherited_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), inherited_path])
REINFORCE = reinforcement_variant(EXP)  # the default reinforcement (its teachers are the ones evaluated)
# Every named reinforcement (the default and reinforcement.variants), each its own reinforce job(s).
REINFORCEMENTS = {name: reinforcement_variant(EXP, name) for name in reinforcement_names(EXP)}
HUB = DATA["hub"]
# Hub shards in groups, one fetch (and reinforce) job each; toy or local data is one group.
HUB_GROUPS = shard_groups(HUB["shards"], HUB["group_size"]) if IS_HUB else []
GROUP_IDS = [f"{index:05d}" for index in range(len(HUB_GROUPS))] if IS_HUB else ["00000"]
RUNS = list(EXP["runs"])
TEACHERS = list(EXP["teachers"])
BENCHMARKS = EXP["evaluation"]["benchmarks"]
# One training job per (run, seed); specs resolved once here, not per rule call.
SPECS = {(run, seed): resolve_run(EXP, run, seed=seed) for run in RUNS for seed in run_seeds(EXP["runs"][run])}
TEACHER_SPECS = {teacher: resolve_run(EXP, teacher, section="teachers") for teacher in TEACHERS}
TRAIN_RESOURCES = {key: slurm_resources(spec) for key, spec in SPECS.items()}
EVALUATION = EXP["evaluation"]
# Sets with a hub_repo (clip_benchmark's webdataset mirrors) are downloaded once, before
# any evaluation job, so evaluation never touches the network.
HUB_BENCHMARKS = {b["name"]: b for b in BENCHMARKS if b.get("hub_repo")}
REPORT = EXP["report"]
REPORT_DIR = RESULTS / "report"

wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) if RUNS else "NONE",
    seed=r"\d+",
    epoch=r"\d+",
    reinforcement="|".join(map(re.escape, REINFORCEMENTS)),
    group=r"\d{5}",


def spec_of(wildcards):
    return SPECS[(wildcards.run, int(wildcards.seed))]


def train_resource(name):
    """A train job's SLURM resource, from the specs resolved above."""
    return lambda wildcards: TRAIN_RESOURCES[(wildcards.run, int(wildcards.seed))][name]


def fetch_manifest(group):
    return DATA_ROOT / "fetch" / f"group_{group}.json"


def reinforce_manifest(reinforcement, group):
    return DATA_ROOT / "reinforce" / reinforcement / f"group_{group}.json"


def data_inputs():
    """The data stage's outputs a job waits for: the toy world's manifest, every fetched group,
    or nothing for local data (already on disk)."""
    if IS_TOY:
        return [DATA_ROOT / "manifest.json"]
    return [fetch_manifest(group) for group in GROUP_IDS] if IS_HUB else []


def training_data(spec):
    """What a run's training reads: the toy world's manifest or every fetched group, and, for a DR
    run, the reinforcement it names when the DAG generates it."""
    inputs = {"data": data_inputs()}
    if spec.get("subset_size"):
        inputs["subsets"] = spec["subset_file"]
    if spec["dr"] and REINFORCEMENTS[spec["reinforcement"]]["generate"]:
        inputs["reinforced"] = [reinforce_manifest(spec["reinforcement"], group) for group in GROUP_IDS]
    return inputs


def spec_json(spec):
    return json.dumps(spec, sort_keys=True)


def train_manifest(run, seed):
    return RESULTS / "runs" / run / f"seed_{seed}" / "manifest.json"


def eval_dir(run, seed, epoch):
    return RESULTS / "eval" / run / f"seed_{seed}" / f"epoch_{epoch}"


def eval_index(run):
    """The evaluate job's output: the list of records it wrote (each seed x checkpoint x benchmark)."""
    return RESULTS / "eval" / run / "records.json"


def seeds_of(run):
    return [seed for name, seed in SPECS if name == run]


def run_checkpoints(run):
    """Every seed's checkpoints of ``run`` with their record folders, in one order."""
    return [(run_dir(EXP, run, seed=seed) / "checkpoints" / f"epoch_{epoch}.pt", eval_dir(run, seed, epoch))
            for seed in seeds_of(run) for epoch in range(1, SPECS[(run, seed)]["num_checkpoints"] + 1)]


def teacher_records():
    """The reinforcement's teachers and their ensemble, when the DAG evaluates them."""
    if not (EXP["evaluation"]["teachers"] and any(spec["dr"] for spec in SPECS.values())):
        return []
    return [str(RESULTS / "eval" / "teachers" / "ensemble" / f"{b['name']}.json") for b in BENCHMARKS]


def all_eval_records():
    return [eval_index(run) for run in RUNS] + teacher_records()


def ablation_outputs():
    """The ablation ladder's table and chart, where the config has one (report.ablation)."""
    if not REPORT.get("ablation"):
        return []
    return [str(REPORT_DIR / name) for name in ("ablation.csv", "ablation.md", "ablation.png", "ablation.pdf")]


def report_outputs():
    names = ["results.csv", "results.md", "efficiency.json", "learning_efficiency.png", "learning_efficiency.pdf",
             "report.html", "cost.csv"]
    return [str(REPORT_DIR / name) for name in names] + ablation_outputs() + data_efficiency_outputs()


def data_efficiency_outputs():
    """The data-efficiency figure, where runs train on data.subsets."""
    if not any(spec.get("subset_size") for spec in SPECS.values()):
        return []
    return [str(REPORT_DIR / name) for name in ("data_efficiency.png", "data_efficiency.pdf")]


def paper_reference_option(setting):
    """`report.paper_reference` as the report CLI's option: true is the MobileCLIP paper's set."""
    if setting is False:
        return ""
    return f"--paper-reference {shlex.quote('mobileclip' if setting is True else str(setting))}"


def toy_benchmark_roots():
    """Benchmark sets the toy-data rule generates (the others are fetched or user-provided roots)."""
    return [b["root"] for b in BENCHMARKS if generated_benchmark(EXP, b)]


def train_inputs(wildcards):
    return training_data(spec_of(wildcards))


def fetched_benchmark(name):
    return DATA_ROOT / "benchmarks_fetched" / f"{name}.json"


def benchmark_inputs(wildcards):
    return {"benchmarks": toy_benchmark_roots(), "fetched": [fetched_benchmark(name) for name in HUB_BENCHMARKS]}


def reinforce_inputs(wildcards):
    data = {"fetched": fetch_manifest(wildcards.group)} if IS_HUB else {"data": data_inputs()}
    return {**data, "reinforce_config": REINFORCEMENTS[wildcards.reinforcement]["config"],
            "teachers": [RESULTS / "teachers" / name for name in TEACHERS]}


def reinforce_selection(wildcards):
    """Toy or local data: every shard (one group); hub: the group's shards of the spec."""
    if not IS_HUB:
        return ""
    return (f"--shard-spec {shlex.quote(json.dumps(HUB['shards']))} --group {wildcards.group}"
            f" --group-size {HUB['group_size']}")


def job_benchmark(rule, name):
    """Where Snakemake's `benchmark:` directive writes a job's TSV (wall s, max RSS, CPU s, I/O):
    benchmarks/<rule>/<name>.tsv, joined with the FLOPs the job counted into report/cost.csv."""
    return RESULTS / "benchmarks" / rule / f"{name}.tsv"
