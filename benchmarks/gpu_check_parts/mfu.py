"""Part 2, MFU of the first model's step: model FLOPs per sample (``training.count_step_flops``) x
samples/s (part 1) / the device's dense peak (``--peak-tflops``, the datasheet by GPU name, else a
measured matmul rate)."""
from __future__ import annotations

import time

from .common import sync


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


def peak_tflops_for(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a GPU by its CUDA name, None when not in PEAK_TFLOPS."""
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


def measured_peak_tflops(device) -> tuple[float, str]:
    """A square matmul's rate on this device: the peak to use when no datasheet figure is known."""
    import torch

    cuda = device.type == "cuda"
    n = 8192 if cuda else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while reps < 10 or time.perf_counter() - start < 0.3:
        a @ b
        reps += 1
        if cuda and reps % 10 == 0:
            sync(device)
    sync(device)
    seconds = time.perf_counter() - start
    return 2 * n**3 * reps / seconds / 1e12, f"measured: {n}x{n} {str(dtype).replace('torch.', '')} matmul"


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
