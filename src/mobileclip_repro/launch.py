"""How a training job's processes are started: the command prefix put before ``-m mobileclip_repro train``.

- one process (one GPU, or the CPU): the interpreter itself; torchrun would only add its
  agent around it, a second torch import per job;
- several GPUs on one node: torchrun's standalone rendezvous;
- several nodes: one torchrun agent per node through ``srun``, with a c10d rendezvous on
  the allocation's first node.

Under snakemake-executor-plugin-slurm a multi-node train job carries the ``mpi`` resource
(workflow/rules/train.smk), so the rule's shell runs in the batch script on the first node,
not inside the plugin's one-task ``srun`` step, and this ``srun`` is the job's one step
across all nodes. The plugin keeps only SLURM_JOB_ID (and a few ids) of the SLURM_*
variables there: no SLURM_JOB_NODELIST, SLURM_CPUS_PER_TASK or SLURM_CONF. So the step's
counts are explicit (CPUs per task: the job's ``cpus_per_task`` resource, after any
``--set-resources``), the node list comes from ``squeue`` when the variable is absent, and
srun/squeue/scontrol read the cluster's default config (/etc/slurm or configless). GPUs: a
step gets all of the job's GRES on each node by default.

The interpreter is named ``python``, found on PATH: the workflow puts the interpreter that
runs Snakemake first on PATH, and srun carries PATH to every node. An absolute path here
would be a job parameter, and moving the checkout would rerun every job.

Every job's SLURM resources are sized here, by what the job runs (``*_resources``), and both the
rules (workflow/rules/*.smk) and the ``plan`` command read them: a job that trains, reinforces or
evaluates on CPUs (the toy world) asks for no GPU and a few GB for minutes; a GPU job gets its
GPUs, memory per GPU and at most a day, since a train job resumes exactly from its newest
checkpoint when it is resubmitted (``slurm.resubmits``). Which partition a job goes to is the
SLURM profile's business (slurm/partitions.yaml: the executor picks the partition a job fits).
"""
from __future__ import annotations

PYTHON = "python"
RENDEZVOUS_PORT = 29500


def processes_per_node(spec: dict) -> int:
    """One process per GPU; one CPU process where the run asks for no GPU."""
    return max(spec["gpus_per_node"], 1)


# A run's `slurm` keys left null follow what it trains on (minutes, MB, CPUs, resubmissions).
GPU_RUN = {"runtime": 24 * 60, "mem_mb_per_gpu": 64_000, "cpus_per_gpu": 8, "resubmits": 9}
CPU_RUN = {"runtime": 2 * 60, "mem_mb_per_node": 8_000, "cpus_per_gpu": 2, "resubmits": 0}
# Evaluation and reinforcement: on a GPU where the models they run are GPU-sized, else on CPUs.
GPU_JOB_MEM_MB, CPU_JOB_MEM_MB = 64_000, 8_000
EVALUATE_BASE_MINUTES, EVALUATE_MINUTES_PER_CHECKPOINT = 30, 10
EVALUATE_TEACHERS_MINUTES = 120
REINFORCE_MINUTES = {"gpu": 24 * 60, "cpu": 60}
# A fetch group: up to 1,024 shards of images downloaded and joined, on CPUs.
FETCH_RESOURCES = {"runtime": 12 * 60, "mem_mb": 32_000}


def run_limits(spec: dict) -> dict:
    """A run's ``slurm`` settings with every null filled in by what it trains on.

    GPU runs: a day (many clusters' limit; resubmitted up to ``resubmits`` times, each resuming
    from the newest checkpoint), 64 GB and 8 CPUs per GPU. CPU runs (gpus_per_node 0, the toy
    world): two hours, 8 GB and 2 CPUs, no resubmission. A run with ``resume: none`` is not
    resubmitted by default: it would start over each time.
    """
    gpus = spec["gpus_per_node"]
    given = spec.get("slurm") or {}
    defaults = dict(GPU_RUN if gpus else CPU_RUN)
    if spec.get("resume") == "none":
        defaults["resubmits"] = 0  # a resubmitted job would start over, not continue
    mem = given.get("mem_mb_per_node") or (gpus * defaults["mem_mb_per_gpu"] if gpus else defaults["mem_mb_per_node"])
    return {key: given.get(key) if given.get(key) is not None else defaults[key]
            for key in ("runtime", "cpus_per_gpu", "resubmits")} | {"mem_mb_per_node": mem}


