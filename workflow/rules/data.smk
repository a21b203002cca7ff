# Stage 1: data. The toy world is synthesized in the DataComp/DataCompDR formats;
# paper runs fetch DataComp + DataCompDR shards from the hub. Both rules exist for every
# config; the targets decide which one runs.


rule toy_data:
    output:
        datacomp=directory(LAYOUT.toy_datacomp_dir),
        teacher_data=directory(LAYOUT.teacher_data_dir),
        benchmarks=[directory(root) for root in EXP.generated_benchmark_roots()],
        manifest=LAYOUT.toy_manifest,
    params:
        toy=canonical(EXP.data["toy"]),
        mix=canonical(EXP.data["toy"]["alt_text_mix"]),
        out_dir=LAYOUT.data_root,
    threads: 2  # shards are written in parallel, byte-identical to one process
    priority: 10
    benchmark:
        LAYOUT.job_benchmark("toy_data"),
    log:
        LAYOUT.log("toy_data"),
    shell:
        "mobileclip-repro toy-data --out-dir {params.out_dir:q} --seed {params.toy[seed]:q} --workers {threads}"
        " --train-samples {params.toy[train_samples]:q} --teacher-samples {params.toy[teacher_samples]:q}"
        " --benchmark-samples {params.toy[benchmark_samples]:q}"
        " --samples-per-shard {params.toy[samples_per_shard]:q}"
        " --alt-full {params.mix[full]:q} --alt-partial {params.mix[partial]:q}"
        " --alt-wrong {params.mix[wrong]:q} --alt-uninformative {params.mix[uninformative]:q} > {log:q} 2>&1"


# One job per group of hub shards (data.hub.group_size): DataComp captions/URLs and,
# unless we reinforce ourselves, Apple's DataCompDR shards; images by URL, joined by uid
# and sha256-checked (data.hub.sha256), each repo at one commit per job (data.hub.*_revision).
# The declared output is the group's manifest; shards are not
# outputs, so a failed job keeps what it finished and a rerun resumes.
rule fetch:
    output:
        manifest=LAYOUT.fetch_manifest("{group}"),
    params:
        hub=canonical(EXP.hub),
        shard_spec=lambda wc: spec_json(EXP.hub["shards"]),  # a function: its braces are not wildcards
        dr_repo=f"--dr-repo {shlex.quote(EXP.hub['dr_repo'])}" if EXP.fetches_dr_tars() else "",
        datacomp_dir=EXP.data["datacomp_dir"],
        dr_dir=EXP.data["dr_dir"],
        # null: no option, the main branch (the job resolves it to a commit)
        datacomp_revision=(f"--datacomp-revision {shlex.quote(EXP.hub['datacomp_revision'])}"
                           if EXP.hub["datacomp_revision"] else ""),
        dr_revision=f"--dr-revision {shlex.quote(EXP.hub['dr_revision'])}" if EXP.hub["dr_revision"] else "",
    threads: 16
    resources:
        runtime=12 * 60,
        mem_mb=32000,
    benchmark:
        LAYOUT.job_benchmark("fetch", group_job_name("{group}")),
    log:
        LAYOUT.log("fetch", group_job_name("{group}")),
    shell:
        "mobileclip-repro fetch --datacomp-repo {params.hub[datacomp_repo]:q} {params.dr_repo}"
        " --shard-spec {params.shard_spec:q} --group {wildcards.group} --group-size {params.hub[group_size]:q}"
        " --datacomp-dir {params.datacomp_dir:q} --dr-dir {params.dr_dir:q} --processes {threads}"
        " --max-failed-shards {params.hub[max_failed_shards]:q}"
        " {params.datacomp_revision} {params.dr_revision} --sha256 {params.hub[sha256]:q} --min-join-rate {params.hub[min_join_rate]:q}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"


# data.source: local. No job makes the data, so this one lists it (every shard, size, sha256):
# what training reads and its identity. The listing param (stat only, read when the DAG starts)
# reruns it when a shard is added, removed or rewritten, and every job downstream with it.
rule local_data:
    output:
        manifest=LAYOUT.local_manifest,
    params:
        folders=EXP.local_data_folders(),
        listing=folder_listing(EXP.local_data_folders()) if EXP.is_local else "",
    benchmark:
        LAYOUT.job_benchmark("local_data"),
    log:
        LAYOUT.log("local_data"),
    shell:
        "mobileclip-repro local-data --folder {params.folders:q} --listing {params.listing:q}"
        " --out {output.manifest:q} > {log:q} 2>&1"


# data.subsets: every sample ranked once by a seeded hash of its uid; each subset run keeps the
# first subset_size of the ranking (subsets.py). One job for all sizes and both arms.
rule select_subsets:
    input:
        data=EXP.data_inputs(),
    output:
        subsets=LAYOUT.subsets_file(EXP.data["subset_seed"]),
    params:
        sizes=" ".join(str(size) for size in EXP.subset_sizes),
        seed=EXP.data["subset_seed"],
        datacomp_dir=EXP.data["datacomp_dir"],
    benchmark:
        LAYOUT.job_benchmark("select_subsets"),
    log:
        LAYOUT.log("select_subsets"),
    shell:
        "mobileclip-repro select-subsets --datacomp-dir {params.datacomp_dir:q} --sizes {params.sizes}"
        " --seed {params.seed:q} --data-manifests {input.data:q} --out {output.subsets:q} > {log:q} 2>&1"
