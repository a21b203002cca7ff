# Stage 4: every checkpoint on every benchmark set, through clip_benchmark.
# One job per checkpoint (model loading dominates on small sets), one JSON per benchmark.

EVALUATION = EXP["evaluation"]


rule evaluate:
    input:
        train_manifest=RESULTS / "runs" / "{run}" / "manifest.json",
        benchmarks=toy_benchmark_roots(),
    output:
        records=eval_records_of("{run}", "{epoch}"),
    params:
        checkpoint=lambda wc: run_dir(EXP, wc.run) / "checkpoints" / f"epoch_{wc.epoch}.pt",
        model=lambda wc: EXP["runs"][wc.run]["model"],
        benchmarks=json.dumps(BENCHMARKS),
        out_dir=lambda wc: RESULTS / "eval" / wc.run / f"epoch_{wc.epoch}",
    threads: 1
    resources:
        gpu=1,
        runtime=120,
    log:
        RESULTS / "logs" / "eval" / "{run}_epoch_{epoch}.log",
    shell:
        "OMP_NUM_THREADS={threads} {CLI} evaluate --checkpoint {params.checkpoint} --model {params.model}"
        " --benchmarks-json {params.benchmarks:q} --out-dir {params.out_dir}"
        " --batch-size {EVALUATION[batch_size]} --num-workers {EVALUATION[num_workers]} > {log} 2>&1"
