# Stage 5: tables, learning-efficiency plots, efficiency multipliers and an HTML page, from
# result records only. The outputs are also the items of Snakemake's own report
# (`snakemake --report report.zip`), which adds provenance: rule code, parameters, software.

rule report:
    input:
        records=all_eval_records(),
        fetched=[fetch_manifest(group) for group in GROUP_IDS] if IS_HUB else [],
    output:
        table=report(REPORT_DIR / "results.csv", caption="../report/results.rst", category="Tables"),
        markdown=REPORT_DIR / "results.md",
        efficiency=report(REPORT_DIR / "efficiency.json", caption="../report/efficiency.rst", category="Tables"),
        plot=report(REPORT_DIR / "learning_efficiency.png", caption="../report/learning_efficiency.rst",
                    category="Figures"),
        plot_pdf=REPORT_DIR / "learning_efficiency.pdf",
        page=report(REPORT_DIR / "report.html", caption="../report/page.rst", category="Report page"),
        cost=REPORT_DIR / "cost.csv",
        ablation=[report(path, caption="../report/ablation.rst", category="Ablation") for path in ablation_outputs()],
        data_efficiency=[report(path, caption="../report/data_efficiency.rst", category="Figures")
                         for path in data_efficiency_outputs()],
    params:
        records_dir=RESULTS / "eval",
        out_dir=REPORT_DIR,
        title=REPORT["title"],
        paper_reference=paper_reference_option(REPORT["paper_reference"]),
        pairs=f"--efficiency-pairs-json {shlex.quote(json.dumps(REPORT['efficiency_pairs']))}"
        if REPORT.get("efficiency_pairs") is not None else "",
        ablation=f"--ablation-json {shlex.quote(json.dumps(REPORT['ablation']))}" if REPORT.get("ablation") else "",
        fetch_manifests=DATA_ROOT / "fetch",
        # the compute ledger: benchmarks/ TSVs, run and reinforce manifests, all upstream of the records
        results=RESULTS,
    priority: 4
    benchmark:
        job_benchmark("report", "all"),
    log:
        RESULTS / "logs" / "report.log",
    shell:
        "mobileclip-repro report --records-dir {params.records_dir:q} --out-dir {params.out_dir:q}"
        " --title {params.title:q} {params.paper_reference} {params.pairs} {params.ablation}"
        " --fetch-manifests-dir {params.fetch_manifests:q} --results-dir {params.results:q} > {log:q} 2>&1"
