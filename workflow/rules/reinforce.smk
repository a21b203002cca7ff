# Stage 2 (optional): dataset reinforcement. In the toy world the DAG first trains its own
# teacher ensemble on clean captions, then writes DataCompDR-format shards.


rule train_teacher:
    input:
        data=LAYOUT.toy_manifest,
    output:
        weights=LAYOUT.teacher_weights("{teacher}"),
    params:
        spec=lambda wc: spec_json(EXP.teacher_specs[wc.teacher]),
        launcher=lambda wc: launcher_prefix(EXP.teacher_specs[wc.teacher]),
        out_dir=lambda wc: LAYOUT.teacher_dir(wc.teacher),
    wildcard_constraints:
        teacher="|".join(map(re.escape, EXP.teachers)) if EXP.teachers else "NONE",
    threads: 1
    priority: 10  # on the critical path: teachers -> reinforce -> DR students
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
        selection=reinforce_selection,
        settings=lambda wc: canonical(REINFORCEMENTS[wc.reinforcement]),
        captioner=lambda wc: spec_json(REINFORCEMENTS[wc.reinforcement]["captioner"]),
        teachers_dir=LAYOUT.teachers_dir,
        datacomp_dir=EXP.data["datacomp_dir"],
        dr_dir=lambda wc: EXP.reinforcement_dr_dir(wc.reinforcement),
    threads: lambda wc: REINFORCEMENTS[wc.reinforcement]["threads"]
    priority: 10
    resources:
        gpu=1,
        # a hub group (or local data): up to 1,024 shards through two ViT-L-14; the toy world: 4 small shards
        runtime=60 if IS_TOY else 24 * 60,
        mem_mb=4000 if IS_TOY else 64000,
    benchmark:
        LAYOUT.job_benchmark("reinforce", group_job_name("{group}", "{reinforcement}")),
    log:
        LAYOUT.log("reinforce", group_job_name("{group}", "{reinforcement}")),
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro reinforce --datacomp-dir {params.datacomp_dir:q} --out-dir {params.dr_dir:q}"
        " {params.selection} --manifest {output.manifest:q}"
        " --reinforce-config {input.reinforce_config:q} --pretrained-root {params.teachers_dir:q}"
        " --captioner-json {params.captioner:q} --num-syn-captions {params.settings[num_syn_captions]:q}"
        " --dtype {params.settings[dtype]:q} --batch-size {params.settings[batch_size]:q} --seed {params.settings[seed]:q}"
        " --replace-other-settings > {log:q} 2>&1"
