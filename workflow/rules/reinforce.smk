# Stage 2 (optional): dataset reinforcement. In the toy world the DAG first trains its own
# teacher ensemble on clean captions, then writes DataCompDR-format shards.

REINFORCE = EXP["reinforcement"]


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


if REINFORCE["generate"]:

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
