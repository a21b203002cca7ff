"""Part 4, teacher throughput for reinforcement: two random-init ``--teacher-model`` teachers through
the real ``reinforce.Reinforcer.reinforce_shard`` on the synthetic teacher shard, per view count."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .common import NUM_SYN, REPO, free

# (name, images, views per image): what reinforcing the two DataCompDR sets costs.
DATASETS = (("datacompdr12m", 12_800_000, 30), ("datacompdr1b", 1_280_000_000, 10))


def part_teachers(args, device, data_info: dict, tmp: Path) -> dict:
    import torch

    from mobileclip_repro import devices, shards
    from mobileclip_repro.reinforce import reinforce
    from mobileclip_repro.teachers import ReinforceConfig, TeacherEnsemble, build_captioner

    config_name = "toy.json" if args.smoke else "datacompdr12m.json"
    raw = json.loads((REPO / "configs" / "reinforce" / config_name).read_text())
    # The config's pretrained entries go unused: the members below are built with pretrained=None.
    raw["model_name"] = f"{args.teacher_model},{args.teacher_model}"
    amp = devices.autocast_dtype("auto", device)
    workers = reinforce.resolve_workers(reinforce.parse_workers(args.teacher_workers), device)
    built = time.perf_counter()
    teachers = TeacherEnsemble([args.teacher_model] * 2, [None, None], device=device, autocast_dtype=amp,
                               batch_size=args.teacher_batch_size)
    captioner = build_captioner("world", num_captions=NUM_SYN, device=device)
    built = time.perf_counter() - built
    source = data_info["teacher_shard"]
    first = ReinforceConfig.from_dict({**raw, "num_samples": args.views[0]})
    teachers.check_image_size(first.crop_size)
    # Warm-up, as reinforce_teacher_share.py: one full teacher batch on CUDA, one view and caption on the CPU.
    reinforce.prepare_sample(next(shards.iter_raw_samples(source)), first, args.seed, keep_image=False)
    views = min(args.teacher_batch_size, args.teacher_images * max(args.views)) if device.type == "cuda" else 1
    texts = min(args.teacher_batch_size, (1 + NUM_SYN) * args.teacher_images) if device.type == "cuda" else 1
    teachers.encode_images(torch.zeros(views, 3, first.crop_size, first.crop_size))
    teachers.encode_texts([f"warm-up caption {i}" for i in range(texts)])
    by_views = {}
    for num_views in args.views:
        config = ReinforceConfig.from_dict({**raw, "num_samples": num_views})
        reinforcer = reinforce.Reinforcer(config, teachers, captioner, seed=args.seed, dtype="float32",
                                          batch_size=args.teacher_batch_size, workers=workers)
        shard = reinforcer.reinforce_shard(source, tmp / f"teacher_dr_{num_views}" / "00000000.tar")
        if shard.written != args.teacher_images:
            raise RuntimeError(f"{shard.written} of {args.teacher_images} images reinforced: {dict(shard.skipped)}")
        by_views[str(num_views)] = {
            "images": shard.samples_in, "views": num_views,
            "images_per_second": shard.samples_in / shard.seconds,
            "teacher_only_images_per_second": shard.samples_in / shard.teacher_seconds,
            "teacher_share": shard.teacher_seconds / shard.seconds,
            "report": shard.as_dict()}
        print(f"  {num_views} views: {by_views[str(num_views)]['images_per_second']:.2f} images/s, teachers "
              f"{100 * by_views[str(num_views)]['teacher_share']:.1f}% of wall time", flush=True)
    gpu_hours = {}
    for (name, images, paper_views), num_views in zip(DATASETS, args.views):
        rate = by_views[str(num_views)]["images_per_second"]
        gpu_hours[name] = {"images": images, "paper_views": paper_views, "views_measured": num_views,
                           "images_per_second": rate, "gpu_hours": images / rate / 3600}
    del teachers, captioner
    free(device)
    return {"model": args.teacher_model, "members": 2, "init": "random (pretrained=None)",
            "autocast": str(amp).replace("torch.", "") if amp else "off", "workers": workers,
            "batch_size": args.teacher_batch_size, "image_side": args.teacher_image_side,
            "reinforce_config": f"configs/reinforce/{config_name}", "captioner": "world (oracle; CoCa not included)",
            "build_seconds": built, "by_views": by_views, "gpu_hours": gpu_hours}
