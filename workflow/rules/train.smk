# Stage 3: one training job per (run, seed), launched through torchrun (one process per GPU;
# one CPU process where gpus_per_node is 0). A checkpoint after every pseudo-epoch.
# The declared output is the job's manifest, written last: checkpoints are deliberately not
# outputs, so a failed or preempted job keeps them (Snakemake deletes a failed job's
# outputs) and the rerun resumes from the latest one.


def train_inputs(wildcards):
    return training_data(spec_of(wildcards)["dr"])


rule train:
    input:
        unpack(train_inputs),
    output:
        manifest=train_manifest("{run}", "{seed}"),
    params:
        spec=lambda wc: spec_json(spec_of(wc)),
        launcher=lambda wc, resources: torchrun(spec_of(wc), resources.get("cpus_per_task")),
        out_dir=lambda wc: run_dir(EXP, wc.run, seed=int(wc.seed)),
    threads: 1
    # DR students sit on the critical path (after teachers and reinforcement); non-DR ones fill idle cores.
    priority: lambda wc: 5 if spec_of(wc)["dr"] else 0
    resources:
        # One torchrun launcher per node (srun), each spawning one process per GPU.
        nodes=lambda wc: spec_of(wc)["nodes"],
        # Several nodes: the rule's own srun (torchrun() in common.smk) starts the per-node
        # launchers, so snakemake-executor-plugin-slurm must run the shell in the batch script
        # rather than inside its one-task srun step (that is what its `mpi` resource does), and
        # sbatch gets --ntasks=nodes. One node: no `mpi` (None leaves the resource unset).
        mpi=lambda wc: "srun" if spec_of(wc)["nodes"] > 1 else None,
        tasks=lambda wc: spec_of(wc)["nodes"],
        gres=lambda wc: f"gpu:{spec_of(wc)['gpus_per_node']}" if spec_of(wc)["gpus_per_node"] else "",
        tasks_per_gpu=0,
        slurm_extra="'--ntasks-per-node=1'",
        cpus_per_task=lambda wc: max(spec_of(wc)["gpus_per_node"], 1) * spec_of(wc)["slurm"]["cpus_per_gpu"],
        mem_mb=lambda wc: spec_of(wc)["slurm"]["mem_mb_per_node"],
        runtime=lambda wc: spec_of(wc)["slurm"]["runtime"],
    log:
        RESULTS / "logs" / "train" / "{run}_seed_{seed}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m mobileclip_repro train --spec {params.spec:q}"
        " --out-dir {params.out_dir} > {log} 2>&1"
