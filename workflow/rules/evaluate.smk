# Stage 4: every checkpoint on every benchmark set, through clip_benchmark.
# One job per checkpoint (model loading dominates on small sets), one JSON per benchmark.

EVALUATION = EXP["evaluation"]
# Sets with a hub_repo (clip_benchmark's webdataset mirrors) are downloaded once, before
# any evaluation job, so evaluation never touches the network.
HUB_BENCHMARKS = {b["name"]: b for b in BENCHMARKS if b.get("hub_repo")}


def fetched_benchmark(name):
    return DATA_ROOT / "benchmarks_fetched" / f"{name}.json"


if HUB_BENCHMARKS:

    rule fetch_benchmark:
        output:
            manifest=fetched_benchmark("{benchmark}"),
        params:
            spec=lambda wc: HUB_BENCHMARKS[wc.benchmark],
        wildcard_constraints:
            benchmark="|".join(map(re.escape, HUB_BENCHMARKS)),
        log:
            RESULTS / "logs" / "fetch_benchmark" / "{benchmark}.log",
        shell:
            "{CLI} fetch-benchmark --repo {params.spec[hub_repo]} --root {params.spec[root]}"
            " --split {params.spec[split]} --manifest {output.manifest} > {log} 2>&1"


rule evaluate:
    input:
        train_manifest=RESULTS / "runs" / "{run}" / "manifest.json",
        benchmarks=toy_benchmark_roots(),
        fetched=[fetched_benchmark(name) for name in HUB_BENCHMARKS],
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
        " --batch-size {EVALUATION[batch_size]} --num-workers {EVALUATION[num_workers]}"
        " --device {EVALUATION[device]} > {log} 2>&1"
