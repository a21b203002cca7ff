# Stage 5: tables, learning-efficiency plots and an HTML report, from result records only.

REPORT = EXP["report"]


rule report:
    input:
        records=all_eval_records(),
        fetched=[fetch_manifest(group) for group in GROUP_IDS],
    output:
        report_outputs(),
    params:
        records_dir=RESULTS / "eval",
        out_dir=RESULTS / "report",
        paper_reference="--paper-reference" if REPORT["paper_reference"] else "",
        fetch_manifests=DATA_ROOT / "fetch",
    log:
        RESULTS / "logs" / "report.log",
    shell:
        "{CLI} report --records-dir {params.records_dir} --out-dir {params.out_dir}"
        " --title {REPORT[title]:q} {params.paper_reference} --fetch-manifests-dir {params.fetch_manifests}"
        " > {log} 2>&1"
