"""Part 1, the training step: DR, plain and online distillation through the trainer's data
pipeline and step (``train.build_run`` + ``train.train_step``), per model; and the FLOP count
behind part 2's MFU."""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from .common import FLOP_ROWS, PREFETCH_FACTOR, autocast_name, free, run_spec, sync


def measure_training(spec: dict, args, device, count_flops: bool, out_dir: Path) -> dict:
    """samples/s through the trainer's data pipeline and step, compute-only samples/s, FLOPs per sample.
    The run is the trainer's (``train.build_run`` into ``out_dir``; online, with random-init teachers
    of ``--teacher-model``: their cost, not their weights), stepped by ``train.train_step``."""
    import torch

    from mobileclip_repro import devices
    from mobileclip_repro.train import train

    cuda = device.type == "cuda"
    threads = torch.get_num_threads()  # build_run takes OMP_NUM_THREADS on the CPU; the workers share these cores
    built = time.perf_counter()
    ensemble = None
    if train.online_distillation(spec):
        from mobileclip_repro.teachers import TeacherEnsemble

        ensemble = TeacherEnsemble([args.teacher_model] * 2, [None, None], device=device,
                                   autocast_dtype=devices.autocast_dtype("auto", device),
                                   batch_size=spec["per_gpu_batch_size"])
    run = train.build_run(spec, out_dir, device_name=str(device), teacher_ensemble=ensemble)
    torch.set_num_threads(threads)
    batches = train.segment_batches(run, 0)  # the trainer's DataLoader: workers, pinned on CUDA, prefetch 4
    built = time.perf_counter() - built
    workers = spec["workers"]

    def step(batch) -> None:  # the trainer's step, the lr schedule included
        train.train_step(run, batch, 0)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    batch_size = spec["per_gpu_batch_size"]
    max_warmup = args.max_warmup_steps
    if max_warmup is None:  # drains a full prefetch backlog when the loader gives at most half the step's rate
        max_warmup = args.warmup_steps + 2 * max(workers, 1) * PREFETCH_FACTOR
    warmup = 0
    timed = {"steps": 0, "seconds": 0.0, "data_seconds": 0.0}
    batch = None
    run.model.train()
    while timed["steps"] < args.steps:
        sync(device)
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        batch = [t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch]
        step(batch)
        sync(device)
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
    skipped = run.counter.totals()
    del batches  # stops the workers
    # Compute only: the same step on one batch already on the device.
    sync(device)
    start = time.perf_counter()
    for _ in range(args.compute_steps):
        step(batch)
    sync(device)
    compute_seconds = time.perf_counter() - start
    result = {
        "model": spec["model"], "data": ("online" if run.teachers else "dr") if spec["dr"] else "plain",
        "batch_size": batch_size,
        "samples_per_second": timed["steps"] * batch_size / timed["seconds"],
        "step_seconds": timed["seconds"] / timed["steps"],
        "data_wait_seconds_per_step": timed["data_seconds"] / timed["steps"],
        "data_loader_share": timed["data_seconds"] / timed["seconds"],
        "compute_only_samples_per_second": args.compute_steps * batch_size / compute_seconds,
        "compute_only_step_seconds": compute_seconds / args.compute_steps,
        "loader_only_samples_per_second": args.steps * batch_size / loader_seconds,
        "warmup_steps": warmup, "timed_steps": timed["steps"], "compute_steps": args.compute_steps,
        "build_seconds": built, "skipped_samples": skipped, "grad_scaler": run.scaler is not None,
    }
    if cuda:
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if count_flops and run.teachers is None:
        result["flops_per_sample"] = count_step_flops(run, batch)
    del run, batch, ensemble
    free(device)
    return result


def _waited(data_seconds: float, step_seconds: float) -> bool:
    """Did this step block on the loader (its prefetch queue was empty)?"""
    return data_seconds > max(0.002, 0.05 * step_seconds)


def count_step_flops(run, batch) -> float:
    """Model FLOPs per sample of one forward + loss + backward of the trainer's step (FlopCounterMode)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from mobileclip_repro.train import train

    model, spec = run.model, run.spec
    rows = min(FLOP_ROWS, len(batch[0]))
    small = [t[:rows] for t in batch]
    model.set_grad_checkpointing(False)  # recomputation is hardware FLOPs, not model FLOPs
    model.zero_grad(set_to_none=True)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            losses = train._forward(model, model, run.loss_fn, small, spec)
            sum(losses.values()).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(spec["grad_checkpointing"])
    return counter.get_total_flops() / rows


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
                result = measure_training(spec, args, device, count_flops="mfu" in parts and model == args.models[0],
                                          out_dir=tmp / "train_runs" / f"{model}_{data}")
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
            free(device)
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
                "autocast": autocast_name(spec["precision"], device), "grad_checkpointing": spec["grad_checkpointing"],
                "workers": spec["workers"], "prefetch_factor": PREFETCH_FACTOR, "steps": args.steps,
                "compute_steps": args.compute_steps, "warmup_steps": args.warmup_steps,
                "max_warmup_steps": args.max_warmup_steps, "data": data_info.get("train"),
                "specs_from": ["configs/paper/datacompdr12m.yaml", "configs/paper/datacomp12m.yaml"]}
    return {"settings": settings, "runs": runs, "errors": errors}
