"""The evaluate stage's commands (workflow/rules/evaluate.smk): `fetch-benchmark`, `evaluate`.
The library modules are imported inside the commands."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mobileclip_repro.cli import add_spec_option
from mobileclip_repro import shards


def fetch_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_option(parser, "fetch_benchmark")
    parser.add_argument("--repo", required=True, help="hub dataset repo, e.g. clip-benchmark/wds_imagenet1k")
    parser.add_argument("--root", required=True, help="local dataset root the evaluation reads")
    parser.add_argument("--split", default="test")
    parser.add_argument("--revision", default=None,
                        help="a branch, tag or commit of the repo (default: main); the manifest names the commit")
    parser.add_argument("--manifest", help="write what was fetched here (JSON)")


def fetch_benchmark_command(args: argparse.Namespace) -> int:
    from mobileclip_repro import benchmark_sets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fetched = benchmark_sets.fetch_benchmark_set(args.repo, args.root, args.split, args.revision)
    if args.manifest:
        shards.write_json_atomic(args.manifest, fetched)
    print(f"{args.repo}@{fetched['commit']}: {fetched['num_shards']} {args.split} shards in {args.root}")
    return 0


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from mobileclip_repro.evaluate import evaluate

    add_spec_option(parser, "evaluate", "evaluate_teachers")
    parser.add_argument("--checkpoint", nargs="+", help="epoch_<k>.pt files written by `train`")
    parser.add_argument("--teachers", metavar="REINFORCE_JSON",
                        help="instead of checkpoints: each teacher of this reinforcement JSON and their ensemble")
    parser.add_argument("--pretrained-root", default=None, help="with --teachers: where checkpoint files it names are")
    parser.add_argument("--model", default=None, help="open_clip model name (default: the checkpoint's model_name)")
    parser.add_argument("--benchmarks-json", required=True,
                        help='a JSON file, or JSON text: a list of {"name", "dataset", "task", "root", ["split", "recall_k"]}')
    parser.add_argument("--out-dir", required=True, nargs="+",
                        help="one per checkpoint, each getting one record per benchmark: <out-dir>/<name>.json; "
                             "with --teachers one folder with a subfolder per teacher and ensemble/")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda when this job has a GPU")
    parser.add_argument("--precision", default=evaluate.DEFAULT_PRECISION, choices=evaluate.PRECISIONS,
                        help="amp: clip_benchmark's autocast on CUDA (never on CPU); fp32: none, as DataComp classifies")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="re-evaluate benchmarks whose record exists")
    parser.add_argument("--skip-failed-benchmarks", action="store_true",
                        help="a benchmark that fails leaves <out-dir>/<name>.failed.json and the others go on "
                             "(default: the job fails)")
    parser.add_argument("--index", type=Path, default=None,
                        help="also write the list of record paths here (the Snakemake rule's declared output)")


def evaluate_command(args: argparse.Namespace) -> int:
    from mobileclip_repro.evaluate import evaluate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    benchmarks = evaluate.load_benchmark_specs(args.benchmarks_json)
    from mobileclip_repro.devices import resolve_device  # torch: imported once the CLI has parsed its arguments

    device = resolve_device(args.device).type
    if bool(args.checkpoint) == bool(args.teachers):
        raise SystemExit("give --checkpoint or --teachers")
    if args.teachers:
        if len(args.out_dir) != 1:
            raise SystemExit("--teachers writes into one --out-dir")
        paths = evaluate.evaluate_teachers(args.teachers, benchmarks, args.out_dir[0], args.pretrained_root, device=device,
                                           batch_size=args.batch_size, num_workers=args.num_workers,
                                           skip_failed=args.skip_failed_benchmarks, precision=args.precision)
    else:
        if len(args.out_dir) != len(args.checkpoint):
            raise SystemExit(f"{len(args.checkpoint)} checkpoints need as many --out-dir, got {len(args.out_dir)}")
        decoded = evaluate.DecodedSets()  # the checkpoints of one job share one model's eval transform
        paths = [path for checkpoint, out_dir in zip(args.checkpoint, args.out_dir)
                 for path in evaluate.evaluate_checkpoint(checkpoint, benchmarks, out_dir, model_name=args.model,
                                                          device=device, batch_size=args.batch_size,
                                                          num_workers=args.num_workers, force=args.force,
                                                          skip_failed=args.skip_failed_benchmarks, decoded=decoded,
                                                          precision=args.precision)]
    if args.index is not None:
        shards.write_json_atomic(args.index, {"records": [str(path) for path in paths if not evaluate._is_failure(path)],
                                              "failed": [str(path) for path in paths if evaluate._is_failure(path)]})
    for path in paths:
        print(path)
    return 0