def cpus_per_task(spec: dict) -> int:
    """The CPUs each node's launcher (and its workers) gets: the run's ``slurm.cpus_per_gpu`` per process."""
    return processes_per_node(spec) * run_limits(spec)["cpus_per_gpu"]


def launcher_prefix(spec: dict, cpus: int | None = None, python: str = PYTHON) -> str:
    """The shell words that start ``spec``'s processes; ``-m mobileclip_repro train ...`` follows.

    ``cpus``: CPUs per node for the multi-node ``srun`` step (default: ``cpus_per_task(spec)``,
    the value the rule requests unless ``--set-resources`` overrides it).
    """
    procs, nodes = processes_per_node(spec), spec["nodes"]
    torchrun = f"{python} -m torch.distributed.run"  # `torchrun`, without relying on its script
    if nodes == 1 and procs == 1:
        return python
    if nodes == 1:
        return f"{torchrun} --standalone --nnodes 1 --nproc-per-node {procs}"
    cpus = cpus or cpus_per_task(spec)
    node_list = '"${SLURM_JOB_NODELIST:-$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)}"'
    first_node = f"$(scontrol show hostnames {node_list} | head -n 1)"
    return (f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --cpus-per-task {cpus} --kill-on-bad-exit=1 "
            f"{torchrun} --nnodes {nodes} --nproc-per-node {procs} --rdzv-backend c10d "
            f"--rdzv-id \"$SLURM_JOB_ID\" --rdzv-endpoint {first_node}:{RENDEZVOUS_PORT}")


def slurm_resources(spec: dict) -> dict:
    """The train rule's SLURM resources for ``spec`` (snakemake-executor-plugin-slurm's names).

    Several nodes: the rule's own srun (``launcher_prefix``) starts the per-node launchers,
    so the plugin must run the shell in the batch script rather than inside its one-task srun
    step (its ``mpi`` resource does that), and sbatch gets --ntasks=nodes. One node: no
    ``mpi`` (None leaves the resource unset).
    """
    gpus, limits = spec["gpus_per_node"], run_limits(spec)
    return {
        "nodes": spec["nodes"],
        "mpi": "srun" if spec["nodes"] > 1 else None,
        "tasks": spec["nodes"],
        "gres": f"gpu:{gpus}" if gpus else "",
        "cpus_per_task": cpus_per_task(spec),
        "mem_mb": limits["mem_mb_per_node"],
        "runtime": limits["runtime"],
    }


def resubmits(specs) -> int:
    """How often a train rule's failed job is submitted again (the rule's ``retries``): the most
    any of its runs asks for, since Snakemake's retries are per rule."""
    return max((run_limits(spec)["resubmits"] for spec in specs), default=0)


def runs_on_gpus(specs) -> bool:
    """Whether models trained as ``specs`` are GPU-sized (any of them trained on GPUs)."""
    return any(spec["gpus_per_node"] > 0 for spec in specs)


def evaluation_resources(specs, device: str, checkpoints: int, teachers: bool = False) -> dict:
    """An evaluate job's resources: a GPU unless ``evaluation.device`` is cpu or, with ``auto``,
    the models it evaluates trained on CPUs (``specs``; pretrained teachers, no specs, are GPU-sized).
    Time: a base plus a share per checkpoint (``checkpoints``), or the teachers' fixed allowance."""
    gpu = device == "cuda" or (device == "auto" and (runs_on_gpus(specs) or (teachers and not specs)))
    runtime = EVALUATE_TEACHERS_MINUTES if teachers else EVALUATE_BASE_MINUTES + EVALUATE_MINUTES_PER_CHECKPOINT * checkpoints
    return {"gpu": int(gpu), "mem_mb": GPU_JOB_MEM_MB if gpu else CPU_JOB_MEM_MB, "runtime": runtime}


def reinforce_resources(teacher_specs) -> dict:
    """A reinforce job's resources: one GPU for pretrained teachers (no specs: ViT-L-14s) or
    teachers the DAG trained on GPUs; CPUs for the toy world's CPU-trained teachers."""
    gpu = runs_on_gpus(teacher_specs) or not teacher_specs
    return {"gpu": int(gpu), "mem_mb": GPU_JOB_MEM_MB if gpu else CPU_JOB_MEM_MB,
            "runtime": REINFORCE_MINUTES["gpu" if gpu else "cpu"]}
