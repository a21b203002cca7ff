"""Which device a stage runs on and which autocast dtype it computes in, for every stage.

Precision names are the trainer's (open_clip_train's ``--precision``) plus the reinforcement
CLI's: ``fp32``/``off`` (no autocast), ``amp`` (float16 on CUDA; bfloat16 on the CPU, the
only autocast dtype the CPU has), ``amp_bf16``/``bf16``, ``fp16``, and ``auto`` (bfloat16 on
CUDA, float16 where the GPU lacks bfloat16; no autocast on the CPU, where it would only
change the numbers).
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "off", "amp", "amp_bf16", "bf16", "fp16", "auto")


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when this process sees a GPU, else the CPU; other names as torch reads them."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``precision`` autocasts to on ``device``; None where it computes in float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision in ("fp32", "off"):
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision in ("amp_bf16", "bf16"):
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return torch.float16 if device.type == "cuda" else torch.bfloat16  # amp


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context that autocasts to ``dtype`` on ``device``, or does nothing for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
