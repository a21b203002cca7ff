"""One CLI, one subcommand per stage; Snakemake rules and humans call the same thing.

Each subcommand lives in the module of the same concept, which provides
``add_arguments(parser)`` and ``command(args)``. Modules are imported only when their
subcommand runs: importing torch + open_clip + clip_benchmark costs ~12 s on a 2-core
machine, and the data and report stages need none of them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from mobileclip_repro.config import ConfigError  # jsonschema + yaml only: cheap

COMMANDS = {
    "toy-data": ("mobileclip_repro.toyworld", "synthesize the toy world: DataComp-format shards, teacher data, benchmark sets"),
    "fetch": ("mobileclip_repro.data.fetch", "download one group of hub shards: DataComp captions + images (+ DataCompDR), joined by uid"),
    "local-data": ("mobileclip_repro.data.local_data", "list local data (data.source: local): every shard with its size and sha256"),
    "select-subsets": ("mobileclip_repro.subsets", "rank every sample by a seeded hash of its uid: the nested subsets of data.subsets"),
    "reinforce": ("mobileclip_repro.reinforce.reinforce", "write DataCompDR-format shards: augmentations, teacher embeddings, synthetic captions"),
    "join-shards": ("mobileclip_repro.shards", "write Apple's joined layout: each DataComp shard with its DataCompDR keys in one tar"),
    "train": ("mobileclip_repro.train.train", "train one run (CLIP or DR loss); launch under torchrun for multi-process"),
    "fetch-benchmark": ("mobileclip_repro.benchmark_sets", "download a clip_benchmark webdataset mirror from the hub into a local root"),
    "evaluate": ("mobileclip_repro.evaluate.evaluate", "evaluate one checkpoint on benchmark sets with clip_benchmark"),
    "export-open-clip": ("mobileclip_repro.export", "write a checkpoint as a folder plain open_clip loads (model name local-dir:DIR), e.g. for `clip_benchmark eval`"),
    "report": ("mobileclip_repro.report.report", "tables, learning-efficiency plots and an HTML report from result records"),
    "validate-config": ("mobileclip_repro.preflight", "validate a config file against the schema and print the resolved runs"),
    "cost": ("mobileclip_repro.report.cost", "project a config's training and reinforcement FLOPs and GPU-hours (plain, DR, online distillation)"),
    "plan": ("mobileclip_repro.plan", "size a config before it runs: shards, samples, downloads, disk per stage, GPU-hours, jobs vs the cluster's runtime limit"),
}


def _usage() -> str:
    lines = ["usage: mobileclip-repro <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `mobileclip-repro <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mobileclip-repro {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return module.command(args) or 0
    except ConfigError as error:  # a config mistake is a message naming the key, not a traceback
        print(f"{parser.prog}: invalid config: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
