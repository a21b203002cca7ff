"""Part 3, gradient accumulation (``accum_freq``) at the paper's shapes: the first model's DR step
through the trainer's step (``train.build_training`` + ``train.train_step``) on one device-resident
batch of the trainer's DR dataset, in three arms (``accumulation_arms``)."""
from __future__ import annotations

import time
from pathlib import Path

from .common import autocast_name, free, run_spec, sync


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
    run = train.build_training(spec, model, device)  # the trainer's optimizer, schedule, scaler, autocast, loss

    def step() -> None:
        train.train_step(run, batch, 0)

    try:
        for _ in range(2):  # warm-up: AdamW's state, the allocator's pools, kernels picked
            step()
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.compute_steps):
            step()
        sync(device)
        seconds = time.perf_counter() - start
        result = {"accum_freq": spec["accum_freq"], "rows_per_step": rows,
                  "micro_batch": spec["per_gpu_micro_batch_size"], "steps": args.compute_steps,
                  "step_seconds": seconds / args.compute_steps,
                  "samples_per_second": args.compute_steps * rows / seconds,
                  "grad_checkpointing": spec["grad_checkpointing"], "grad_scaler": run.scaler is not None}
        if cuda:
            result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["flops_per_sample"] = flops.count_flops(step)[1] / rows
        return result
    except torch.cuda.OutOfMemoryError as error:  # this arm does not fit: the others stand
        return {"accum_freq": spec["accum_freq"], "rows_per_step": rows, "out_of_memory": str(error).splitlines()[0]}
    finally:
        del model, run, batch
        free(device)


def part_accum(args, device, data_info: dict, tmp: Path) -> dict:
    """The first model's DR step with and without accumulation (``accumulation_arms``), on one batch
    of the DR loader (the trainer's dataset over the generated shards) moved to the device."""
    import torch

    from mobileclip_repro.train import train

    model_name = args.models[0]
    arms = accumulation_arms(args)
    specs = {name: run_spec("dr", model_name, args, device, data_info, tmp / "accum_results",
                            global_batch_size=rows, seen_samples=rows, accum_freq=accum_freq)
             for name, accum_freq, rows in arms}
    rows = max(r for _, _, r in arms)
    spec = specs[arms[1][0]]
    # the trainer's dataset over the generated shards (built on the CPU: only its batches go to the device)
    threads = torch.get_num_threads()  # build_run takes OMP_NUM_THREADS on the CPU
    dataset_run = train.build_run(spec, tmp / "accum_data", device_name="cpu")
    torch.set_num_threads(threads)
    counter = dataset_run.counter
    # batches of the per-GPU batch, one per worker, so the workers make them side by side (and no
    # more: a batch of 256 x 3 x 224 x 224 floats is 154 MB of /dev/shm); the arms take their rows of them
    count = rows // args.batch_size
    workers = min(spec["workers"], count)
    loader = iter(torch.utils.data.DataLoader(dataset_run.dataset, batch_size=args.batch_size, num_workers=workers,
                                              prefetch_factor=1 if workers else None))
    pieces = [next(loader) for _ in range(count)]
    batch = [torch.cat(column).to(device) for column in zip(*pieces)]
    del loader, pieces, dataset_run
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
            "precision": spec["precision"], "autocast": autocast_name(spec["precision"], device),
            "timing": "compute only: one batch on the device, synchronised steps after 2 warm-up steps",
            "runs": runs, "accumulated_over": ratios}
