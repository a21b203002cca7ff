# Stage 2 (optional): dataset reinforcement. In the toy world the DAG first trains its own
# teacher ensemble on clean captions, then writes DataCompDR-format shards.

rule train_teacher:
    input:
        data=DATA_ROOT / "teacher_data",
    output:
        weights=RESULTS / "teachers" / "{teacher}",
    params:
        spec=lambda wc: spec_json(teacher_spec(wc.teacher)),
        launcher=lambda wc: torchrun(teacher_spec(wc.teacher)),
        out_dir=lambda wc: run_dir(EXP, wc.teacher, section="teachers"),
    wildcard_constraints:
        teacher="|".join(map(re.escape, TEACHERS)) if TEACHERS else "NONE",
    threads: 1
    log:
        RESULTS / "logs" / "teachers" / "{teacher}.log",
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m mobileclip_repro train --spec {params.spec:q}"
        " --out-dir {params.out_dir} --export {output.weights} > {log} 2>&1"


if REINFORCE["generate"] and IS_TOY:

    rule reinforce:
        input:
            datacomp=DATA["datacomp_dir"],
            reinforce_config=REINFORCE["config"],
            teachers=[RESULTS / "teachers" / name for name in TEACHERS],
        output:
            dr=directory(DATA["dr_dir"]),
        params:
            captioner=json.dumps(REINFORCE["captioner"]),
            teachers_dir=RESULTS / "teachers",
        threads: 2
        resources:
            gpu=1,
            runtime=12 * 60,
        log:
            RESULTS / "logs" / "reinforce.log",
        shell:
            "OMP_NUM_THREADS={threads} {CLI} reinforce --datacomp-dir {input.datacomp} --out-dir {output.dr}"
            " --reinforce-config {input.reinforce_config} --pretrained-root {params.teachers_dir}"
            " --captioner-json {params.captioner:q} --num-syn-captions {REINFORCE[num_syn_captions]}"
            " --dtype {REINFORCE[dtype]} --batch-size {REINFORCE[batch_size]} --seed {REINFORCE[seed]}"
            " > {log} 2>&1"


elif REINFORCE["generate"]:
    # Hub data reinforced by us: one GPU job per fetched shard group, teachers from the
    # reinforcement JSON's pretrained tags (or local weights under teachers/).

    rule reinforce:
        input:
            fetched=fetch_manifest("{group}"),
            reinforce_config=REINFORCE["config"],
            teachers=[RESULTS / "teachers" / name for name in TEACHERS],
        output:
            manifest=reinforce_manifest("{group}"),
        params:
            captioner=json.dumps(REINFORCE["captioner"]),
            teachers_dir=RESULTS / "teachers",
            shard_spec=lambda wc: json.dumps(HUB["shards"]),  # a function: its braces are not wildcards
        threads: 8
        resources:
            gpu=1,
            runtime=24 * 60,
            mem_mb=64000,
        log:
            RESULTS / "logs" / "reinforce" / "group_{group}.log",
        shell:
            "OMP_NUM_THREADS={threads} {CLI} reinforce --datacomp-dir {DATA[datacomp_dir]} --out-dir {DATA[dr_dir]}"
            " --shard-spec {params.shard_spec:q} --group {wildcards.group} --group-size {HUB[group_size]}"
            " --manifest {output.manifest}"
            " --reinforce-config {input.reinforce_config} --pretrained-root {params.teachers_dir}"
            " --captioner-json {params.captioner:q} --num-syn-captions {REINFORCE[num_syn_captions]}"
            " --dtype {REINFORCE[dtype]} --batch-size {REINFORCE[batch_size]} --seed {REINFORCE[seed]}"
            " > {log} 2>&1"
