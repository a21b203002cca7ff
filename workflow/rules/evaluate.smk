# Stage 4: every checkpoint on every benchmark set, through clip_benchmark. One job per run,
# all its seeds' checkpoints in turn (loading torch + open_clip + clip_benchmark costs more
# than evaluating a toy checkpoint), one JSON record per checkpoint and benchmark, listed in
# the job's index file (the declared output: the number of checkpoints differs between
# runs); one more job for the reinforcement's teachers and their ensemble.

rule fetch_benchmark:
    output:
        manifest=LAYOUT.fetched_benchmark("{benchmark}"),
    params:
        spec=lambda wc: spec_json(EXP.fetch_benchmark_spec(wc.benchmark)),
    wildcard_constraints:
        benchmark="|".join(map(re.escape, EXP.hub_benchmarks)) if EXP.hub_benchmarks else "NONE",
    benchmark:
        LAYOUT.job_benchmark("fetch_benchmark", "{benchmark}"),
    log:
        LAYOUT.log("fetch_benchmark", "{benchmark}"),
    shell:
        "mobileclip-repro fetch-benchmark --spec {params.spec:q} --manifest {output.manifest:q} > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(benchmark_inputs),
        train_manifests=lambda wc: [LAYOUT.train_manifest(wc.run, seed) for seed in EXP.seeds_of(wc.run)],
    output:
        index=LAYOUT.eval_index("{run}"),
    params:
        spec=lambda wc: spec_json(EXP.evaluate_spec(wc.run)),
    wildcard_constraints:
        run="|".join(map(re.escape, EXP.runs)),
    threads: 1
    priority: 4
    resources:
        # launch.evaluation_resources: one GPU where the run trained on GPUs; the toy's CPU runs none
        gpu=evaluate_resource("gpu"),
        mem_mb=evaluate_resource("mem_mb"),
        runtime=evaluate_resource("runtime"),
    benchmark:
        LAYOUT.job_benchmark("evaluate", "{run}"),
    log:
        LAYOUT.log("evaluate", "{run}"),
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro evaluate --spec {params.spec:q} --index {output.index:q} > {log:q} 2>&1"


rule evaluate_teachers:
    input:
        unpack(benchmark_inputs),
        reinforce_config=EXP.reinforcement["config"],
        teachers=EXP.teacher_weights(),
    output:
        records=EXP.teacher_records(),
        index=LAYOUT.teachers_index,
    params:
        spec=lambda wc: spec_json(EXP.evaluate_teachers_spec()),
    threads: 1
    resources:
        gpu=evaluate_teachers_resource("gpu"),
        mem_mb=evaluate_teachers_resource("mem_mb"),
        runtime=evaluate_teachers_resource("runtime"),
    benchmark:
        LAYOUT.job_benchmark("evaluate_teachers"),
    log:
        LAYOUT.log("evaluate_teachers"),
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro evaluate --spec {params.spec:q} --index {output.index:q} > {log:q} 2>&1"
