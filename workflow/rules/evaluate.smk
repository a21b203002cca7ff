# Stage 4: every checkpoint on every benchmark set, through clip_benchmark. One job per run,
# all its seeds' checkpoints in turn (loading torch + open_clip + clip_benchmark costs more
# than evaluating a toy checkpoint), one JSON record per checkpoint and benchmark, listed in
# the job's index file (the declared output: the number of checkpoints differs between
# runs); one more job for the reinforcement's teachers and their ensemble.

rule fetch_benchmark:
    output:
        manifest=LAYOUT.fetched_benchmark("{benchmark}"),
    params:
        spec=lambda wc: canonical(EXP.hub_benchmarks[wc.benchmark]),
        # absent or null: the repo's main branch (the manifest names the commit it resolved to)
        revision=lambda wc: "--revision " + shlex.quote(EXP.hub_benchmarks[wc.benchmark]["revision"])
        if EXP.hub_benchmarks[wc.benchmark].get("revision") else "",
    wildcard_constraints:
        benchmark="|".join(map(re.escape, EXP.hub_benchmarks)) if EXP.hub_benchmarks else "NONE",
    benchmark:
        LAYOUT.job_benchmark("fetch_benchmark", "{benchmark}"),
    log:
        LAYOUT.log("fetch_benchmark", "{benchmark}"),
    shell:
        "mobileclip-repro fetch-benchmark --repo {params.spec[hub_repo]:q} --root {params.spec[root]:q}"
        " --split {params.spec[split]:q} {params.revision} --manifest {output.manifest:q} > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(benchmark_inputs),
        train_manifests=lambda wc: [LAYOUT.train_manifest(wc.run, seed) for seed in EXP.seeds_of(wc.run)],
    output:
        index=LAYOUT.eval_index("{run}"),
    params:
        checkpoints=lambda wc: [checkpoint for checkpoint, _ in run_checkpoints(wc.run)],
        out_dirs=lambda wc: [out_dir for _, out_dir in run_checkpoints(wc.run)],
        model=lambda wc: EXP.specs[(wc.run, EXP.seeds_of(wc.run)[0])]["model"],  # the seeds differ in seed only
        benchmarks=spec_json(EXP.benchmarks),
        settings=canonical(EXP.evaluation),
        skip_failed="--skip-failed-benchmarks" if EXP.evaluation["skip_failed_benchmarks"] else "",
    wildcard_constraints:
        run="|".join(map(re.escape, EXP.runs)),
    threads: 1
    priority: 4
    resources:
        gpu=1,
        runtime=lambda wc: 30 + 10 * len(run_checkpoints(wc.run)),
    benchmark:
        LAYOUT.job_benchmark("evaluate", "{run}"),
    log:
        LAYOUT.log("evaluate", "{run}"),
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro evaluate --checkpoint {params.checkpoints:q} --out-dir {params.out_dirs:q}"
        " --model {params.model:q} --benchmarks-json {params.benchmarks:q}"
        " --batch-size {params.settings[batch_size]:q} --num-workers {params.settings[num_workers]:q}"
        " --device {params.settings[device]:q} --precision {params.settings[precision]:q} {params.skip_failed}"
        " --force --index {output.index:q} > {log:q} 2>&1"


rule evaluate_teachers:
    input:
        unpack(benchmark_inputs),
        reinforce_config=EXP.reinforcement["config"],
        teachers=EXP.teacher_weights(),
    output:
        records=EXP.teacher_records(),
        index=LAYOUT.teachers_index,
    params:
        teachers_dir=LAYOUT.teachers_dir,
        out_dir=LAYOUT.teachers_eval_dir,
        benchmarks=spec_json(EXP.benchmarks),
        settings=canonical(EXP.evaluation),
        skip_failed="--skip-failed-benchmarks" if EXP.evaluation["skip_failed_benchmarks"] else "",
    threads: 1
    resources:
        gpu=1,
        runtime=120,
    benchmark:
        LAYOUT.job_benchmark("evaluate_teachers"),
    log:
        LAYOUT.log("evaluate_teachers"),
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro evaluate --teachers {input.reinforce_config:q}"
        " --pretrained-root {params.teachers_dir:q} --out-dir {params.out_dir:q} --benchmarks-json {params.benchmarks:q}"
        " --batch-size {params.settings[batch_size]:q} --num-workers {params.settings[num_workers]:q}"
        " --device {params.settings[device]:q} --precision {params.settings[precision]:q} {params.skip_failed}"
        " --index {output.index:q} > {log:q} 2>&1"
