# Shared once per DAG: validate the config against the schema (before any job runs),
# resolve every training job's spec once, and turn config into target lists.
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from mobileclip_repro.config import (ConfigError, generated_benchmark, read_yaml, reinforcement_dr_dir,
                                     reinforcement_names, reinforcement_variant, resolve_run, run_dir, run_seeds,
                                     subset_sizes, subsets_file)
from mobileclip_repro.hub import shard_groups
from mobileclip_repro.launch import launcher_prefix, slurm_resources
from mobileclip_repro.data.local_data import folder_listing
from mobileclip_repro.locks import ResultsBusy, hold_dag_lock, release_dag_lock
from mobileclip_repro.preflight import check_benchmark_roots, load_experiment

DEFAULT_CONFIG = "configs/toy.yaml"

try:
    for configfile in workflow.configfiles:  # Snakemake's own reader lets a key given twice pass
        read_yaml(configfile)
    EXP = load_experiment(dict(config) if config else DEFAULT_CONFIG)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None


onstart:
    # One DAG per results_dir, whichever working directory started it (Snakemake locks only its
    # own): onstart is the last hook before Snakemake prepares a job (deletes its outputs, opens
    # its log). Dry runs never get here, nor should a job's own Snakemake process (SLURM jobs,
    # spawned with --no-hooks), which its main process's lock must not refuse. The lock goes with
    # the main process, however it ends.
    if workflow.is_main_process:
        try:
            hold_dag_lock(EXP["results_dir"])
        except ResultsBusy as error:
            raise WorkflowError(str(error)) from None
    # A hub experiment loads (and plans: `snakemake -n`) without its benchmark roots, as it is
    # planned before its data exist, wherever it is planned. When jobs are about to run and
    # some evaluate, the roots it neither makes nor fetches must be there (toy and local
    # experiments checked them when they loaded): before any job, not after training.
    if {job.rule.name for job in workflow.dag.needrun_jobs()} & {"evaluate", "evaluate_teachers"}:
        try:
            check_benchmark_roots(EXP)
        except ConfigError as error:
            raise WorkflowError(f"invalid config: {error}") from None


onsuccess:
    release_dag_lock(EXP["results_dir"])


onerror:
    release_dag_lock(EXP["results_dir"])

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


def local_manifest():
    return DATA_ROOT / "local.json"


def local_data_folders():
    """Local data's folders: data.datacomp_dir, and data.dr_dir where DR runs read DataCompDR shards
    found there (not generated by the DAG, not joined into datacomp_dir)."""
    folders = [DATA["datacomp_dir"]]
    given_dr = any(spec["dr"] and not REINFORCEMENTS[spec["reinforcement"]]["generate"]
                   and spec.get("data_layout") != "joined" for spec in SPECS.values())
    if given_dr and DATA["dr_dir"] not in folders:
        folders.append(DATA["dr_dir"])
    return folders


def data_inputs():
    """The data stage's manifest(s) a job waits for: the toy world's, every fetched group's, or
    the listing of local data (local_data; rerun when a shard there is added, removed or rewritten)."""
    if IS_TOY:
        return [DATA_ROOT / "manifest.json"]
    return [fetch_manifest(group) for group in GROUP_IDS] if IS_HUB else [local_manifest()]


def training_data(spec):
    """What a run's training reads: the data stage's manifests, the subsets file of a subset run and,
    for a DR run, the reinforcement's manifests when the DAG generates it. Train reads exactly the
    shards the manifests list (``--data-manifests``)."""
    inputs = {"data": data_inputs(), "reinforced": []}
    if spec.get("subset_size"):
        inputs["subsets"] = spec["subset_file"]
    if spec["dr"] and REINFORCEMENTS[spec["reinforcement"]]["generate"]:
        inputs["reinforced"] = [reinforce_manifest(spec["reinforcement"], group) for group in GROUP_IDS]
    return inputs


def canonical(value):
    """``value`` with every mapping's keys in sorted order, recursively (lists keep theirs).
    Snakemake compares a job's params by their repr, which follows key order: the same config
    values written in another order (or through YAML anchors and merges) must be no change."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def canonical_json(value):
    """A value as JSON for a job's command line, keys sorted (``canonical``)."""
    return json.dumps(value, sort_keys=True)


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


def teachers_evaluated():
    """Whether the DAG evaluates the reinforcement's teachers and their ensemble."""
    return bool(EXP["evaluation"]["teachers"] and any(spec["dr"] for spec in SPECS.values()))


def teacher_records():
    """The ensemble's records, one per benchmark (evaluate_teachers' outputs beside its index)."""
    if not teachers_evaluated():
        return []
    return [str(RESULTS / "eval" / "teachers" / "ensemble" / f"{b['name']}.json") for b in BENCHMARKS]


def teachers_index():
    return RESULTS / "eval" / "teachers" / "records.json"


def all_eval_records():
    """The evaluate jobs' index files: the report reads the records they list, and no others."""
    return [eval_index(run) for run in RUNS] + ([teachers_index()] if teachers_evaluated() else [])


def teacher_manifest(teacher):
    """A teacher job's manifest, in its run folder beside the exported weights (its declared output)."""
    return run_dir(EXP, teacher, section="teachers") / "manifest.json"


def generated_reinforcements():
    """The reinforcements the experiment's DR runs read and the DAG makes (not fetched)."""
    return sorted({spec["reinforcement"] for spec in SPECS.values()
                   if spec["dr"] and REINFORCEMENTS[spec["reinforcement"]]["generate"]})


def trained_teachers():
    """Teachers the DAG trains (the teachers section): when it reinforces or evaluates teachers."""
    return sorted(TEACHERS) if generated_reinforcements() or teachers_evaluated() else []


def upstream_job_benchmarks():
    """The benchmark TSV of every job the report depends on: the compute ledger's rows."""
    if IS_TOY:
        jobs = [("toy_data", "all")]
    else:
        jobs = [("fetch", f"group_{group}") for group in GROUP_IDS] if IS_HUB else [("local_data", "all")]
    if any(spec.get("subset_size") for spec in SPECS.values()):
        jobs.append(("select_subsets", "all"))
    jobs += [("fetch_benchmark", name) for name in HUB_BENCHMARKS]
    jobs += [("train_teacher", teacher) for teacher in trained_teachers()]
    jobs += [("reinforce", f"{name}_group_{group}") for name in generated_reinforcements() for group in GROUP_IDS]
    jobs += [("train", f"{run}_seed_{seed}") for run, seed in SPECS]
    jobs += [("evaluate", run) for run in RUNS]
    if teachers_evaluated():
        jobs.append(("evaluate_teachers", "all"))
    return [job_benchmark(rule, name) for rule, name in jobs]


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
