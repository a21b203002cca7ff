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
    # One job per group of hub shards (data.hub.group_size): DataComp captions/URLs and,
    # unless we reinforce ourselves, Apple's DataCompDR shards; images via img2dataset,
    # joined by uid and sha256-checked. The declared output is the group's manifest;
    # shards are not outputs, so a failed job keeps what it finished and a rerun resumes.

    rule fetch:
        output:
            manifest=fetch_manifest("{group}"),
        params:
            shard_spec=lambda wc: json.dumps(HUB["shards"]),  # a function: its braces are not wildcards
            dr_repo="" if REINFORCE["generate"] else f"--dr-repo {HUB['dr_repo']}",
        threads: 16
        resources:
            runtime=12 * 60,
            mem_mb=32000,
        log:
            RESULTS / "logs" / "fetch" / "group_{group}.log",
        shell:
            "{CLI} fetch --datacomp-repo {HUB[datacomp_repo]} {params.dr_repo}"
            " --shard-spec {params.shard_spec:q} --group {wildcards.group} --group-size {HUB[group_size]}"
            " --datacomp-dir {DATA[datacomp_dir]} --dr-dir {DATA[dr_dir]} --processes {threads}"
            " --manifest {output.manifest} > {log} 2>&1"
