"""GPU figures in one run (issue 14): DR vs plain step, MFU, gradient accumulation, teachers, the smoke DAG on CUDA.

Prints one table and writes it, with every measurement behind it, as JSON (``--json``;
rewritten after each part, so a run cut short still leaves the parts it finished).
Made to run in <= 8 minutes on one GPU (``benchmarks/gpu_check.sh``); ``--smoke`` runs the
same code paths with tiny shapes on the CPU in well under a minute (``tests/test_gpu_check.py``).

1. **DR vs plain training step** (``--models``, default ViT-B-16 and MobileCLIP-B, random
   init; per-GPU batch ``--batch-size`` 256, the s30m runs' 8,192 over 32 GPUs). Each run's
   spec is the paper config's (``configs/paper/datacompdr12m.yaml`` for DR,
   ``configs/paper/datacomp12m.yaml`` for plain: precision ``amp``, AdamW settings, grad
   clipping, gradient checkpointing, distillation settings), resolved by the project's
   config loader with one process, the model, batch and workers replaced. What runs is the
   trainer's: ``train.build_dataset`` (``DRSamples`` -- DataComp + DataCompDR tars
   merge-joined, uid/sha256 checked, npz decoded, ``param_aug`` replayed -- or
   ``PlainCLIPSamples``), a DataLoader built as the trainer builds it (``workers``,
   persistent, pinned on CUDA, prefetch 4), ``train.weight_decay_groups`` + AdamW,
   ``train.build_loss`` (``DRClipLoss`` / ``ClipLoss``), ``train.autocast_for`` (fp16
   autocast for ``amp`` on CUDA, bf16 for ``amp_bf16``; bf16 on the CPU) with
   ``torch.amp.GradScaler`` for ``amp`` on CUDA, and the trainer's step body
   (``train._forward``, the finite-loss check, clip, step, logit-scale clamp). No lr
   schedule (it costs nothing). Data: synthetic web-size JPEGs written by the script with
   the project's writers (``shards.datacomp_record`` / ``shards.dr_record``,
   ``atomic_tar_writer``): images from ``dr_pipeline_cpu.natural_image`` (short side
   256-1024 px, photo-like, q90), ``num_samples`` ``param_aug`` entries per image drawn by
   ``reinforce.draw_param_aug`` with DataCompDR-12M's augmentation config, and per-member
   L2-normalised random teacher embeddings of the config's width (2 x 768).

   Timing: every step is synchronised (the trainer's finite-loss check already syncs;
   ``torch.cuda.synchronize`` after the step makes it exact). Warm-up steps run until the
   loader's initial backlog (up to workers x prefetch batches) is gone -- the first step
   that waits for data after ``--warmup-steps`` -- or ``--max-warmup-steps`` (auto:
   enough to drain a full backlog when the loader gives at most half the step's rate);
   then ``--steps`` timed steps. Reported per model and data: samples/s, the data
   loader's share of step time (time blocked in ``next(loader)`` / step wall time), the
   same step replayed ``--compute-steps`` times on one device-resident batch (compute
   only: what the GPU alone would give), the loader alone (the same iterator, ``--steps``
   batches after its backlog: what the workers produce), and DR/plain step time per
   sample (target <= 1.05x). When the loader is nearly as fast as the step, a backlog
   left after ``--max-warmup-steps`` can flatter the samples/s; the loader-only and
   compute-only figures bound it.

2. **MFU** of the first model's step (ViT-B-16): model FLOPs per sample x samples/s /
   dense peak. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one
   forward + loss + backward of the very step (``train._forward`` on 4 rows of a real
   batch), with gradient checkpointing off so recomputation is not counted (model FLOPs,
   not hardware FLOPs) and SDPA on its math backend so attention is counted on any device.
   Peak: ``--peak-tflops``, else the datasheet dense bf16/fp16 tensor peak of the GPU by
   name (``PEAK_TFLOPS``; H100 SXM and H200 989, A100 312), else -- CPU, unknown GPU --
   a measured matmul rate, labelled as such. Target >= 40 %, for the DR and plain step
   through the data pipeline; the compute-only MFU says what is lost to the loader.

3. **Gradient accumulation** (``accum_freq``) at the paper's shapes: the first model's DR step
   (ViT-B-16; the DR run's spec as in part 1) through ``train.train_step`` on one batch of the
   DR loader already on the device, in three arms: ``--batch-size`` rows in one pass (256: the
   recipes' per-GPU batch), ``--accum-freq`` x that many rows in ``--accum-freq`` micro-batches
   of ``--batch-size`` (1,024 rows in 4 x 256: what 8 GPUs run for the recipes' global batch,
   ``configs/paper/s30m-8gpu.yaml``), and those rows in one pass (what 8 GPUs need without
   accumulation). Each arm builds its own model and optimizer, takes 2 warm-up steps, then
   ``--compute-steps`` timed steps (synchronised). Reported: samples/s of each arm, the time
   per seen sample of the accumulated step over each of the others, the FLOPs per seen sample
   of each step as the trainer counts them (``flops.count_flops`` over ``train.train_step``:
   with checkpointing on, recomputation included), and on CUDA the peak memory of each arm's
   timed steps (``torch.cuda.max_memory_allocated``: weights, optimizer state, activations).
   An arm that runs out of memory is reported as such; the others stand.
   ``benchmarks/accumulation.py`` prints the CPU counterpart and the activation memory the
   micro-batches save at these shapes, counted on the meta device.

4. **Teacher throughput** for reinforcement: two ``--teacher-model`` (ViT-L-14, random
   init via ``TeacherEnsemble(..., [None, None])``), bf16 autocast on CUDA
   (``reinforce.autocast_dtype``), DataLoader workers (``reinforce.resolve_workers``), the
   real ``reinforce.Reinforcer.reinforce_shard`` on a shard made by
   ``reinforce_teacher_share.make_shard`` (toy scenes at ``--teacher-image-side`` px), for
   each of ``--views`` (30 = DataCompDR-12M, 10 = DataCompDR-1B). As in
   ``reinforce_teacher_share.py`` the captioner is the toy world's oracle, not CoCa: the
   synthetic-caption cost is not included. Reported: images/s per GPU (whole reinforce job
   wall time, worker start-up included), the teacher-forward share of it (target >= 90 %),
   and GPU-hours for 12.8M images x 30 views and 1.28B images x 10 views at those rates.

5. **The smoke toy DAG on CUDA**: ``snakemake`` with ``configs/toy-smoke.yaml`` plus an
   overlay written to a temporary file (``results_dir`` in a temporary directory,
   ``gpus_per_node: 1`` for every run and teacher, ``evaluation.device: auto``), first
   validated by the project's config loader. On CUDA it runs end to end (``--dag-cores``,
   all CPUs; ``--dag-timeout``) and the outputs are checked: snakemake exits 0, the
   report tables (``report/results.csv``, ``results.md``) are written and name every run,
   and every manifest that records a device (train jobs, teachers, reinforced shards)
   names ``cuda``. Elsewhere (``--dag auto`` off CUDA, and ``--smoke``) only
   ``snakemake -n -p`` on the same overlay: the plan must contain jobs, the evaluation
   jobs with ``--device auto`` and the train specs with ``gpus_per_node`` 1 (the full
   smoke DAG on the CPU is ``tests/test_dag.py``'s).

``--smoke``: toy-student and toy-teacher students at batch 8 (gradient checkpointing off,
which costs a 3M-parameter model a second a step on 2 cores), 2 workers, 3 timed steps, 16
images in 2 shards with 3 augmentations; toy-teacher teachers with ``configs/reinforce/
toy.json`` on 4 images x 2 and 1 views; accumulation on toy-student (8 rows, 4 x 8, 32); the DAG as a
dry run; peak measured. About 35 s
of CPU time (imports included). Its figures exercise the code; they measure nothing of interest.

Run (exits 0 whatever the figures; 1 if a part failed, its error in the JSON):

    benchmarks/gpu_check.sh [options]                        # -> $OUT or results/gpu_check/
    .venv/bin/python benchmarks/gpu_check.py [--smoke] [--json PATH] [--parts train,mfu,accum,teachers,dag]
        [--device auto] [--models ViT-B-16,MobileCLIP-B] [--batch-size 256] [--workers auto]
        [--steps 30] [--compute-steps 10] [--warmup-steps 5] [--max-warmup-steps auto]
        [--precision config|amp|amp_bf16|fp32] [--grad-checkpointing config|on|off]
        [--images 1024] [--shards 16] [--num-augs 30] [--peak-tflops X] [--accum-freq 4]
        [--teacher-model ViT-L-14] [--teacher-images 512] [--teacher-image-side 512] [--views 30,10]
        [--teacher-batch-size 256] [--teacher-workers auto] [--dag auto|run|dry-run|skip]
        [--dag-cores N] [--dag-timeout 300] [--keep-data DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import gc
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "mobileclip_repro/gpu-check/1"
PARTS = ("train", "mfu", "accum", "teachers", "dag")
TARGET_DR_OVER_PLAIN = 1.05
TARGET_MFU = 0.40
TARGET_TEACHER_SHARE = 0.90
PREFETCH_FACTOR = 4  # the trainer's DataLoader prefetch_factor
NUM_SYN = 5
FLOP_ROWS = 4
# (name, images, views per image): what reinforcing the two DataCompDR sets costs.
DATASETS = (("datacompdr12m", 12_800_000, 30), ("datacompdr1b", 1_280_000_000, 10))

# Dense (no sparsity) bf16 = fp16 tensor-core peaks from the datasheets, TFLOP/s; the first
# name that is a substring of torch.cuda.get_device_name() wins, so variants come first.
PEAK_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),   # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

SMOKE = dict(models="toy-student,toy-teacher", batch_size=8, workers="2", steps=3, compute_steps=2,
             warmup_steps=2, max_warmup_steps="3", images=16, shards=2, num_augs=3, teacher_model="toy-teacher",
             teacher_images=4, teacher_image_side=128, views="2,1", teacher_batch_size=16, teacher_workers="0",
             grad_checkpointing="off")  # checkpointing costs a 3M-parameter model ~1 s a step on 2 cores
FULL = dict(models="ViT-B-16,MobileCLIP-B", batch_size=256, workers="auto", steps=30, compute_steps=10,
            warmup_steps=5, max_warmup_steps="auto", images=1024, shards=16, num_augs=30, teacher_model="ViT-L-14",
            teacher_images=512, teacher_image_side=512, views="30,10", teacher_batch_size=256, teacher_workers="auto",
            grad_checkpointing="config")


def peak_tflops_for(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU by its CUDA name, None when not in PEAK_TFLOPS."""
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


