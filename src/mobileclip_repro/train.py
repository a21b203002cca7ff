"""The trainer: one run, plain CLIP or DR, as Apple's run scripts configure open_clip_train.

Reads top to bottom: distributed setup, data, model, optimizer + schedule, loss, then the
loop of pseudo-epochs (``num_checkpoints`` of ``samples_per_checkpoint`` each, shards
drawn with replacement), checkpointing in open_clip's format after each with its
seen-sample count. ``resume: latest`` restarts from the newest checkpoint, so a requeued
or preempted job continues where it stopped.

Launch under torchrun (the Snakemake rule does) for one or many processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from open_clip.loss import ClipLoss
from open_clip_train.distributed import init_distributed_device_so
from open_clip_train.scheduler import const_lr, cosine_lr

from mobileclip_repro import config as config_lib
from mobileclip_repro import models, shards
from mobileclip_repro.samples import (SKIP_REASONS, DRSamples, PlainCLIPSamples, SkipCounter, counts_by_reason,
                                      paired_shards)

log = logging.getLogger("mobileclip_repro.train")
CHECKPOINT_PATTERN = re.compile(r"epoch_(\d+)\.pt$")
LOG_EVERY_STEPS = 20


def checkpoint_path(out_dir: Path, epoch: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"epoch_{epoch}.pt"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in (Path(out_dir) / "checkpoints").glob("epoch_*.pt")
             if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train's rule: no decay on gains, biases and logit_scale (any <2-D tensor)."""
    def exempt(name: str, param: torch.Tensor) -> bool:
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": weight_decay},
    ]


def build_loss(spec: dict, rank: int, world_size: int) -> torch.nn.Module:
    common = dict(local_loss=spec["local_loss"], gather_with_grad=spec["gather_with_grad"],
                  cache_labels=True, rank=rank, world_size=world_size)
    if not spec["dr"]:
        return ClipLoss(**common)
    from mobileclip_repro.loss import DRClipLoss

    distill = spec["distill"]
    return DRClipLoss(loss_weights=distill["loss_weights"], teacher_dimension=distill["teacher_dimension"],
                      dist_logit_scale=distill["logit_scale"],
                      average_after_softmax=distill["average_after_softmax"], **common)


def build_dataset(spec: dict, model, train_transform, tokenizer, counter: SkipCounter, stream_seed: int):
    shard_paths = shards.list_shards(spec["datacomp_dir"])
    if not shard_paths:
        raise FileNotFoundError(f"no .tar shards in {spec['datacomp_dir']}")
    if spec["dr"]:
        from mobileclip_repro.replay import ReplayTransform

        # The student replays the stored augmentation at its own size, interpolation and normalization.
        replay = ReplayTransform.from_open_clip(model)
        pairs = paired_shards(shard_paths, spec["datacomp_dir"], spec["dr_dir"])
        return DRSamples(pairs, replay, tokenizer, stream_seed, spec["dataset_resampled"], counter,
                         embedding_dim=sum(spec["distill"]["teacher_dimension"]))
    return PlainCLIPSamples(shard_paths, train_transform, tokenizer, stream_seed, spec["dataset_resampled"], counter)


