# Stage 5: tables, learning-efficiency plots, efficiency multipliers and an HTML page, from
# result records only. The outputs are also the items of Snakemake's own report
# (`snakemake --report report.zip`), which adds provenance: rule code, parameters, software.

rule report:
    input:
        # Exactly the experiment's files, each a job's declared output: a run removed from the
        # config leaves its folders on disk, and the report never sees them.
        records=EXP.eval_indexes(),
        fetched=[LAYOUT.fetch_manifest(group) for group in EXP.group_ids] if IS_HUB else [],
        runs=[LAYOUT.train_manifest(run, seed) for run, seed in EXP.specs],
        # a teacher's manifest is written with its weights, in its run folder (teacher_manifest)
        teachers=[LAYOUT.teacher_weights(teacher) for teacher in EXP.trained_teachers()],
        reinforced=[LAYOUT.reinforce_manifest(name, group) for name in EXP.generated_reinforcements()
                    for group in EXP.group_ids],
        benchmarks=EXP.upstream_job_benchmarks(),
    output:
        table=report(LAYOUT.report_file("results.csv"), caption="../report/results.rst", category="Tables"),
        markdown=LAYOUT.report_file("results.md"),
        efficiency=report(LAYOUT.report_file("efficiency.json"), caption="../report/efficiency.rst", category="Tables"),
        plot=report(LAYOUT.report_file("learning_efficiency.png"), caption="../report/learning_efficiency.rst",
                    category="Figures"),
        plot_pdf=LAYOUT.report_file("learning_efficiency.pdf"),
        page=report(LAYOUT.report_file("report.html"), caption="../report/page.rst", category="Report page"),
        cost=LAYOUT.report_file("cost.csv"),
        ablation=[report(path, caption="../report/ablation.rst", category="Ablation") for path in EXP.ablation_outputs()],
        data_efficiency=[report(path, caption="../report/data_efficiency.rst", category="Figures")
                         for path in EXP.data_efficiency_outputs()],
    params:
        spec=lambda wc: spec_json(EXP.report_spec()),
    priority: 4
    benchmark:
        LAYOUT.job_benchmark("report"),
    log:
        LAYOUT.log("report"),
    shell:
        "mobileclip-repro report --spec {params.spec:q} --records {input.records:q} --fetch-manifests {input.fetched:q}"
        " --run-manifests {input.runs:q} --reinforce-manifests {input.reinforced:q}"
        " --job-benchmarks {input.benchmarks:q} > {log:q} 2>&1"