# -- data ------------------------------------------------------------------------------------

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
    if parts & {"train", "mfu", "accum"}:
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


# -- part 1 and 2: the training step ----------------------------------------------------------

def run_spec(data: str, model: str, args, device, data_info: dict, results_dir: Path, **overrides) -> dict:
    """A paper run's spec (DR: datacompdr12m, plain: datacomp12m) through the project's config loader;
    ``overrides``: run keys set last (accumulation: global_batch_size, seen_samples, accum_freq)."""
    import yaml

    from mobileclip_repro import config as config_lib

    path = REPO / "configs" / "paper" / {"dr": "datacompdr12m.yaml", "online": "datacompdr12m-online.yaml",
                                          "plain": "datacomp12m.yaml"}[data]
    raw = yaml.safe_load(path.read_text())
    (name, run), = raw["runs"].items()
    run.update(model=model, nodes=1, gpus_per_node=1 if device.type == "cuda" else 0,
               global_batch_size=args.batch_size, seen_samples=args.batch_size, num_checkpoints=1,
               workers=args.workers, warmup_steps=0)  # one step long (the config refuses longer warm-ups)
    if args.precision != "config":
        run["precision"] = args.precision
    if args.grad_checkpointing != "config":
        run["grad_checkpointing"] = args.grad_checkpointing == "on"
    run.update(overrides)
    raw["results_dir"] = str(results_dir)
    raw["data"]["datacomp_dir"] = str(data_info["datacomp_dir"])
    raw["data"]["dr_dir"] = str(data_info["dr_dir"])
    if data == "dr":
        raw["reinforcement"]["config"] = str(data_info["reinforce_config"])
    if data == "online":
        raw["reinforcement"]["config"] = str(data_info["online_reinforce_config"])
        import open_clip

        from mobileclip_repro.teachers import register_project_models

        register_project_models()  # toy-teacher
        run["distill"]["teacher_dimension"] = [int(open_clip.get_model_config(args.teacher_model)["embed_dim"])] * 2
    return config_lib.resolve_run(config_lib.load_config(raw), name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(spec: dict, args, device, count_flops: bool) -> dict:
    """samples/s through the trainer's data pipeline and step, compute-only samples/s, FLOPs per sample."""
    import torch

    from mobileclip_repro import devices, models
    from mobileclip_repro.train import train
    from mobileclip_repro.train.samples import SkipCounter

    torch.manual_seed(spec["seed"])
    cuda = device.type == "cuda"
    built = time.perf_counter()
    model, train_transform, _ = models.create_model_and_transforms(spec["model"], device=str(device),
                                                                   output_dict=True)
    model.set_grad_checkpointing(spec["grad_checkpointing"])
    optimizer = torch.optim.AdamW(train.weight_decay_groups(model, spec["weight_decay"]), lr=spec["lr"],
                                  betas=(spec["beta1"], spec["beta2"]), eps=spec["eps"])
    scaler = torch.amp.GradScaler("cuda") if spec["precision"] == "amp" and cuda else None
    autocast = train.autocast_for(spec["precision"], device)
    loss_fn = train.build_loss(spec, 0, 1)
    tokenizer = models.get_tokenizer(spec["model"])
    counter = SkipCounter()
    dataset = train.build_dataset(spec, model, train_transform, tokenizer, counter, stream_seed=spec["seed"])
    workers = spec["workers"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec["per_gpu_batch_size"], num_workers=workers,
                                         persistent_workers=workers > 0, pin_memory=cuda,
                                         prefetch_factor=PREFETCH_FACTOR if workers > 0 else None)
    built = time.perf_counter() - built

    teachers = None
    if train.online_distillation(spec):  # the run's teachers, random init: their cost, not their weights
        from mobileclip_repro.teachers import TeacherEnsemble

        ensemble = TeacherEnsemble([args.teacher_model] * 2, [None, None], device=device,
                                   autocast_dtype=devices.autocast_dtype("auto", device),
                                   batch_size=spec["per_gpu_batch_size"])
        teachers = train.OnlineTeachers(spec, device, spec["per_gpu_batch_size"], ensemble=ensemble)

    def step(batch) -> None:  # the trainer's step (train.train_step), without the lr schedule
        train.train_step(model, model, optimizer, scaler, autocast, loss_fn, batch, spec, 0, teachers)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    batch_size = spec["per_gpu_batch_size"]
    max_warmup = args.max_warmup_steps
    if max_warmup is None:  # drains a full prefetch backlog when the loader gives at most half the step's rate
        max_warmup = args.warmup_steps + 2 * max(workers, 1) * PREFETCH_FACTOR
    batches = iter(loader)
    warmup = 0
    timed = {"steps": 0, "seconds": 0.0, "data_seconds": 0.0}
    batch = None
    model.train()
    while timed["steps"] < args.steps:
        _sync(device)
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        batch = [t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch]
        step(batch)
        _sync(device)
        t2 = time.perf_counter()
        if warmup < max(args.warmup_steps, 1) or (warmup < max_warmup and timed["steps"] == 0
                                                  and not _waited(t1 - t0, t2 - t0)):
            warmup += 1  # before the steady state: one-off costs, or the workers' initial backlog
            continue
        timed["steps"] += 1
        timed["seconds"] += t2 - t0
        timed["data_seconds"] += t1 - t0
    # Loader only: the same iterator without the step. Its backlog (at most workers x prefetch
    # batches) is taken first, up to the first batch that had to be waited for, so what is
    # timed is what the workers produce.
    for _ in range(max(workers, 1) * PREFETCH_FACTOR):
        start = time.perf_counter()
        next(batches)
        if _waited(time.perf_counter() - start, 0.0):
            break
    start = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    loader_seconds = time.perf_counter() - start
    skipped = counter.totals()
    del batches, loader  # stops the workers
    # Compute only: the same step on one batch already on the device.
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.compute_steps):
        step(batch)
    _sync(device)
    compute_seconds = time.perf_counter() - start
    result = {
        "model": spec["model"], "data": ("online" if teachers else "dr") if spec["dr"] else "plain",
        "batch_size": batch_size,
        "samples_per_second": timed["steps"] * batch_size / timed["seconds"],
        "step_seconds": timed["seconds"] / timed["steps"],
        "data_wait_seconds_per_step": timed["data_seconds"] / timed["steps"],
        "data_loader_share": timed["data_seconds"] / timed["seconds"],
        "compute_only_samples_per_second": args.compute_steps * batch_size / compute_seconds,
        "compute_only_step_seconds": compute_seconds / args.compute_steps,
        "loader_only_samples_per_second": args.steps * batch_size / loader_seconds,
        "warmup_steps": warmup, "timed_steps": timed["steps"], "compute_steps": args.compute_steps,
        "build_seconds": built, "skipped_samples": skipped, "grad_scaler": scaler is not None,
    }
    if cuda:
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if count_flops and teachers is None:
        result["flops_per_sample"] = count_step_flops(model, loss_fn, batch, spec)
    del model, optimizer, batch, teachers
    _free(device)
    return result


