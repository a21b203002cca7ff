# Stage 5: tables, learning-efficiency plots, efficiency multipliers and an HTML page, from
# result records only. The outputs are also the items of Snakemake's own report
# (`snakemake --report report.zip`), which adds provenance: rule code, parameters, software.

rule report:
    input:
        # Exactly the experiment's files, each a job's declared output: a run removed from the
        # config leaves its folders on disk, and the report never sees them.
        records=all_eval_records(),
        fetched=[fetch_manifest(group) for group in GROUP_IDS] if IS_HUB else [],
        runs=[train_manifest(run, seed) for run, seed in SPECS],
        # a teacher's manifest is written with its weights, in its run folder (teacher_manifest)
        teachers=[RESULTS / "teachers" / teacher for teacher in trained_teachers()],
        reinforced=[reinforce_manifest(name, group) for name in generated_reinforcements() for group in GROUP_IDS],
        benchmarks=upstream_job_benchmarks(),
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
        out_dir=REPORT_DIR,
        title=REPORT["title"],
        paper_reference=paper_reference_option(REPORT["paper_reference"]),
        pairs=f"--efficiency-pairs-json {shlex.quote(canonical_json(REPORT['efficiency_pairs']))}"
        if REPORT.get("efficiency_pairs") is not None else "",
        ablation=f"--ablation-json {shlex.quote(canonical_json(REPORT['ablation']))}" if REPORT.get("ablation") else "",
        benchmarks_dir=RESULTS / "benchmarks",
        teacher_manifests=[teacher_manifest(teacher) for teacher in trained_teachers()],
    priority: 4
    benchmark:
        job_benchmark("report", "all"),
    log:
        RESULTS / "logs" / "report.log",
    shell:
        "mobileclip-repro report --records {input.records:q} --out-dir {params.out_dir:q}"
        " --title {params.title:q} {params.paper_reference} {params.pairs} {params.ablation}"
        " --fetch-manifests {input.fetched:q} --run-manifests {input.runs:q} --teacher-manifests {params.teacher_manifests:q}"
        " --reinforce-manifests {input.reinforced:q} --job-benchmarks {input.benchmarks:q}"
        " --benchmarks-dir {params.benchmarks_dir:q} > {log:q} 2>&1"
