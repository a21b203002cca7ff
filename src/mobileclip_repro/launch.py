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
"""
from __future__ import annotations

PYTHON = "python"
RENDEZVOUS_PORT = 29500


def processes_per_node(spec: dict) -> int:
    """One process per GPU; one CPU process where the run asks for no GPU."""
    return max(spec["gpus_per_node"], 1)


def cpus_per_task(spec: dict) -> int:
    """The CPUs each node's launcher (and its workers) gets: the run's ``slurm.cpus_per_gpu`` per process."""
    return processes_per_node(spec) * spec["slurm"]["cpus_per_gpu"]


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
    gpus = spec["gpus_per_node"]
    return {
        "nodes": spec["nodes"],
        "mpi": "srun" if spec["nodes"] > 1 else None,
        "tasks": spec["nodes"],
        "gres": f"gpu:{gpus}" if gpus else "",
        "cpus_per_task": cpus_per_task(spec),
        "mem_mb": spec["slurm"]["mem_mb_per_node"],
        "runtime": spec["slurm"]["runtime"],
    }
