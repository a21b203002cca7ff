# Stage 5: tables, learning-efficiency plots, efficiency multipliers and an HTML report,
# from result records only.

rule report:
    input:
        records=all_eval_records(),
        fetched=[fetch_manifest(group) for group in GROUP_IDS] if not IS_TOY else [],
    output:
        report_outputs(),
    params:
        records_dir=RESULTS / "eval",
        out_dir=RESULTS / "report",
        title=REPORT["title"],
        paper_reference="--paper-reference" if REPORT["paper_reference"] else "",
        pairs=f"--efficiency-pairs-json {shlex.quote(json.dumps(REPORT['efficiency_pairs']))}"
        if REPORT.get("efficiency_pairs") is not None else "",
        fetch_manifests=DATA_ROOT / "fetch",
    priority: 4
    log:
        RESULTS / "logs" / "report.log",
    shell:
        "mobileclip-repro report --records-dir {params.records_dir} --out-dir {params.out_dir}"
        " --title {params.title:q} {params.paper_reference} {params.pairs}"
        " --fetch-manifests-dir {params.fetch_manifests} > {log} 2>&1"
