# Stage 2 (optional): dataset reinforcement. In the toy world the DAG first trains its own
# teacher ensemble on clean captions, then writes DataCompDR-format shards.


rule train_teacher:
    input:
        data=LAYOUT.toy_manifest,
    output:
        weights=LAYOUT.teacher_weights("{teacher}"),
    params:
        spec=lambda wc: spec_json(EXP.teacher_train_spec(wc.teacher)),
        launcher=lambda wc: launcher_prefix(EXP.teacher_specs[wc.teacher]),
        out_dir=lambda wc: LAYOUT.teacher_dir(wc.teacher),
    wildcard_constraints:
        teacher="|".join(map(re.escape, EXP.teachers)) if EXP.teachers else "NONE",
    threads: 1
    priority: 10  # on the critical path: teachers -> reinforce -> DR students
    # sized like a run (launch.slurm_resources): the toy world's teachers train on CPUs
    retries: resubmits(EXP.teacher_specs.values())
    resources:
        nodes=teacher_resource("nodes"),
        mpi=teacher_resource("mpi"),
        tasks=teacher_resource("tasks"),
        gres=teacher_resource("gres"),
        cpus_per_task=teacher_resource("cpus_per_task"),
        mem_mb=teacher_resource("mem_mb"),
        runtime=teacher_resource("runtime"),
        tasks_per_gpu=0,  # as train's: one task per node sees all of the node's GPUs
        slurm_extra="'--ntasks-per-node=1'",
    benchmark:
        LAYOUT.job_benchmark("train_teacher", "{teacher}"),
    log:
        LAYOUT.log("train_teacher", "{teacher}"),
    shell:
        "OMP_NUM_THREADS={threads} exec {params.launcher} -m mobileclip_repro train --spec {params.spec:q}"
        " --out-dir {params.out_dir:q} --export {output.weights:q} --data-manifests {input.data:q} > {log:q} 2>&1"


# One job per named reinforcement and shard group (the toy world is one group), teachers from
# the reinforcement JSON's pretrained tags or local weights under teachers/. The declared output is the
# group manifest: DR shards are not outputs, so a failed job keeps the shards it finished
# and the rerun reinforces only the rest. A changed setting reruns the job (its params),
# which redoes the shards made with the old one (--replace-other-settings).
rule reinforce:
    input:
        unpack(reinforce_inputs),
    output:
        manifest=LAYOUT.reinforce_manifest("{reinforcement}", "{group}"),
    params:
        spec=lambda wc: spec_json(EXP.reinforce_spec(wc.reinforcement, wc.group)),
    threads: lambda wc: REINFORCEMENTS[wc.reinforcement]["threads"]
    priority: 10
    resources:
        # launch.reinforce_resources: pretrained teachers (two ViT-L-14 over up to 1,024 shards) on a GPU
        # for a day; the toy world's CPU-trained teachers over 4 small shards on CPUs for an hour
        gpu=reinforce_resource("gpu"),
        cpus_per_task=lambda wc, threads: threads,  # its data workers; else the profile's default wins
        runtime=reinforce_resource("runtime"),
        mem_mb=reinforce_resource("mem_mb"),
    benchmark:
        LAYOUT.job_benchmark("reinforce", group_job_name("{group}", "{reinforcement}")),
    log:
        LAYOUT.log("reinforce", group_job_name("{group}", "{reinforcement}")),
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro reinforce --spec {params.spec:q} --manifest {output.manifest:q}"
        " > {log:q} 2>&1"
