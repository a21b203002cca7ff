# Stage 4: every checkpoint on every benchmark set, through clip_benchmark. One job per
# training job (its checkpoints in turn: loading torch + open_clip + clip_benchmark costs
# more than a small set), one JSON record per checkpoint and benchmark, listed in the job's
# index file (the declared output: the number of checkpoints differs between runs); one
# more job for the reinforcement's teachers and their ensemble.

rule fetch_benchmark:
    output:
        manifest=fetched_benchmark("{benchmark}"),
    params:
        spec=lambda wc: HUB_BENCHMARKS[wc.benchmark],
    wildcard_constraints:
        benchmark="|".join(map(re.escape, HUB_BENCHMARKS)) if HUB_BENCHMARKS else "NONE",
    log:
        RESULTS / "logs" / "fetch_benchmark" / "{benchmark}.log",
    shell:
        "mobileclip-repro fetch-benchmark --repo {params.spec[hub_repo]} --root {params.spec[root]}"
        " --split {params.spec[split]} --manifest {output.manifest} > {log} 2>&1"


rule evaluate:
    input:
        unpack(benchmark_inputs),
        train_manifest=train_manifest("{run}", "{seed}"),
    output:
        index=eval_index("{run}", "{seed}"),
    params:
        checkpoints=lambda wc: [run_dir(EXP, wc.run, seed=int(wc.seed)) / "checkpoints" / f"epoch_{epoch}.pt"
                                for epoch in range(1, spec_of(wc)["num_checkpoints"] + 1)],
        out_dirs=lambda wc: [eval_dir(wc.run, wc.seed, epoch) for epoch in range(1, spec_of(wc)["num_checkpoints"] + 1)],
        model=lambda wc: spec_of(wc)["model"],
        benchmarks=json.dumps(BENCHMARKS),
        settings=EVALUATION,
    threads: 1
    priority: 4
    resources:
        gpu=1,
        runtime=lambda wc: 30 + 10 * spec_of(wc)["num_checkpoints"],
    log:
        RESULTS / "logs" / "eval" / "{run}_seed_{seed}.log",
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro evaluate --checkpoint {params.checkpoints} --out-dir {params.out_dirs}"
        " --model {params.model} --benchmarks-json {params.benchmarks:q}"
        " --batch-size {params.settings[batch_size]} --num-workers {params.settings[num_workers]}"
        " --device {params.settings[device]} --force --index {output.index} > {log} 2>&1"


rule evaluate_teachers:
    input:
        unpack(benchmark_inputs),
        reinforce_config=REINFORCE["config"],
        teachers=[RESULTS / "teachers" / name for name in TEACHERS],
    output:
        records=teacher_records(),
    params:
        teachers_dir=RESULTS / "teachers",
        out_dir=RESULTS / "eval" / "teachers",
        benchmarks=json.dumps(BENCHMARKS),
        settings=EVALUATION,
    threads: 1
    resources:
        gpu=1,
        runtime=120,
    log:
        RESULTS / "logs" / "eval" / "teachers.log",
    shell:
        "OMP_NUM_THREADS={threads} mobileclip-repro evaluate --teachers {input.reinforce_config}"
        " --pretrained-root {params.teachers_dir} --out-dir {params.out_dir} --benchmarks-json {params.benchmarks:q}"
        " --batch-size {params.settings[batch_size]} --num-workers {params.settings[num_workers]}"
        " --device {params.settings[device]} > {log} 2>&1"