def skipped_over_ranks(counter: SkipCounter, device: torch.device, world_size: int) -> torch.Tensor:
    """This run's skip counts by reason, summed over every rank's workers (a collective)."""
    counts = counter.as_tensor().to(device)
    if world_size > 1:
        torch.distributed.all_reduce(counts)
    return counts.cpu()


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "amp_bf16" or device.type == "cpu" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def train(spec: dict, out_dir: Path, device_name: str | None = None, export_path: Path | None = None) -> dict:
    out_dir = Path(out_dir)
    dist = init_distributed_device_so(device=device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    device, rank, world_size = torch.device(dist["device"]), dist["global_rank"], dist["world_size"]
    is_master = rank == 0
    if world_size != spec["world_size"] and spec["world_size"] > 1:
        log.warning("run asks for %d processes, launched with %d; the global batch stays %d",
                    spec["world_size"], world_size, spec["global_batch_size"])
    per_process_batch = spec["global_batch_size"] // world_size
    torch.manual_seed(spec["seed"] + rank)
    if device.type == "cpu" and os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    # --- model
    model, train_transform, _ = models.create_model_and_transforms(spec["model"], device=str(device), output_dict=True)
    if spec["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    training_model = model
    if world_size > 1:
        training_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            static_graph=spec["ddp_static_graph"])

    # --- optimizer, schedule, loss
    optimizer = torch.optim.AdamW(weight_decay_groups(model, spec["weight_decay"]), lr=spec["lr"],
                                  betas=(spec["beta1"], spec["beta2"]), eps=spec["eps"])
    total_steps = spec["total_steps"]
    schedule = cosine_lr if spec["schedule"] == "cosine" else const_lr
    adjust_lr = schedule(optimizer, spec["lr"], spec["warmup_steps"], total_steps)
    scaler = torch.amp.GradScaler("cuda") if spec["precision"] == "amp" and device.type == "cuda" else None
    autocast = autocast_for(spec["precision"], device)
    loss_fn = build_loss(spec, rank, world_size)

    # --- resume
    start_epoch, step, history = 0, 0, {"epochs": [], "attempts": 0}
    resume_from = latest_checkpoint(out_dir) if spec["resume"] == "latest" else None
    if resume_from is not None:
        checkpoint = torch.load(resume_from, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, step = checkpoint["epoch"], checkpoint["step"]
        history = checkpoint.get("history", history)
        if is_master:
            log.info("resumed from %s (epoch %d, step %d, %s seen samples)", resume_from, start_epoch, step,
                     f"{checkpoint['seen_samples']:,}")

    # --- data: a resumed job draws a fresh stream rather than replaying the first epochs' samples
    tokenizer = models.get_tokenizer(spec["model"])
    counter = SkipCounter()
    dataset = build_dataset(spec, model, train_transform, tokenizer, counter, stream_seed=spec["seed"] + start_epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_process_batch, num_workers=spec["workers"],
                                         persistent_workers=spec["workers"] > 0, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if spec["workers"] > 0 else None)

    # --- loop over pseudo-epochs
    batches = iter(loader)
    # The per-epoch history travels in the checkpoints, so a requeued job's manifest still
    # covers the epochs (and skipped samples) of the attempts before it.
    manifest = {"run": spec["name"], "world_size": world_size, "device": str(device),
                "attempts": history["attempts"] + 1, "epochs": list(history["epochs"])}
    skipped_before = torch.zeros(len(SKIP_REASONS), dtype=torch.int64)
    started = time.time()
    for epoch in range(start_epoch, spec["num_checkpoints"]):
        model.train()
        epoch_start, window_start, window_samples = time.time(), time.time(), 0
        for _ in range(spec["steps_per_checkpoint"]):
            adjust_lr(step)
            batch = [t.to(device, non_blocking=True) for t in next(batches)]
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                losses = _forward(training_model, model, loss_fn, batch, spec["dr"])
                total = sum(losses.values())
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at step {step}: {({k: v.item() for k, v in losses.items()})}")
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
            else:
                total.backward()
            if spec["grad_clip_norm"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip_norm"])
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with torch.no_grad():  # open_clip clamps the learnable temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            window_samples += spec["global_batch_size"]
            if is_master and (step % LOG_EVERY_STEPS == 0 or step == total_steps):
                rate = window_samples / max(time.time() - window_start, 1e-9)
                log.info("epoch %d step %d/%d seen %s | %s | lr %.2e | scale %.1f | %.0f samples/s | skipped here %s",
                         epoch + 1, step, total_steps, f"{step * spec['global_batch_size']:,}",
                         " ".join(f"{k} {v.item():.4f}" for k, v in losses.items()), optimizer.param_groups[0]["lr"],
                         model.logit_scale.exp().item(), rate, counter.totals() or "none")
                window_start, window_samples = time.time(), 0
        epoch_seconds = time.time() - epoch_start
        seen = step * spec["global_batch_size"]
        skipped_total = skipped_over_ranks(counter, device, world_size)
        skipped_in_epoch = counts_by_reason(skipped_total - skipped_before)
        skipped_before = skipped_total
        if is_master:
            manifest["epochs"].append({"epoch": epoch + 1, "step": step, "seen_samples": seen,
                                       "seconds": round(epoch_seconds, 2),
                                       "samples_per_second": round(spec["samples_per_checkpoint"] / epoch_seconds, 1),
                                       "skipped_samples": skipped_in_epoch})
            _save_checkpoint(out_dir, epoch + 1, spec, model, optimizer, scaler, step, seen,
                             {"epochs": manifest["epochs"], "attempts": manifest["attempts"]})
            log.info("checkpoint epoch_%d.pt: %s seen samples, %.1f s, %.0f samples/s, skipped (all ranks) %s",
                     epoch + 1, f"{seen:,}", epoch_seconds, spec["samples_per_checkpoint"] / epoch_seconds,
                     {k: v for k, v in skipped_in_epoch.items() if v} or "none")

    if is_master:
        # Per-epoch counts include what the loader read ahead for the next epoch; the run
        # total is their sum over every attempt, so nothing is counted twice or lost.
        manifest["skipped_samples"] = counts_by_reason(
            [sum(e.get("skipped_samples", {}).get(r, 0) for e in manifest["epochs"]) for r in SKIP_REASONS])
        manifest["train_seconds"] = round(time.time() - started, 2)
        shards.write_json_atomic(out_dir / "manifest.json", manifest)
        log.info("skipped samples over the run (all ranks, all attempts): %s",
                 {k: v for k, v in manifest["skipped_samples"].items() if v} or "none")
        if export_path is not None:
            with shards.atomic_output(export_path) as partial:
                torch.save({"state_dict": model.state_dict(), "model_name": spec["model"], "run": spec}, partial)
    if world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return manifest


def _forward(training_model, model, loss_fn, batch, dr: bool) -> dict:
    if not dr:
        images, texts = batch
        out = training_model(images, texts)
        return {"contrastive_loss": loss_fn(out["image_features"], out["text_features"], out["logit_scale"])}
    images, texts, image_emb, text_emb, syn_texts, syn_emb = batch
    # One text-encoder pass over real + synthetic captions, as the reference does.
    out = training_model(images, torch.cat([texts, syn_texts]))
    text_features, syn_features = out["text_features"].chunk(2)
    return loss_fn(out["image_features"], text_features, out["logit_scale"], image_emb, text_emb,
                   syn_features, syn_emb)


def _save_checkpoint(out_dir, epoch, spec, model, optimizer, scaler, step, seen, history) -> None:
    checkpoint = {"epoch": epoch, "name": spec["name"], "model_name": spec["model"], "step": step,
                  "seen_samples": seen, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "run": spec, "history": history}
    if scaler is not None:
        checkpoint["scaler"] = scaler.state_dict()
    path = checkpoint_path(out_dir, epoch)
    with shards.atomic_output(path) as partial:
        torch.save(checkpoint, partial)
    if spec["save_most_recent"]:  # open_clip's --save-most-recent: an extra epoch_latest.pt
        with shards.atomic_output(path.with_name("epoch_latest.pt")) as partial:
            shutil.copyfile(path, partial)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="the resolved run spec as JSON (what the Snakemake rule passes)")
    source.add_argument("--config", help="experiment YAML; use with --run")
    parser.add_argument("--run", help="run name in the config")
    parser.add_argument("--section", choices=["runs", "teachers"], default="runs")
    parser.add_argument("--out-dir", required=True, help="run directory: checkpoints/, manifest.json")
    parser.add_argument("--export", type=Path, help="also write the final weights here (teachers)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")


def command(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.spec:
        spec = json.loads(args.spec)
    else:
        if not args.run:
            raise SystemExit("--config needs --run NAME")
        spec = config_lib.resolve_run(config_lib.load_config(args.config), args.run, args.section)
    train(spec, Path(args.out_dir), args.device, args.export)
    return 0
