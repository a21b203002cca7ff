"""The report stage's command (workflow/rules/report.smk): `report`.
The library module is imported inside the command."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobileclip_repro.cli import add_spec_option


def report_arguments(parser: argparse.ArgumentParser) -> None:
    from mobileclip_repro.report import report

    add_spec_option(parser, "report")
    sources = parser.add_mutually_exclusive_group(required=True)
    sources.add_argument("--records", nargs="+", type=Path, default=None,
                         help="evaluate's index files (records.json): the report reads the records and failures "
                              "they list, and no others (how the DAG calls it)")
    sources.add_argument("--records-dir", default=None,
                         help="records made outside a DAG: every record under this folder (recursively)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--title", default=report.DEFAULT_TITLE)
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--paper-reference-json", default=None,
                           help="overlay anchor points from this file (format of paper_reference.json)")
    reference.add_argument("--paper-reference", nargs="?", const="mobileclip", default=None,
                           choices=sorted(report.PAPER_REFERENCES),
                           help="overlay anchor points shipped with the package: mobileclip (the paper's "
                                "learning-efficiency points, the default) or mobileclip2 (released models)")
    parser.add_argument("--chance-json", default=None, help='{"<benchmark>": chance level as a fraction}')
    parser.add_argument("--efficiency-pairs-json", default=None,
                        help='[["<DR run>", "<non-DR run>"], ...] to compare (default: every DR run with every '
                             'non-DR run of the same model)')
    parser.add_argument("--ablation-json", default=None,
                        help='the ablation ladder (config report.ablation): {"benchmarks": {"<paper column>": '
                             '"<benchmark>"}, "rows": [{"run": ..., "label": ..., "paper_row": ...}, ...]}')
    parser.add_argument("--config-digest", default=None,
                        help="the digest of the experiment's config, for the page's provenance (the rule passes it; "
                             "absent: the page says it was not given)")
    declared = parser.add_argument_group("with --records: the experiment's other files (each list may be empty)")
    declared.add_argument("--fetch-manifests", nargs="*", type=Path, default=[],
                          help="fetch group manifests: data.csv and a Data section")
    declared.add_argument("--run-manifests", nargs="*", type=Path, default=[],
                          help="student train job manifests: the ledger's training FLOPs, the training curves")
    declared.add_argument("--teacher-manifests", nargs="*", type=Path, default=[],
                          help="teacher train job manifests (the ledger)")
    declared.add_argument("--reinforce-manifests", nargs="*", type=Path, default=[],
                          help="reinforce group manifests (the ledger's one-time reinforcement cost)")
    declared.add_argument("--job-benchmarks", nargs="*", type=Path, default=[],
                          help="Snakemake benchmark TSVs of the experiment's jobs (the ledger's wall and CPU time)")
    declared.add_argument("--benchmarks-dir", type=Path, default=None,
                          help="the TSVs' root (<rule>/<name>.tsv names each job); given: the compute ledger")
    folders = parser.add_argument_group("with --records-dir")
    folders.add_argument("--results-dir", default=None,
                         help="an experiment's results folder: the compute ledger and training curves from every "
                              "job manifest and benchmark TSV under it")
    folders.add_argument("--fetch-manifests-dir", default=None,
                         help="fetch group manifests (<results_dir>/data/fetch): adds data.csv and a Data section; "
                              "a missing or empty directory adds nothing")


def report_command(args: argparse.Namespace) -> int:
    from mobileclip_repro.report import report

    paper_reference = None
    if args.paper_reference_json:
        paper_reference = report.load_paper_reference(args.paper_reference_json)
    elif args.paper_reference:
        paper_reference = report.load_paper_reference(report.PAPER_REFERENCES[args.paper_reference])
    chance = report.load_chance_levels(args.chance_json) if args.chance_json else None
    pairs = None
    if args.efficiency_pairs_json:
        pairs = [tuple(pair) for pair in json.loads(args.efficiency_pairs_json)]
    if args.records is not None:
        inputs = report.ReportInputs.from_indexes(args.records, fetch_manifests=args.fetch_manifests,
                                                  run_manifests=args.run_manifests, teacher_manifests=args.teacher_manifests,
                                                  reinforce_manifests=args.reinforce_manifests,
                                                  job_benchmarks=args.job_benchmarks, benchmarks_dir=args.benchmarks_dir)
    else:
        inputs = report.ReportInputs.from_folders(args.records_dir, args.results_dir, args.fetch_manifests_dir)
    for path in report.write_report(inputs, args.out_dir, args.title, paper_reference, chance, efficiency_pairs=pairs,
                                    ablation_settings=json.loads(args.ablation_json) if args.ablation_json else None,
                                    config_digest=args.config_digest):
        print(path)
    return 0
