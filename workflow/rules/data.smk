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
        # one JSON word (a function: its braces are not wildcards); a changed data.toy value remakes the world
        spec=lambda wc: spec_json(EXP.toy_data_spec()),
    threads: 2  # shards are written in parallel, byte-identical to one process
    resources:
        cpus_per_task=lambda wc, threads: threads,
    priority: 10
    benchmark:
        LAYOUT.job_benchmark("toy_data"),
    log:
        LAYOUT.log("toy_data"),
    shell:
        "mobileclip-repro toy-data --spec {params.spec:q} --workers {threads} > {log:q} 2>&1"


# One job per group of hub shards (data.hub.group_size): DataComp captions/URLs and,
# unless we reinforce ourselves, Apple's DataCompDR shards; images by URL, joined by uid
# and sha256-checked (data.hub.sha256), each repo at one commit per job (data.hub.*_revision).
# The declared output is the group's manifest; shards are not
# outputs, so a failed job keeps what it finished and a rerun resumes.
rule fetch:
    output:
        manifest=LAYOUT.fetch_manifest("{group}"),
    params:
        spec=lambda wc: spec_json(EXP.fetch_spec(wc.group)),
    threads: 16
    resources:
        runtime=FETCH_RESOURCES["runtime"],
        mem_mb=FETCH_RESOURCES["mem_mb"],
        cpus_per_task=lambda wc, threads: threads,  # else the profile's default (4) would win over threads
    benchmark:
        LAYOUT.job_benchmark("fetch", group_job_name("{group}")),
    log:
        LAYOUT.log("fetch", group_job_name("{group}")),
    shell:
        "mobileclip-repro fetch --spec {params.spec:q} --processes {threads} --manifest {output.manifest:q} > {log:q} 2>&1"


# data.source: local. No job makes the data, so this one lists it (every shard, size, sha256):
# what training reads and its identity. The listing param (stat only, read when the DAG starts)
# reruns it when a shard is added, removed or rewritten, and every job downstream with it.
rule local_data:
    output:
        manifest=LAYOUT.local_manifest,
    params:
        spec=lambda wc: spec_json(EXP.local_data_spec(LOCAL_LISTING)),
    benchmark:
        LAYOUT.job_benchmark("local_data"),
    log:
        LAYOUT.log("local_data"),
    shell:
        "mobileclip-repro local-data --spec {params.spec:q} --out {output.manifest:q} > {log:q} 2>&1"


# data.subsets: every sample ranked once by a seeded hash of its uid; each subset run keeps the
# first subset_size of the ranking (subsets.py). One job for all sizes and both arms.
rule select_subsets:
    input:
        data=EXP.data_inputs(),
    output:
        subsets=LAYOUT.subsets_file(EXP.data["subset_seed"]),
    params:
        spec=lambda wc: spec_json(EXP.select_subsets_spec()),
    benchmark:
        LAYOUT.job_benchmark("select_subsets"),
    log:
        LAYOUT.log("select_subsets"),
    shell:
        "mobileclip-repro select-subsets --spec {params.spec:q} --data-manifests {input.data:q}"
        " --out {output.subsets:q} > {log:q} 2>&1"
