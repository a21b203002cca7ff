# Stage 3: one training job per (run, seed), started by launch.launcher_prefix (one process per GPU
# through torchrun; one plain CPU process where gpus_per_node is 0). A checkpoint after every pseudo-epoch.
# The declared output is the job's manifest, written last: checkpoints are deliberately not
# outputs, so a failed or preempted job keeps them (Snakemake deletes a failed job's
# outputs) and the rerun resumes from the latest one.
# `exec`: the launcher takes the shell's place, so a scheduler's SIGTERM (sent to every process of
# the job) reaches a trainer whose Snakemake waits for it to write resume.pt, not a dead shell.


rule train:
    input:
        unpack(train_inputs),
    output:
        manifest=LAYOUT.train_manifest("{run}", "{seed}"),
    params:
        spec=lambda wc: spec_json(EXP.train_spec(wc.run, wc.seed)),  # its resources are the rule's
        launcher=lambda wc, resources: launcher_prefix(spec_of(wc), resources.get("cpus_per_task")),
        out_dir=lambda wc: LAYOUT.run_dir(wc.run, int(wc.seed)),
    threads: 1
    # DR students sit on the critical path (after teachers and reinforcement); non-DR ones fill idle cores.
    priority: lambda wc: 5 if spec_of(wc)["dr"] else 0
    # a job that fails or reaches its time limit (GPU runs: a day) is submitted again and resumes
    # from its newest checkpoint, up to the runs' slurm.resubmits (launch.run_limits)
    retries: resubmits(EXP.specs.values())
    resources:
        # launch.slurm_resources: nodes, tasks and `mpi` for multi-node srun steps; GPUs as GRES.
        nodes=train_resource("nodes"),
        mpi=train_resource("mpi"),
        tasks=train_resource("tasks"),
        gres=train_resource("gres"),
        cpus_per_task=train_resource("cpus_per_task"),
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
        tasks_per_gpu=0,
        slurm_extra="'--ntasks-per-node=1'",
    benchmark:
        LAYOUT.job_benchmark("train", train_job_name("{run}", "{seed}")),
    log:
        LAYOUT.log("train", train_job_name("{run}", "{seed}")),
    shell:
        "OMP_NUM_THREADS={threads} exec {params.launcher} -m mobileclip_repro train --spec {params.spec:q}"
        " --out-dir {params.out_dir:q} --data-manifests {input.data:q} {input.reinforced:q} > {log:q} 2>&1"
