# Stage 3: one training job per run, launched through torchrun (one process per GPU;
# one CPU process where gpus_per_node is 0). Checkpoints after every pseudo-epoch.
# The declared output is the run manifest, written last: checkpoints are deliberately not
# outputs, so a failed or preempted job keeps them (Snakemake deletes a failed job's
# outputs) and the rerun resumes from the latest one.


def train_inputs(wc):
    return training_data(run_spec(wc.run)["dr"])


rule train:
    input:
        unpack(train_inputs),
    output:
        manifest=RESULTS / "runs" / "{run}" / "manifest.json",
    params:
        spec=lambda wc: spec_json(run_spec(wc.run)),
        launcher=lambda wc, resources: torchrun(run_spec(wc.run), resources.get("cpus_per_task")),
        out_dir=lambda wc: run_dir(EXP, wc.run),
    threads: 1
    resources:
        # One torchrun launcher per node (srun), each spawning one process per GPU.
        nodes=lambda wc: run_spec(wc.run)["nodes"],
        # Several nodes: the rule's own srun (torchrun() in common.smk) starts the per-node
        # launchers, so snakemake-executor-plugin-slurm must run the shell in the batch script
        # rather than inside its one-task srun step (that is what its `mpi` resource does), and
        # sbatch gets --ntasks=nodes. One node: no `mpi` (None leaves the resource unset).
        mpi=lambda wc: "srun" if run_spec(wc.run)["nodes"] > 1 else None,
        tasks=lambda wc: run_spec(wc.run)["nodes"],
        gres=lambda wc: f"gpu:{run_spec(wc.run)['gpus_per_node']}" if run_spec(wc.run)["gpus_per_node"] else "",
        tasks_per_gpu=0,
        slurm_extra="'--ntasks-per-node=1'",
        cpus_per_task=lambda wc: max(run_spec(wc.run)["gpus_per_node"], 1) * run_spec(wc.run)["slurm"]["cpus_per_gpu"],
        mem_mb=lambda wc: run_spec(wc.run)["slurm"]["mem_mb_per_node"],
        runtime=lambda wc: run_spec(wc.run)["slurm"]["runtime"],
    log:
        RESULTS / "logs" / "train" / "{run}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m mobileclip_repro train --spec {params.spec:q}"
        " --out-dir {params.out_dir} > {log} 2>&1"
