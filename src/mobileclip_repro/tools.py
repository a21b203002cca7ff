"""The commands no rule runs, for a person at a terminal: `validate-config`, `cost`, `plan`,
`export-open-clip`, `join-shards`. Each library module is imported inside its command."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mobileclip_repro.config import ConfigError, resolve_run, run_seeds
from mobileclip_repro.preflight import load_experiment


def validate_config_arguments(parser) -> None:
    parser.add_argument("configfile", help="experiment YAML")
    parser.add_argument("--run", help="print this run's resolved spec")


def validate_config_command(args) -> int:
    """Prints the resolved runs; a bad config prints its message (naming the key), not a traceback."""
    from mobileclip_repro import preflight

    try:
        config = preflight.load_experiment(args.configfile)
        names = [args.run] if args.run else list(config["runs"])
        specs = [resolve_run(config, name, seed=seed) for name in names for seed in run_seeds(config["runs"][name])]
    except ConfigError as error:
        print(f"invalid config: {error}", file=sys.stderr)
        return 2
    if args.run:
        print(json.dumps(specs if len(specs) > 1 else specs[0], indent=2))
    else:
        for spec in specs:
            print(f"{spec['name']} seed {spec['seed']}: {spec['model']} data={spec['data']} world={spec['world_size']} "
                  f"batch={spec['global_batch_size']} ({spec['per_gpu_batch_size']}/proc"
                  f"{_in_micro_batches(spec)}) "
                  f"steps={spec['total_steps']} seen={spec['seen_samples']:,} checkpoints at steps {spec['checkpoint_steps']}")
    return 0


def _in_micro_batches(spec: dict) -> str:
    accum_freq = spec.get("accum_freq", 1)
    return f" in {accum_freq} micro-batches of {spec['per_gpu_micro_batch_size']}" if accum_freq > 1 else ""


def cost_arguments(parser) -> None:
    from mobileclip_repro import flops

    parser.add_argument("--config", required=True, help="experiment YAML (its runs and its reinforcement JSON)")
    parser.add_argument("--mfu", type=float, default=flops.DEFAULT_MFU, help="model FLOPs utilization assumed for GPU-hours")
    parser.add_argument("--json", action="store_true", help="print the projection as JSON")


def cost_command(args) -> int:
    from mobileclip_repro import flops

    projection = flops.paper_projection(load_experiment(args.config), args.mfu)
    print(json.dumps(projection, indent=2) if args.json else flops.describe_projection(projection))
    return 0


def plan_arguments(parser) -> None:
    parser.add_argument("configfile", help="experiment YAML")
    parser.add_argument("--cluster-max-runtime", type=float, metavar="HOURS",
                        help="the cluster's longest job (hours): jobs asking for more are flagged")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--no-gpu-hours", action="store_true",
                        help="leave out the GPU-hour projection (which imports torch: ~40 s for a paper config)")
    parser.add_argument("--mfu", type=float, default=None, help="model FLOPs utilization assumed for GPU-hours "
                                                                "(default: cost's)")


def plan_command(args) -> int:
    from mobileclip_repro import plan

    result = plan.plan(load_experiment(args.configfile), args.cluster_max_runtime, gpu_hours=not args.no_gpu_hours,
                       mfu=args.mfu)
    print(json.dumps(result, indent=2) if args.json else plan.describe_plan(result))
    return 0


def export_open_clip_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="an epoch_<k>.pt written by `train`")
    parser.add_argument("out_dir", help="folder to write open_clip_config.json and open_clip_model.safetensors into")
    parser.add_argument("--model", default=None, help="open_clip model name (default: the checkpoint's model_name)")


def export_open_clip_command(args) -> int:
    from mobileclip_repro import export

    out_dir = export.export_open_clip(args.checkpoint, args.out_dir, model_name=args.model)
    print(f"local-dir:{out_dir.resolve()}")
    return 0


def join_shards_arguments(parser) -> None:
    parser.add_argument("--datacomp-dir", type=Path, required=True, help="DataComp shards (jpg, txt, json)")
    parser.add_argument("--dr-dir", type=Path, required=True, help="DataCompDR shards at the same relative paths")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the joined shards go (same relative paths)")


def join_shards_command(args) -> int:
    from mobileclip_repro import shards

    tars = shards.list_shards(args.datacomp_dir)
    if not tars:
        raise SystemExit(f"no .tar shards in {args.datacomp_dir}")
    total = 0
    for tar in tars:
        relative = tar.relative_to(args.datacomp_dir)
        dr_tar = args.dr_dir / relative
        if not dr_tar.is_file():
            raise SystemExit(f"no DataCompDR shard {dr_tar} for {tar}")
        out = args.out_dir / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        count = shards.join_shards(tar, dr_tar, out)
        total += count
        print(f"{relative}: {count} samples", flush=True)
    print(f"{len(tars)} joined shards, {total} samples -> {args.out_dir}")
    return 0
