"""The one synthetic-shard writer of gpu_check: every shard its parts read, written before any CUDA work.

Training shards (the train, mfu and accum parts): DataComp and DataCompDR tar pairs of synthetic
web-size JPEGs written with the project's writers (``shards.datacomp_record`` /
``shards.dr_record``, ``atomic_tar_writer``): images from ``dr_pipeline_cpu.natural_image``
(short side 256-1024 px, photo-like, q90), ``num_samples`` ``param_aug`` entries per image drawn
by ``reinforce.draw_param_aug`` with DataCompDR-12M's augmentation config, and per-member
L2-normalised random teacher embeddings of the config's width. The teachers part's shard: toy
scenes by ``reinforce_teacher_share.make_shard``. Shards are written in forked processes."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from .common import NUM_SYN, REPO

TRAINING_PARTS = {"train", "mfu", "accum"}  # the parts that read training shards
_NOISE_TILES: list | None = None  # made once in the parent; worker processes inherit it (fork)


def _write_train_shard(task: dict) -> dict:
    """One DataComp shard and its DataCompDR shard of synthetic web-size JPEGs."""
    import torch  # noqa: F401 - draw_param_aug

    import dr_pipeline_cpu as web
    from mobileclip_repro import shards
    from mobileclip_repro.reinforce import reinforce
    from mobileclip_repro.teachers import ReinforceConfig

    config = ReinforceConfig.from_dict(task["reinforce_json"])
    dims = task["member_dims"]
    rng = np.random.default_rng([task["seed"], task["shard"]])
    name = shards.shard_name(task["shard"])
    jpg_bytes = pixels = 0
    with shards.atomic_tar_writer(Path(task["datacomp_dir"]) / name, mtime=0) as datacomp_tar, \
            shards.atomic_tar_writer(Path(task["dr_dir"]) / name, mtime=0) as dr_tar:
        for position in range(task["count"]):
            key = shards.sample_key(task["shard"], position)
            image = web.natural_image(rng, _NOISE_TILES)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            jpg = buffer.getvalue()
            uid = rng.bytes(16).hex()
            url = f"https://example.com/img/{uid}.jpg"
            datacomp_tar.write(shards.datacomp_record(key, jpg, web.caption(rng), uid, url))
            param_aug = reinforce.draw_param_aug(config, image.width, image.height,
                                                 reinforce.augmentation_generator(task["seed"], key))
            dr_tar.write(shards.dr_record(key, uid, shards.sha256_hex(jpg), url,
                                          [web.caption(rng, 8, 24) for _ in range(NUM_SYN)], param_aug,
                                          _teacher_embeddings(rng, len(param_aug), dims),
                                          _teacher_embeddings(rng, 1 + NUM_SYN, dims)))
            jpg_bytes += len(jpg)
            pixels += image.width * image.height
    return {"samples": task["count"], "jpg_bytes": jpg_bytes, "pixels": pixels}


def _teacher_embeddings(rng: np.random.Generator, rows: int, dims: list[int]) -> np.ndarray:
    """Random rows shaped like the ensemble's output: each member's slice L2-normalised."""
    parts = []
    for dim in dims:
        part = rng.standard_normal((rows, dim), dtype=np.float32)
        parts.append(part / np.linalg.norm(part, axis=1, keepdims=True))
    return np.concatenate(parts, axis=1)


def _write_teacher_shard(task: dict) -> dict:
    import reinforce_teacher_share

    reinforce_teacher_share.make_shard(Path(task["path"]), task["images"], task["image_side"], task["seed"])
    return {"samples": task["images"]}


def make_data(root: Path, args, parts: set[str], member_dims: list[int]) -> dict:
    """Every shard the run needs, written in parallel before any CUDA work (fork-safe)."""
    global _NOISE_TILES
    import dr_pipeline_cpu as web

    info: dict = {}
    tasks = []
    if parts & TRAINING_PARTS:
        rng = np.random.default_rng(args.seed)
        # The smoke run's images need no sensor noise; the tiles cost seconds to make.
        _NOISE_TILES = ([np.zeros((2048, 2048, 3), np.int16)] if args.smoke else web.make_noise_tiles(rng))
        # DataCompDR-12M's reinforcement JSON with the shards' num_samples: the DR run's
        # reinforcement.config, which the config loader checks the shards against.
        reinforce_json = json.loads((REPO / "configs" / "reinforce" / "datacompdr12m.json").read_text())
        reinforce_json["num_samples"] = args.num_augs
        info["reinforce_config"] = root / "reinforce.json"
        info["reinforce_config"].write_text(json.dumps(reinforce_json, indent=1))
        # The online arm's teachers are args.teacher_model (random init); their crop size is theirs
        # (the toy JSON's 32 px for the smoke's toy-teacher, DataCompDR-12M's 224 for ViT-L-14).
        online_json = json.loads((REPO / "configs" / "reinforce" /
                                  ("toy.json" if args.smoke else "datacompdr12m.json")).read_text())
        online_json.update(model_name=f"{args.teacher_model},{args.teacher_model}", num_samples=args.num_augs)
        info["online_reinforce_config"] = root / "reinforce_online.json"
        info["online_reinforce_config"].write_text(json.dumps(online_json, indent=1))
        per_shard = -(-args.images // args.shards)
        datacomp_dir, dr_dir = root / "datacomp", root / "datacompdr"
        for shard in range(args.shards):
            count = min(per_shard, args.images - shard * per_shard)
            if count > 0:
                tasks.append((_write_train_shard, {
                    "shard": shard, "count": count, "seed": args.seed, "datacomp_dir": str(datacomp_dir),
                    "dr_dir": str(dr_dir), "reinforce_json": reinforce_json, "member_dims": member_dims}))
        info.update(datacomp_dir=datacomp_dir, dr_dir=dr_dir)
    if "teachers" in parts:
        info["teacher_shard"] = root / "teacher_datacomp" / "00000000.tar"
        tasks.append((_write_teacher_shard, {"path": str(info["teacher_shard"]), "images": args.teacher_images,
                                             "image_side": args.teacher_image_side, "seed": args.seed}))
    start = time.perf_counter()
    processes = max(1, min(len(tasks), os.cpu_count() or 1))
    if processes == 1:
        results = [fn(task) for fn, task in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = [r.get() for r in [pool.apply_async(fn, (task,)) for fn, task in tasks]]
    train_results = [r for r, (fn, _) in zip(results, tasks) if fn is _write_train_shard]
    if train_results:
        samples = sum(r["samples"] for r in train_results)
        info["train"] = {"images": samples, "shards": len(train_results), "augmentations_per_image": args.num_augs,
                         "mean_megapixels": sum(r["pixels"] for r in train_results) / samples / 1e6,
                         "mean_jpg_kb": sum(r["jpg_bytes"] for r in train_results) / samples / 1e3,
                         "embedding_dim": sum(member_dims)}
    info["seconds"] = time.perf_counter() - start
    return info