def _waited(data_seconds: float, step_seconds: float) -> bool:
    """Did this step block on the loader (its prefetch queue was empty)?"""
    return data_seconds > max(0.002, 0.05 * step_seconds)


def count_step_flops(model, loss_fn, batch, spec: dict) -> float:
    """Model FLOPs per sample of one forward + loss + backward of the trainer's step (FlopCounterMode)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from mobileclip_repro.train import train

    rows = min(FLOP_ROWS, len(batch[0]))
    small = [t[:rows] for t in batch]
    model.set_grad_checkpointing(False)  # recomputation is hardware FLOPs, not model FLOPs
    model.zero_grad(set_to_none=True)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            losses = train._forward(model, model, loss_fn, small, spec)
            sum(losses.values()).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(spec["grad_checkpointing"])
    return counter.get_total_flops() / rows


def measured_peak_tflops(device) -> tuple[float, str]:
    """A square matmul's rate on this device: the peak to use when no datasheet figure is known."""
    import torch

    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while reps < 10 or time.perf_counter() - start < 0.3:
        a @ b
        reps += 1
        if cuda and reps % 10 == 0:
            _sync(device)
    _sync(device)
    seconds = time.perf_counter() - start
    return 2 * n**3 * reps / seconds / 1e12, f"measured: {n}x{n} {str(dtype).replace('torch.', '')} matmul"


