"""The train stage's command (workflow/rules/train.smk): `train`, one run (or teacher), under torchrun.
The trainer (torch, open_clip) is imported inside the command, so `train --help` answers at once."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mobileclip_repro import config as config_lib, preflight


def train_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="the resolved run spec as JSON (what the Snakemake rule passes)")
    source.add_argument("--config", help="experiment YAML; use with --run-name")
    # --run-name: under torchrun, whose own parser would take "--run" for an abbreviation of its --run-path
    parser.add_argument("--run-name", "--run", dest="run", metavar="NAME",
                        help="run name in the config (write --run-name when launching through torchrun)")
    parser.add_argument("--section", choices=["runs", "teachers"], default="runs")
    parser.add_argument("--out-dir", required=True, help="run directory: checkpoints/, manifest.json")
    parser.add_argument("--export", type=Path, help="also write the final weights here (teachers)")
    parser.add_argument("--data-manifests", nargs="*", type=Path, default=None,
                        help="the data stage's manifests (toy world, fetch groups, local data, reinforce groups): "
                             "train on exactly the shards they list (default: every shard in the run's folders)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")


def train_command(args) -> int:
    from mobileclip_repro.train import train

    train.die_with_launcher()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.spec:
        spec = config_lib.load_run_spec(args.spec)  # NaN/Infinity refused, naming the key
    else:
        if not args.run:
            raise SystemExit("--config needs --run-name NAME")
        spec = config_lib.resolve_run(preflight.load_experiment(args.config), args.run, args.section)
    out_dir = Path(args.out_dir)
    try:
        with train.holding_run_folder(out_dir):
            train.fit(train.build_run(spec, out_dir, args.data_manifests, args.device), args.export)
    except train.RunFolderBusy as error:
        train.log.error("%s", error)
        return 3
    except train.Preempted as stopped:
        return stopped.exit_code
    return 0
