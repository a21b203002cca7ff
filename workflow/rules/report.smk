# Stage 5: tables, learning-efficiency plots, efficiency multipliers and an HTML page, from
# result records only. The outputs are also the items of Snakemake's own report
# (`snakemake --report report.zip`), which adds provenance: rule code, parameters, software.
REPORT_CAPTIONS = {"teachers.csv": "teachers.rst", "suite_averages.csv": "suite_averages.rst", "data.csv": "data.rst"}

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
        # Every file the report writes, each an item of `snakemake --report` (captions in workflow/report/)
        table=report(LAYOUT.report_file("results.csv"), caption="../report/results.rst", category="Tables"),
        per_seed=report(LAYOUT.report_file("results_per_seed.csv"), caption="../report/results_per_seed.rst",
                        category="Tables"),
        long=report(LAYOUT.report_file("results_long.csv"), caption="../report/results_long.rst", category="Tables"),
        markdown=report(LAYOUT.report_file("results.md"), caption="../report/results_md.rst", category="Tables"),
        efficiency=report(LAYOUT.report_file("efficiency.json"), caption="../report/efficiency.rst", category="Tables"),
        plot=report(LAYOUT.report_file("learning_efficiency.png"), caption="../report/learning_efficiency.rst",
                    category="Figures"),
        plot_pdf=LAYOUT.report_file("learning_efficiency.pdf"),
        compute_plot=report(LAYOUT.report_file("learning_efficiency_compute.png"),
                            caption="../report/learning_efficiency_compute.rst", category="Figures"),
        compute_plot_pdf=LAYOUT.report_file("learning_efficiency_compute.pdf"),
        curves=report(LAYOUT.report_file("training_curves.png"), caption="../report/training_curves.rst",
                      category="Figures"),
        curves_pdf=LAYOUT.report_file("training_curves.pdf"),
        page=report(LAYOUT.report_file("report.html"), caption="../report/page.rst", category="Report page"),
        cost=report(LAYOUT.report_file("cost.csv"), caption="../report/cost.rst", category="Tables"),
        # the tables this config calls for: the teachers', DataComp's suite averages, the fetched data's
        optional=[report(path, caption=f"../report/{REPORT_CAPTIONS[path.name]}", category="Tables")
                  for path in EXP.optional_report_outputs()],
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
