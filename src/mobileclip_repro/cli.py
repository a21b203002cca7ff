"""One CLI, one subcommand per job; Snakemake rules and humans call the same thing.

A rule's command lives in its stage's ``cli`` module (``data/cli.py``, ``reinforce/cli.py``,
``train/cli.py``, ``evaluate/cli.py``, ``report/cli.py``); commands no rule runs live in
``tools.py``. Each is a pair, ``<name>_arguments(parser)`` and ``<name>_command(args)``, and
imports the library it runs inside the command: importing torch + open_clip + clip_benchmark
costs ~12 s on a 2-core machine, and neither ``--help`` nor the data and report stages need them.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from mobileclip_repro import __version__
from mobileclip_repro.config import ConfigError  # jsonschema + yaml only: cheap

# name -> (module, the pair's prefix, what it does)
COMMANDS = {
    "toy-data": ("mobileclip_repro.data.cli", "toy_data", "synthesize the toy world: DataComp-format shards, teacher data, benchmark sets"),
    "fetch": ("mobileclip_repro.data.cli", "fetch", "download one group of hub shards: DataComp captions + images (+ DataCompDR), joined by uid"),
    "local-data": ("mobileclip_repro.data.cli", "local_data", "list local data (data.source: local): every shard with its size and sha256"),
    "select-subsets": ("mobileclip_repro.data.cli", "select_subsets", "rank every sample by a seeded hash of its uid: the nested subsets of data.subsets"),
    "reinforce": ("mobileclip_repro.reinforce.cli", "reinforce", "write DataCompDR-format shards: augmentations, teacher embeddings, synthetic captions"),
    "train": ("mobileclip_repro.train.cli", "train", "train one run (CLIP or DR loss); launch under torchrun for multi-process"),
    "fetch-benchmark": ("mobileclip_repro.evaluate.cli", "fetch_benchmark", "download a clip_benchmark webdataset mirror from the hub into a local root"),
    "evaluate": ("mobileclip_repro.evaluate.cli", "evaluate", "evaluate one checkpoint on benchmark sets with clip_benchmark"),
    "report": ("mobileclip_repro.report.cli", "report", "tables, learning-efficiency plots and an HTML report from result records"),
    "validate-config": ("mobileclip_repro.tools", "validate_config", "validate a config file against the schema and print the resolved runs"),
    "cost": ("mobileclip_repro.tools", "cost", "project a config's training and reinforcement FLOPs and GPU-hours (plain, DR, online distillation)"),
    "plan": ("mobileclip_repro.tools", "plan", "size a config before it runs: shards, samples, downloads, disk per stage, GPU-hours, jobs vs the cluster's runtime limit"),
    "export-open-clip": ("mobileclip_repro.tools", "export_open_clip", "write a checkpoint as a folder plain open_clip loads (model name local-dir:DIR), e.g. for `clip_benchmark eval`"),
    "join-shards": ("mobileclip_repro.tools", "join_shards", "write Apple's joined layout: each DataComp shard with its DataCompDR keys in one tar"),
}


def add_spec_option(parser: argparse.ArgumentParser, *rules: str) -> None:
    """A command's ``--spec``: its options as one JSON object (what the Snakemake rule passes, built by
    ``experiment.Experiment``), each key an option's name: ``{"batch_size": 8, "force": true}`` stands
    for ``--batch-size 8 --force``. A value option written after it overrides the spec's value (a flag
    the spec sets stays set, and an option exclusive with one it sets is refused). By hand, ``--config X
    --job RULE[:NAME]`` stands for the spec the DAG would give that job of ``rules`` (the rules this
    command runs)."""
    parser.add_argument("--spec", dest="spec_options", metavar="JSON",
                        help="the job's options as one JSON object, {\"option_name\": value, ...} (what the workflow "
                             "passes); a list gives the option several values, true a flag, false or null no option")
    parser.add_argument("--config", dest="spec_config", metavar="YAML",
                        help="with --job: the options the workflow gives that job of this experiment config")
    parser.add_argument("--job", dest="spec_job", metavar="RULE[:NAME]",
                        help=f"a job of --config's DAG, named as its benchmarks/<rule>/<name>.tsv: rule "
                             f"{' or '.join(rules)}, and the job's name where the rule has several "
                             f"(e.g. evaluate:<run>, reinforce:default_group_00000)")
    parser.set_defaults(spec_rules=rules)


def spec_options(text: str) -> list[str]:
    """The options a ``--spec`` JSON object stands for (``add_spec_option``); a mapping value passes as JSON."""
    try:
        options = json.loads(text)
    except ValueError as error:
        raise SystemExit(f"--spec is not JSON: {error}") from None
    if not isinstance(options, dict):
        raise SystemExit(f"--spec must be a JSON object of options, got a {type(options).__name__}")
    words = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *(json.dumps(item) if isinstance(item, (dict, list)) else str(item) for item in value)]
        else:
            # --name=value: the value may start with a dash
            words.append(f"{flag}={json.dumps(value) if isinstance(value, dict) else value}")
    return words


def expand_spec_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with each ``--spec`` of a command that takes one (``add_spec_option``) replaced by its options."""
    if not any(action.dest == "spec_options" for action in parser._actions):
        return argv  # train's --spec is a run spec, read by the command itself
    expanded, words, by_hand = [], iter(argv), {}
    for word in words:
        name, _, value = word.partition("=")
        if name in ("--spec", "--config", "--job"):
            value = value if _ else next(words, "null")
            if name == "--spec":
                expanded += spec_options(value)
            else:
                by_hand[name] = value
        else:
            expanded.append(word)
    if by_hand:
        expanded = spec_options(_job_spec(by_hand, parser.get_default("spec_rules"))) + expanded
    return expanded


def _job_spec(by_hand: dict, rules: tuple) -> str:
    """The --spec the DAG gives ``--job`` of ``--config``'s experiment."""
    from mobileclip_repro.experiment import Experiment, spec_json

    if set(by_hand) != {"--config", "--job"}:
        raise SystemExit("--config and --job go together")
    rule, _, name = by_hand["--job"].partition(":")
    if rule not in rules:
        raise SystemExit(f"--job {by_hand['--job']}: this command runs the jobs of rule {' or '.join(rules)}")
    try:
        return spec_json(Experiment.load(by_hand["--config"]).job_spec(rule, name or None))
    except ConfigError as error:
        raise SystemExit(f"invalid config: {error}") from None


def _usage() -> str:
    lines = [f"usage: mobileclip-repro <command> [options]   (mobileclip-repro {__version__})", "", "commands:"]
    lines += [f"  {name:<16} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", "Run `mobileclip-repro <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"mobileclip-repro {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, prefix, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mobileclip-repro {name}", description=help_text)
    getattr(module, f"{prefix}_arguments")(parser)
    args = parser.parse_args(expand_spec_options(parser, rest))
    try:
        return getattr(module, f"{prefix}_command")(args) or 0
    except ConfigError as error:  # a config mistake is a message naming the key, not a traceback
        print(f"{parser.prog}: invalid config: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
