"""The reinforce stage's command (workflow/rules/reinforce.smk): `reinforce` (its teachers train with `train`).
The library module is imported inside the command."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from mobileclip_repro.cli import add_spec_option
from mobileclip_repro import locks
from mobileclip_repro.config import captioner_sets


def reinforce_arguments(parser: argparse.ArgumentParser) -> None:
    from mobileclip_repro.reinforce import reinforce

    add_spec_option(parser, "reinforce")
    parser.add_argument("--datacomp-dir", required=True, type=Path, help="DataComp shards (jpg, txt, json)")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="where the DataCompDR shards go (same relative paths as in --datacomp-dir)")
    parser.add_argument("--reinforce-config", required=True, type=Path,
                        help="Apple's reinforcement JSON (teachers, num_samples, image_augmentation)")
    parser.add_argument("--pretrained-root", type=Path, default=None,
                        help="directory against which teacher/captioner checkpoint files named in the JSON are "
                             "resolved; entries that are open_clip pretrained tags (openai, ...) are downloaded")
    captioner = parser.add_mutually_exclusive_group()
    captioner.add_argument("--captioner", choices=["world"], default=None,
                           help="the toy world's oracle captioner (reads toy_scene from each sample's json)")
    captioner.add_argument("--captioner-json", default=None,
                           help='captioner spec as JSON: "world" or {"coca": {"model_name": ..., "pretrained": ...}} '
                                '(a syn_text set, v1), or a mapping {suffix: one of those, ...} (a syn_text_<suffix> '
                                'set each, with syn_text_<suffix>_emb: the v2 layout)')
    parser.add_argument("--num-syn-captions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replace-other-settings", action="store_true",
                        help="redo finished shards made with other settings (teachers, seed, captions, ...) "
                             "instead of stopping; the DAG's jobs, which own their output folder, pass it")
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--shards", nargs="+", default=None,
                           help="shard files in --datacomp-dir, relative paths (default: every *.tar under it)")
    selection.add_argument("--shard-spec", default=None,
                           help='hub shard ids in brace notation, as JSON ("{00000000..00001023}" or a list of '
                                'such) or bare; with --group and --group-size: reinforce that group only')
    parser.add_argument("--group", default=None, help="group index among the spec's groups (e.g. 00003)")
    parser.add_argument("--group-size", type=int, default=None, help="shards per group")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="write a manifest of the selected shards here (per-shard entries and totals)")
    parser.add_argument("--dtype", choices=reinforce.DTYPES, default="float32",
                        help="float32 writes npz; bf16 writes pth.gz (as DataCompDR-12M-bf16)")
    parser.add_argument("--batch-size", type=int, default=256, help="views (or captions) per teacher forward")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")
    parser.add_argument("--amp", nargs="?", const="bf16", choices=reinforce.AMP_MODES, default="auto",
                        help="autocast for teachers and captioner: auto = bf16 (fp16 without bf16 support) "
                             "on CUDA, none on the CPU; a bare --amp means bf16")
    parser.add_argument("--workers", type=reinforce.parse_workers, default="auto",
                        help="DataLoader processes decoding and replaying images while the teachers run; "
                             "auto = 0 on the CPU, one per available core but one (at most 16) with CUDA")


def reinforce_command(args: argparse.Namespace) -> int:
    from mobileclip_repro.reinforce import reinforce

    if args.num_syn_captions < 1 or args.batch_size < 1:
        raise ValueError("--num-syn-captions and --batch-size must be positive")
    if args.group_size is not None and args.group_size < 1:
        raise ValueError(f"--group-size must be positive, got {args.group_size}")
    start = time.perf_counter()
    selected, missing, group_index = reinforce._select_shards(args)
    config = reinforce.load_reinforce_config(args.reinforce_config)
    spec = reinforce._captioner_spec(args)
    sets, v1_layout = captioner_sets(spec)  # a bad spec fails here, before any shard is looked at
    settings = {"reinforce_config": str(args.reinforce_config), "teachers": list(config.model_names),
                "pretrained_entries": list(config.pretrained), "num_samples": config.num_samples,
                "captioner": spec, "num_syn_captions": args.num_syn_captions, "seed": args.seed, "dtype": args.dtype,
                "batch_size": args.batch_size}
    # One writer per shard: a second job on the same shards stops here, before it looks at any
    # (two writers once left seed-1 samples under a manifest saying seed 0). Hub groups lock
    # their own shards only, so the DAG's jobs of disjoint groups share the folder.
    try:
        with locks.folder_lock(args.out_dir, "reinforce job", reinforce._lock_slots(selected, group_index)):
            return reinforce._reinforce_selected(args, selected, missing, group_index, config, sets, v1_layout, settings, start)
    except locks.FolderBusy as error:
        reinforce.log.error("%s", error)
        tqdm.write(f"error: {error}")
        return 3