def part_train(args, device, data_info: dict, tmp: Path, parts: set[str]) -> dict:
    """Both data kinds for each model; a model that fails is reported under ``errors``, the others stand."""
    runs: dict = {}
    errors: dict = {}
    spec = None
    for model in args.models:
        try:
            figures = {}
            for data in ("plain", "dr", "online"):
                spec = run_spec(data, model, args, device, data_info, tmp / "train_results")
                result = measure_training(spec, args, device, count_flops="mfu" in parts and model == args.models[0])
                if result["skipped_samples"]:
                    raise RuntimeError(f"{model} {data}: the generated data had skipped samples "
                                       f"{result['skipped_samples']}")
                figures[data] = result
                print(f"  {model} {data}: {result['samples_per_second']:.1f} samples/s, data loader "
                      f"{100 * result['data_loader_share']:.1f}% of step time, compute only "
                      f"{result['compute_only_samples_per_second']:.1f} samples/s, loader only "
                      f"{result['loader_only_samples_per_second']:.1f} samples/s "
                      f"({result['warmup_steps']} warm-up + {result['timed_steps']} timed steps)", flush=True)
        except Exception:  # noqa: BLE001 - e.g. an architecture this image's timm lacks: the other model stands
            errors[model] = traceback.format_exc()
            print(errors[model], file=sys.stderr, flush=True)
            _free(device)
            continue
        figures["dr_over_plain"] = figures["plain"]["samples_per_second"] / figures["dr"]["samples_per_second"]
        figures["dr_over_plain_compute_only"] = (figures["plain"]["compute_only_samples_per_second"]
                                                 / figures["dr"]["compute_only_samples_per_second"])
        # online distillation: the two teachers in every step, against the stored reinforcement
        figures["online_over_dr"] = figures["dr"]["samples_per_second"] / figures["online"]["samples_per_second"]
        figures["online_over_dr_compute_only"] = (figures["dr"]["compute_only_samples_per_second"]
                                                  / figures["online"]["compute_only_samples_per_second"])
        runs[model] = figures
    if not runs:
        raise RuntimeError("no model measured:\n" + "\n".join(errors.values()))
    settings = {"batch_size": args.batch_size, "precision": spec["precision"],
                "autocast": _autocast_name(spec["precision"], device), "grad_checkpointing": spec["grad_checkpointing"],
                "workers": spec["workers"], "prefetch_factor": PREFETCH_FACTOR, "steps": args.steps,
                "compute_steps": args.compute_steps, "warmup_steps": args.warmup_steps,
                "max_warmup_steps": args.max_warmup_steps, "data": data_info.get("train"),
                "specs_from": ["configs/paper/datacompdr12m.yaml", "configs/paper/datacomp12m.yaml"]}
    return {"settings": settings, "runs": runs, "errors": errors}


# -- part 3: gradient accumulation --------------------------------------------------------------

def accumulation_arms(args) -> list[tuple[str, int, int]]:
    """(name, accum_freq, rows per step): the per-GPU batch in one pass, accum_freq times it in
    micro-batches of the per-GPU batch, and those rows in one pass."""
    b, k = args.batch_size, args.accum_freq
    return [(f"1x{b}", 1, b), (f"{k}x{b}", k, k * b), (f"1x{k * b}", 1, k * b)]


def measure_accumulation_arm(spec: dict, batch: list, args, device) -> dict:
    """The trainer's step (``train.train_step``) on one device-resident batch: samples/s, FLOPs per
    sample as the trainer counts them, and on CUDA the peak memory of the timed steps."""
    import torch

    from mobileclip_repro import flops, models
    from mobileclip_repro.train import train

    cuda = device.type == "cuda"
    rows = spec["per_gpu_batch_size"]
    batch = [t[:rows] for t in batch]
    torch.manual_seed(spec["seed"])
    model = models.create_model_and_transforms(spec["model"], device=str(device), output_dict=True)[0]
    model.set_grad_checkpointing(spec["grad_checkpointing"])
    model.train()
    optimizer = torch.optim.AdamW(train.weight_decay_groups(model, spec["weight_decay"]), lr=spec["lr"],
                                  betas=(spec["beta1"], spec["beta2"]), eps=spec["eps"])
    scaler = torch.amp.GradScaler("cuda") if spec["precision"] == "amp" and cuda else None
    autocast = train.autocast_for(spec["precision"], device)
    loss_fn = train.build_loss(spec, 0, 1)

    def step() -> None:
        train.train_step(model, model, optimizer, scaler, autocast, loss_fn, batch, spec, 0)

    try:
        for _ in range(2):  # warm-up: AdamW's state, the allocator's pools, kernels picked
            step()
        _sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.compute_steps):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
        result = {"accum_freq": spec["accum_freq"], "rows_per_step": rows,
                  "micro_batch": spec["per_gpu_micro_batch_size"], "steps": args.compute_steps,
                  "step_seconds": seconds / args.compute_steps,
                  "samples_per_second": args.compute_steps * rows / seconds,
                  "grad_checkpointing": spec["grad_checkpointing"], "grad_scaler": scaler is not None}
        if cuda:
            result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["flops_per_sample"] = flops.count_flops(step)[1] / rows
        return result
    except torch.cuda.OutOfMemoryError as error:  # this arm does not fit: the others stand
        return {"accum_freq": spec["accum_freq"], "rows_per_step": rows, "out_of_memory": str(error).splitlines()[0]}
    finally:
        del model, optimizer, batch
        _free(device)


