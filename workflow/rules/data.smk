# Stage 1: data. The toy world is synthesized in the DataComp/DataCompDR formats;
# paper runs fetch DataComp + DataCompDR shards from the hub.


if IS_TOY:

    rule toy_data:
        output:
            datacomp=directory(DATA_ROOT / "datacomp"),
            teacher_data=directory(DATA_ROOT / "teacher_data"),
            benchmarks=[directory(root) for root in toy_benchmark_roots()],
            manifest=DATA_ROOT / "manifest.json",
        params:
            toy=DATA["toy"],
            mix=DATA["toy"]["alt_text_mix"],
        log:
            RESULTS / "logs" / "toy_data.log",
        shell:
            "{CLI} toy-data --out-dir {DATA_ROOT} --seed {params.toy[seed]}"
            " --train-samples {params.toy[train_samples]} --teacher-samples {params.toy[teacher_samples]}"
            " --benchmark-samples {params.toy[benchmark_samples]}"
            " --samples-per-shard {params.toy[samples_per_shard]}"
            " --alt-full {params.mix[full]} --alt-partial {params.mix[partial]}"
            " --alt-wrong {params.mix[wrong]} --alt-uninformative {params.mix[uninformative]} > {log} 2>&1"

else:

    rule fetch:
        output:
            datacomp=directory(DATA["datacomp_dir"]),
            dr=directory(DATA["dr_dir"]),
        params:
            hub=DATA["hub"],
        log:
            RESULTS / "logs" / "fetch.log",
        resources:
            runtime=24 * 60,
        shell:
            "{CLI} fetch --datacomp-repo {params.hub[datacomp_repo]} --dr-repo {params.hub[dr_repo]}"
            " --shards {params.hub[shards]:q} --datacomp-dir {output.datacomp} --dr-dir {output.dr} > {log} 2>&1"
