# Shared once per DAG: validate the config against the schema (before any job runs),
# resolve every training job's spec once, and turn config into target lists.
import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from mobileclip_repro.config import ConfigError, load_config, resolve_run, run_dir, run_seeds
from mobileclip_repro.hub import shard_groups

DEFAULT_CONFIG = "configs/toy.yaml"

try:
    EXP = load_config(dict(config) if config else DEFAULT_CONFIG)
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None

RESULTS = Path(EXP["results_dir"])
DATA = EXP["data"]
DATA_ROOT = RESULTS / "data"
IS_TOY = DATA["source"] == "toy"
# Rules run the CLI with the interpreter that runs Snakemake (the project's venv).
PYTHON = shlex.quote(sys.executable)
CLI = f"{PYTHON} -m mobileclip_repro"
TORCHRUN = f"{PYTHON} -m torch.distributed.run"  # `torchrun`, without relying on PATH
REINFORCE = EXP["reinforcement"]
HUB = DATA["hub"]
# Hub shards in groups, one fetch (and reinforce) job each; toy data is one group.
HUB_GROUPS = [] if IS_TOY else shard_groups(HUB["shards"], HUB["group_size"])
GROUP_IDS = ["00000"] if IS_TOY else [f"{index:05d}" for index in range(len(HUB_GROUPS))]
RUNS = list(EXP["runs"])
TEACHERS = list(EXP["teachers"])
BENCHMARKS = EXP["evaluation"]["benchmarks"]
# One training job per (run, seed); specs resolved once here, not per rule call.
SPECS = {(run, seed): resolve_run(EXP, run, seed=seed) for run in RUNS for seed in run_seeds(EXP["runs"][run])}
TEACHER_SPECS = {teacher: resolve_run(EXP, teacher, section="teachers") for teacher in TEACHERS}

wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) if RUNS else "NONE",
    seed=r"\d+",
    epoch=r"\d+",
    group=r"\d{5}",


def spec_of(wildcards):
    return SPECS[(wildcards.run, int(wildcards.seed))]


def fetch_manifest(group):
    return DATA_ROOT / "fetch" / f"group_{group}.json"


def reinforce_manifest(group):
    return DATA_ROOT / "reinforce" / f"group_{group}.json"


def training_data(dr):
    """What a run's training reads: the toy world's manifest or every fetched group, and the reinforcement."""
    inputs = {"data": [DATA_ROOT / "manifest.json"] if IS_TOY else [fetch_manifest(group) for group in GROUP_IDS]}
    if dr and REINFORCE["generate"]:
        inputs["reinforced"] = [reinforce_manifest(group) for group in GROUP_IDS]
    return inputs


def spec_json(spec):
    return json.dumps(spec, sort_keys=True)


def train_manifest(run, seed):
    return RESULTS / "runs" / run / f"seed_{seed}" / "manifest.json"


def eval_dir(run, seed, epoch):
    return RESULTS / "eval" / run / f"seed_{seed}" / f"epoch_{epoch}"


def eval_index(run, seed):
    """The evaluate job's output: the list of records it wrote (each checkpoint x benchmark)."""
    return RESULTS / "eval" / run / f"seed_{seed}" / "records.json"


def teacher_records():
    """The reinforcement's teachers and their ensemble, when the DAG evaluates them."""
    if not (EXP["evaluation"]["teachers"] and any(spec["dr"] for spec in SPECS.values())):
        return []
    return [str(RESULTS / "eval" / "teachers" / "ensemble" / f"{b['name']}.json") for b in BENCHMARKS]


def all_eval_records():
    return [eval_index(run, seed) for run, seed in SPECS] + teacher_records()


def report_outputs():
    names = ["results.csv", "results.md", "efficiency.json", "learning_efficiency.png", "learning_efficiency.pdf",
             "report.html"]
    return [str(RESULTS / "report" / name) for name in names]


def toy_benchmark_roots():
    """Benchmark sets the toy-data rule generates (the others are user-provided roots)."""
    return [b["root"] for b in BENCHMARKS if IS_TOY and b["dataset"].startswith("wds/toy")]


def torchrun(spec, cpus_per_task=None):
    """The launcher prefix: one process is started directly; several on one node by torchrun's
    standalone rendezvous; on several nodes, one torchrun per node through srun, with a c10d
    rendezvous on the allocation's first node.

    Under snakemake-executor-plugin-slurm a multi-node train job carries the `mpi` resource
    (train.smk), so the rule's shell runs in the batch script on the first node, not inside the
    plugin's one-task `srun` step, and this srun is the job's one step across all nodes. The plugin
    keeps only SLURM_JOB_ID (and a few ids) of the SLURM_* variables there: no SLURM_JOB_NODELIST,
    SLURM_CPUS_PER_TASK or SLURM_CONF. So the step's counts are explicit (CPUs per task: the job's
    `cpus_per_task` resource, after any --set-resources), the node list comes from squeue when the
    variable is absent, and srun/squeue/scontrol read the cluster's default config (/etc/slurm or
    configless). GPUs: a step gets all of the job's GRES on each node by default.
    """
    procs = max(spec["gpus_per_node"], 1)
    nodes = spec["nodes"]
    if nodes == 1 and procs == 1:
        return PYTHON  # one process: torchrun would only add its agent (a second torch import) around it
    if nodes == 1:
        return f"{TORCHRUN} --standalone --nnodes 1 --nproc-per-node {procs}"
    cpus = cpus_per_task or procs * spec["slurm"]["cpus_per_gpu"]
    node_list = '"${SLURM_JOB_NODELIST:-$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)}"'
    first_node = f"$(scontrol show hostnames {node_list} | head -n 1)"
    return (f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --cpus-per-task {cpus} --kill-on-bad-exit=1 "
            f"{TORCHRUN} --nnodes {nodes} --nproc-per-node {procs} --rdzv-backend c10d "
            f"--rdzv-id \"$SLURM_JOB_ID\" --rdzv-endpoint {first_node}:29500")