def part_accum(args, device, data_info: dict, tmp: Path) -> dict:
    """The first model's DR step with and without accumulation (``accumulation_arms``), on one batch
    of the DR loader (the trainer's dataset over the generated shards) moved to the device."""
    import torch

    from mobileclip_repro import models
    from mobileclip_repro.train import train
    from mobileclip_repro.train.samples import SkipCounter

    model_name = args.models[0]
    arms = accumulation_arms(args)
    specs = {name: run_spec("dr", model_name, args, device, data_info, tmp / "accum_results",
                            global_batch_size=rows, seen_samples=rows, accum_freq=accum_freq)
             for name, accum_freq, rows in arms}
    rows = max(r for _, _, r in arms)
    spec = specs[arms[1][0]]
    model, train_transform, _ = models.create_model_and_transforms(model_name, output_dict=True)  # its transforms
    counter = SkipCounter()
    dataset = train.build_dataset(spec, model, train_transform, models.get_tokenizer(model_name), counter,
                                  stream_seed=spec["seed"])
    # batches of the per-GPU batch, one per worker, so the workers make them side by side (and no
    # more: a batch of 256 x 3 x 224 x 224 floats is 154 MB of /dev/shm); the arms take their rows of them
    count = rows // args.batch_size
    workers = min(spec["workers"], count)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=workers,
                                              prefetch_factor=1 if workers else None))
    pieces = [next(loader) for _ in range(count)]
    batch = [torch.cat(column).to(device) for column in zip(*pieces)]
    del loader, pieces, dataset, model
    if counter.totals():
        raise RuntimeError(f"the generated data had skipped samples {counter.totals()}")
    runs = {}
    for name, _, _ in arms:
        runs[name] = measure_accumulation_arm(specs[name], batch, args, device)
        r = runs[name]
        print(f"  {model_name} DR {name} rows: " + (f"out of memory ({r['out_of_memory']})" if "out_of_memory" in r else
              f"{r['samples_per_second']:.1f} samples/s, {r['flops_per_sample'] / 1e9:.2f} GFLOP/sample"
              + (f", peak {r['max_memory_gib']:.2f} GiB" if "max_memory_gib" in r else "")), flush=True)
    del batch
    small, accumulated, large = (runs[name] for name, _, _ in arms)
    ratios = {}
    for name, other in ((arms[0][0], small), (arms[2][0], large)):
        if "out_of_memory" in other or "out_of_memory" in accumulated:
            continue
        ratios[name] = {"time_per_sample": other["samples_per_second"] / accumulated["samples_per_second"],
                        "flops_per_sample": accumulated["flops_per_sample"] / other["flops_per_sample"]}
        if "max_memory_gib" in other:
            ratios[name]["max_memory"] = accumulated["max_memory_gib"] / other["max_memory_gib"]
    return {"model": model_name, "data": "dr", "accumulated": arms[1][0], "arms": [name for name, _, _ in arms],
            "precision": spec["precision"], "autocast": _autocast_name(spec["precision"], device),
            "timing": "compute only: one batch on the device, synchronised steps after 2 warm-up steps",
            "runs": runs, "accumulated_over": ratios}


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _autocast_name(precision: str, device) -> str:
    import torch

    from mobileclip_repro.train import train

    context = train.autocast_for(precision, device)()
    return str(context.fast_dtype).replace("torch.", "") if isinstance(context, torch.autocast) else "off"


def part_mfu(args, device, train_result: dict) -> dict:
    import torch

    model = args.models[0]
    if model not in train_result["runs"]:
        raise RuntimeError(f"no training figures for {model} (see the train part's errors)")
    runs = train_result["runs"][model]
    if args.peak_tflops is not None:
        peak, source = args.peak_tflops, "--peak-tflops"
    else:
        known = peak_tflops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        if known is not None:
            peak, source = known, f"datasheet dense bf16 peak of {torch.cuda.get_device_name(device)}"
        else:
            peak, source = measured_peak_tflops(device)
    result = {"model": model, "peak_tflops": peak, "peak_source": source,
              "flop_count": "torch.utils.flop_counter.FlopCounterMode, one forward + loss + backward of the "
                            "trainer's step on 4 rows, gradient checkpointing off (model FLOPs), SDPA math backend",
              "flops_per_sample": {}, "mfu": {}, "mfu_compute_only": {}, "achieved_tflops": {}}
    for data in ("dr", "plain"):
        flops = runs[data]["flops_per_sample"]
        result["flops_per_sample"][data] = flops
        result["achieved_tflops"][data] = flops * runs[data]["samples_per_second"] / 1e12
        result["mfu"][data] = result["achieved_tflops"][data] / peak
        result["mfu_compute_only"][data] = flops * runs[data]["compute_only_samples_per_second"] / 1e12 / peak
    return result


# -- part 3: teachers -------------------------------------------------------------------------

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
    _free(device)
    return {"model": args.teacher_model, "members": 2, "init": "random (pretrained=None)",
            "autocast": str(amp).replace("torch.", "") if amp else "off", "workers": workers,
            "batch_size": args.teacher_batch_size, "image_side": args.teacher_image_side,
            "reinforce_config": f"configs/reinforce/{config_name}", "captioner": "world (oracle; CoCa not included)",
            "build_seconds": built, "by_views": by_views, "gpu_hours": gpu_hours}


# -- part 4: the smoke DAG --------------------------------------------------------------------

def _merged(base: dict, overlay: dict) -> dict:
    """Snakemake's merge of a second --configfile into the first: nested mappings updated key by key."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dag_overlay(base: dict, results_dir: Path, precision: str | None) -> dict:
    def run_overlay():
        return {"gpus_per_node": 1, **({"precision": precision} if precision else {})}

    return {"results_dir": str(results_dir),
            "teachers": {name: run_overlay() for name in base.get("teachers", {})},
            "runs": {name: run_overlay() for name in base["runs"]},
            "evaluation": {"device": "auto"}}


def part_dag(args, device, tmp: Path) -> dict:
    import yaml

    from mobileclip_repro import config as config_lib

    mode = args.dag
    if mode == "auto":
        mode = "run" if device.type == "cuda" and not args.smoke else "dry-run"
    base_path = REPO / "configs" / "toy-smoke.yaml"
    base = yaml.safe_load(base_path.read_text())
    results = tmp / "dag_results"
    overlay = dag_overlay(base, results, args.dag_precision)
    overlay_path = tmp / "gpu_overlay.yaml"
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    # What Snakemake will see: the merged config, validated and resolved by the project's loader.
    merged = config_lib.load_config(_merged(base, overlay))
    jobs = [run for section in ("runs", "teachers") for run in merged[section].values()]
    if {run["gpus_per_node"] for run in jobs} != {1} or merged["evaluation"]["device"] != "auto":
        raise RuntimeError("the overlay did not take: gpus_per_node / evaluation.device unchanged")
    command = [sys.executable, "-m", "snakemake", "--cores", str(args.dag_cores or os.cpu_count() or 1),
               "--configfile", str(base_path.relative_to(REPO)), str(overlay_path)]
    if mode == "dry-run":
        command += ["-n", "-p"]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.dag_timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"snakemake did not finish in {args.dag_timeout} s: "
                           f"{(error.stderr or b'')[-2000:]!r}") from None
    seconds = time.perf_counter() - start
    out = result.stdout + result.stderr
    report = {"mode": mode, "command": " ".join(command), "overlay": overlay, "seconds": seconds,
              "returncode": result.returncode}
    if result.returncode != 0:
        raise RuntimeError(f"snakemake exited {result.returncode}:\n{out[-4000:]}")
    total = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
    report["jobs"] = int(total.group(1)) if total else None
    if mode == "dry-run":
        checks = {"jobs planned": bool(report["jobs"]),
                  "evaluate jobs with --device auto": "--device auto" in out,
                  # one process per job is started directly, without a torchrun agent around it
                  "train/teacher jobs with one process each": out.count("-m mobileclip_repro train") >= len(jobs)
                  and "torch.distributed.run" not in out,
                  "run specs with gpus_per_node 1": out.count('"gpus_per_node": 1') >= len(jobs)}
    else:
        checks = check_dag_outputs(results, merged, device.type)
    report["checks"] = checks
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError(f"smoke DAG ({mode}) checks failed: {failed}\n{out[-3000:]}")
    report["ok"] = True
    return report


def check_dag_outputs(results: Path, config: dict, device_type: str) -> dict:
    """The run's outputs, checked without assuming more of the results layout than the report's place.

    Report tables written and non-empty, every run in them, and every manifest that names a
    device (train jobs, teachers, reinforced shards) naming this one.
    """
    checks = {}
    report_dir = results / "report"
    for name in ("results.csv", "results.md"):
        checks[f"report/{name} written"] = (report_dir / name).is_file() and (report_dir / name).stat().st_size > 0
    table = report_dir / "results_long.csv" if (report_dir / "results_long.csv").is_file() else report_dir / "results.csv"
    rows = []
    if table.is_file():
        with open(table, newline="") as stream:
            rows = list(csv.DictReader(stream))
    checks[f"every run in report/{table.name}"] = set(config["runs"]) <= {row.get("run") for row in rows}
    devices = [str(manifest["device"]) for path in sorted(results.rglob("*manifest.json"))
               if isinstance(manifest := _read_json(path), dict) and "device" in manifest]
    checks[f"train/teacher/reinforce manifests name {device_type} (>= {len(config['runs']) + len(config['teachers'])})"] = (
        len(devices) >= len(config["runs"]) + len(config["teachers"])
        and all(name.startswith(device_type) for name in devices))
    return checks


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- the table --------------------------------------------------------------------------------

def table_rows(payload: dict) -> list[dict]:
    rows = []

    def row(part, figure, value, unit, target=None, met=None):
        rows.append({"part": part, "figure": figure, "value": value, "unit": unit, "target": target, "met": met})

    train = payload.get("train")
    if isinstance(train, dict) and "runs" in train:
        for model, runs in train["runs"].items():
            for data in ("plain", "dr", "online"):
                r = runs[data]
                label = {"dr": "DR", "plain": "plain", "online": "online distillation"}[data]
                row("1 train", f"{model} {label}: samples/s (data pipeline + step)", r["samples_per_second"], "samples/s")
                row("1 train", f"{model} {label}: data loader share of step time", r["data_loader_share"], "share")
                row("1 train", f"{model} {label}: samples/s, compute only", r["compute_only_samples_per_second"],
                    "samples/s")
                row("1 train", f"{model} {label}: samples/s, data loader only", r["loader_only_samples_per_second"],
                    "samples/s")
            ratio = runs["dr_over_plain"]
            row("1 train", f"{model}: DR / plain step time per sample", ratio, "x",
                f"<= {TARGET_DR_OVER_PLAIN:.2f}x", ratio <= TARGET_DR_OVER_PLAIN)
            row("1 train", f"{model}: DR / plain, compute only", runs["dr_over_plain_compute_only"], "x")
            row("1 train", f"{model}: online / DR step time per sample", runs["online_over_dr"], "x")
            row("1 train", f"{model}: online / DR, compute only", runs["online_over_dr_compute_only"], "x")
    mfu = payload.get("mfu")
    if isinstance(mfu, dict) and "mfu" in mfu:
        for data in ("dr", "plain"):
            label = "DR" if data == "dr" else "plain"
            row("2 MFU", f"{mfu['model']} {label}: model GFLOPs per sample (fwd+bwd)",
                mfu["flops_per_sample"][data] / 1e9, "GFLOP")
            row("2 MFU", f"{mfu['model']} {label} step: MFU (peak {mfu['peak_tflops']:.3g} TFLOP/s)",
                mfu["mfu"][data], "share", f">= {100 * TARGET_MFU:.0f}%", mfu["mfu"][data] >= TARGET_MFU)
            row("2 MFU", f"{mfu['model']} {label} step: MFU, compute only", mfu["mfu_compute_only"][data], "share")
    accum = payload.get("accum")
    if isinstance(accum, dict) and "runs" in accum:
        model, accumulated = accum["model"], accum["accumulated"]
        for name in accum["arms"]:
            r = accum["runs"][name]
            if "out_of_memory" in r:
                continue
            label = f"{model} DR, {r['rows_per_step']} rows in {r['accum_freq']} x {r['micro_batch']}"
            row("3 accum", f"{label}: samples/s, compute only", r["samples_per_second"], "samples/s")
            row("3 accum", f"{label}: GFLOPs per sample (the trainer's count)", r["flops_per_sample"] / 1e9,
                "GFLOP")
            if "max_memory_gib" in r:
                row("3 accum", f"{label}: peak CUDA memory", r["max_memory_gib"], "GiB")
        for name, ratio in accum["accumulated_over"].items():
            row("3 accum", f"{model} DR: {accumulated} / {name} time per seen sample", ratio["time_per_sample"], "x")
            row("3 accum", f"{model} DR: {accumulated} / {name} FLOPs per seen sample", ratio["flops_per_sample"],
                "x")
            if "max_memory" in ratio:
                row("3 accum", f"{model} DR: {accumulated} / {name} peak CUDA memory", ratio["max_memory"], "x")
    teachers = payload.get("teachers")
    if isinstance(teachers, dict) and "by_views" in teachers:
        for views, r in teachers["by_views"].items():
            row("4 teachers", f"2 x {teachers['model']}, {views} views: images/s per GPU", r["images_per_second"],
                "images/s")
            row("4 teachers", f"2 x {teachers['model']}, {views} views: teacher share of wall time",
                r["teacher_share"], "share", f">= {100 * TARGET_TEACHER_SHARE:.0f}%",
                r["teacher_share"] >= TARGET_TEACHER_SHARE)
        for name, r in teachers["gpu_hours"].items():
            row("4 teachers", f"GPU-hours to reinforce {name} ({r['images'] / 1e6:,.1f}M images x "
                f"{r['views_measured']} views)", r["gpu_hours"], "GPU-h")
    dag = payload.get("dag")
    if isinstance(dag, dict) and dag.get("ok"):
        row("5 DAG", f"smoke toy DAG, {dag['mode']} ({dag['jobs']} jobs, {len(dag['checks'])} checks passed)",
            dag["seconds"], "s")
    return rows


def format_value(value: float, unit: str) -> str:
    if unit == "share":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "GFLOP":
        return f"{value:.2f} GFLOP"
    if unit == "GPU-h":
        return f"{value:,.1f} GPU-h"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "GiB":
        return f"{value:.2f} GiB"
    return f"{value:,.1f} {unit}"


def print_table(payload: dict) -> None:
    rows = payload["table"]
    env = payload["environment"]
    print()
    print(f"gpu_check ({payload['mode']}) on {env['device_name']}, torch {env['torch']}, open_clip "
          f"{env['open_clip']}, {env['cpus']} CPUs, {env['date']}")
    width = max([len(r["figure"]) for r in rows] + [10])
    print(f"{'part':<11} {'figure':<{width}} {'value':>18}  target")
    for r in rows:
        target = "" if r["target"] is None else f"{r['target']}: {'met' if r['met'] else 'NOT met'}"
        print(f"{r['part']:<11} {r['figure']:<{width}} {format_value(r['value'], r['unit']):>18}  {target}")
    for part, error in payload["errors"].items():
        lines = [line for line in error.splitlines() if line.strip()]
        print(f"{part:<11} FAILED: {lines[-1] if lines else '?'}")


# -- main -------------------------------------------------------------------------------------

def environment(device) -> dict:
    import open_clip
    import torch

    cuda = device.type == "cuda"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    try:  # DataLoader workers hand batches over in /dev/shm: 256 x 3 x 224 x 224 float32 is 154 MB a batch
        shm = os.statvfs("/dev/shm")
        shm_free_gib = shm.f_bavail * shm.f_frsize / 2**30
    except OSError:
        shm_free_gib = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor()
            or platform.machine(), "cuda": torch.version.cuda if cuda else None, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "git_commit": commit or None, "dev_shm_free_gib": shm_free_gib}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps (the CPU test)")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "gpu_check" / "gpu_check.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--models", help="training-step models; the first one gets the MFU (default ViT-B-16,MobileCLIP-B)")
    parser.add_argument("--batch-size", type=int, help="per-GPU batch (default 256)")
    parser.add_argument("--workers", help="DataLoader workers of the training step (auto: CPUs - 2)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 30)")
    parser.add_argument("--compute-steps", type=int, help="compute-only steps per run (default 10)")
    parser.add_argument("--warmup-steps", type=int, help="warm-up steps at least (default 5)")
    parser.add_argument("--max-warmup-steps", help="warm-up steps at most (auto: 3 x workers x prefetch + warm-up)")
    parser.add_argument("--precision", default="config", choices=("config", "amp", "amp_bf16", "fp32"),
                        help="config: the paper configs' (amp: fp16 autocast + GradScaler on CUDA)")
    parser.add_argument("--grad-checkpointing", choices=("config", "on", "off"),
                        help="config: the paper configs' (on); --smoke: off")
    parser.add_argument("--images", type=int, help="distinct training images (default 1024)")
    parser.add_argument("--shards", type=int, help="training shards (default 16)")
    parser.add_argument("--num-augs", type=int, help="param_aug entries per DR image (default 30)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak for the MFU (default: by GPU name)")
    parser.add_argument("--accum-freq", type=int, default=4,
                        help="micro-batches of --batch-size rows in the accumulation part's accumulated arm (default 4)")
    parser.add_argument("--teacher-model", help="architecture of both teachers (default ViT-L-14)")
    parser.add_argument("--teacher-images", type=int, help="images in the teacher shard (default 512)")
    parser.add_argument("--teacher-image-side", type=int, help="short side of those JPEGs (default 512)")
    parser.add_argument("--views", help="views per image for the 12M and the 1B estimate (default 30,10)")
    parser.add_argument("--teacher-batch-size", type=int, help="views per teacher forward (default 256)")
    parser.add_argument("--teacher-workers", help="reinforce DataLoader workers (auto: CPUs - 1 on CUDA)")
    parser.add_argument("--dag", default="auto", choices=("auto", "run", "dry-run", "skip"),
                        help="auto: run on CUDA, dry-run elsewhere and with --smoke")
    parser.add_argument("--dag-precision", default=None, choices=("amp", "amp_bf16", "fp32"),
                        help="also set the smoke runs' precision (default: the config's)")
    parser.add_argument("--dag-cores", type=int, default=None, help="snakemake --cores (default: all CPUs)")
    parser.add_argument("--dag-timeout", type=int, default=300, help="seconds before the DAG counts as failed")
    parser.add_argument("--keep-data", type=Path, default=None, help="write the shards and DAG results here and keep them")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.views = [int(v) for v in str(args.views).split(",")]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts takes a subset of {','.join(PARTS)}, got {args.parts!r}")
    if "mfu" in parts and "train" not in parts:
        parser.error("--parts mfu needs train (the MFU uses its samples/s)")
    if args.dag == "skip":
        parts = [p for p in parts if p != "dag"]
    args.parts = parts
    if len(args.views) != len(DATASETS) or min(args.views) < 1:
        parser.error("--views takes two positive counts: for DataCompDR-12M, then for DataCompDR-1B")
    if args.accum_freq < 2:
        parser.error("--accum-freq takes 2 or more micro-batches")
    if not args.models or args.batch_size < FLOP_ROWS or args.steps < 1 or args.compute_steps < 1:
        parser.error(f"need --models, --batch-size >= {FLOP_ROWS}, --steps >= 1 and --compute-steps >= 1")
    if args.images < args.shards or args.shards < 1:
        parser.error("need --shards >= 1 and --images >= --shards")
    cpus = os.cpu_count() or 1
    args.workers = max(1, cpus - 2) if args.workers == "auto" else int(args.workers)
    args.max_warmup_steps = None if args.max_warmup_steps == "auto" else int(args.max_warmup_steps)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # dr_pipeline_cpu, reinforce_teacher_share
    wall = time.perf_counter()
    parts = set(args.parts)
    member_dims = [768, 768]  # DataCompDR's two ViT-L-14 teachers: the paper configs' distill.teacher_dimension
    root = args.keep_data or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    payload: dict = {"schema": SCHEMA, "mode": "smoke" if args.smoke else "full", "parts": args.parts,
                     "errors": {}, "finished": False}
    try:
        # Imported once here, so the forked data writers inherit them (open_clip takes seconds to import).
        import torch

        import dr_pipeline_cpu  # noqa: F401
        import reinforce_teacher_share  # noqa: F401
        from mobileclip_repro import devices  # noqa: F401
        from mobileclip_repro.reinforce import reinforce  # noqa: F401
        from mobileclip_repro.train import train  # noqa: F401

        # Data first, in forked processes, before anything touches CUDA.
        print(f"making data in {root} ...", flush=True)
        data_info = make_data(root, args, parts, member_dims)
        device = devices.resolve_device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
            torch.cuda.set_device(device)
        else:  # the DataLoader workers take the other cores; torch's threads crawl on oversubscribed ones
            torch.set_num_threads(1)
        payload["environment"] = environment(device)
        payload["data"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data_info.items()}
        print(f"data made in {data_info['seconds']:.1f} s; device {device} ({payload['environment']['device_name']})",
              flush=True)

        def attempt(part: str, fn):
            if part not in parts:
                return None
            print(f"[{part}]", flush=True)
            started = time.perf_counter()
            try:
                payload[part] = fn()
                payload[part]["part_seconds"] = time.perf_counter() - started
                for name, error in payload[part].get("errors", {}).items():
                    payload["errors"][f"{part} {name}"] = error
            except Exception:  # noqa: BLE001 - one failed part must not lose the others' figures
                payload["errors"][part] = traceback.format_exc()
                print(payload["errors"][part], file=sys.stderr, flush=True)
            payload["table"] = table_rows(payload)
            payload["seconds"] = time.perf_counter() - wall
            write_json(args.json, payload)
            return payload.get(part)

        train_result = attempt("train", lambda: part_train(args, device, data_info, root, parts))
        if "mfu" in parts and train_result is None:
            payload["errors"]["mfu"] = "no training figures (the train part failed)"
        elif train_result is not None:
            attempt("mfu", lambda: part_mfu(args, device, train_result))
        attempt("accum", lambda: part_accum(args, device, data_info, root))
        attempt("teachers", lambda: part_teachers(args, device, data_info, root))
        attempt("dag", lambda: part_dag(args, device, root))
        payload["finished"] = True
        payload["table"] = table_rows(payload)
        payload["seconds"] = time.perf_counter() - wall
        write_json(args.json, payload)
        print_table(payload)
        print(f"\ntotal {payload['seconds']:.1f} s; JSON: {args.json}")
    finally:
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if payload["errors"] else 0


def write_json(path: Path, payload: dict) -> None:
    from mobileclip_repro import shards

    shards.write_json_atomic(path, payload)


if __name__ == "__main__":
    sys.exit(main())
