"""The checkpoint format the trainer writes and every later stage reads: open_clip's
``epoch_<k>.pt`` (``state_dict``, ``optimizer``, ``epoch``) plus the project's bookkeeping:
the run's ``name``, its ``seen_samples`` and its resolved spec (``run``)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT_KEYS = ("epoch", "seen_samples", "name", "run")
CHECKPOINT_PATTERN = re.compile(r"epoch_(\d+)\.pt$")
RESUME_CHECKPOINT = "resume.pt"  # the newest intra-epoch checkpoint; each one replaces the one before


def checkpoint_path(out_dir: Path, epoch: int | None) -> Path:
    """``epoch_<k>.pt`` after pseudo-epoch k (open_clip's name); ``resume.pt`` inside an epoch."""
    return Path(out_dir) / "checkpoints" / (RESUME_CHECKPOINT if epoch is None else f"epoch_{epoch}.pt")


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in (Path(out_dir) / "checkpoints").glob("epoch_*.pt")
             if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


@dataclass
class CheckpointInfo:
    path: str
    run: str
    epoch: int
    seen_samples: int
    dr: bool
    model_name: str | None
    run_spec: dict = field(default_factory=dict)
    # "student": a training run's checkpoint; "teacher": one member of the reinforcement's
    # ensemble; "ensemble": the members' concatenated features, as the DR targets see them.
    role: str = "student"
    seed: int | None = None


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """The trainer's bookkeeping (epoch, seen samples, run spec) from a checkpoint file."""
    import torch

    # mmap: the metadata is a few bytes; the weights are only paged in when open_clip loads them.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{path}: not a mobileclip_repro checkpoint, missing {missing}")
    run_spec = checkpoint["run"]
    if not isinstance(run_spec, dict):
        raise ValueError(f"{path}: 'run' must be the run spec dict, got {type(run_spec).__name__}")
    if "dr" in run_spec:
        dr = run_spec["dr"]
    elif "data" in run_spec:
        dr = run_spec["data"] == "dr"
    else:
        raise ValueError(f"{path}: run spec has neither 'dr' nor 'data'; cannot tell a DR run from a plain one")
    return CheckpointInfo(path=str(path), run=str(checkpoint["name"]), epoch=int(checkpoint["epoch"]),
                          seen_samples=int(checkpoint["seen_samples"]), dr=bool(dr),
                          model_name=checkpoint.get("model_name"), run_spec=run_spec, seed=run_spec.get("seed"))


def checkpoint_model_name(info: CheckpointInfo, model_name: str | None, purpose: str) -> str:
    """The architecture to load a checkpoint as: the one asked for, which must be the one it was trained as."""
    model_name = model_name or info.model_name
    if not model_name:
        raise ValueError(f"{info.path}: no model_name in the checkpoint; pass --model")
    if info.model_name and info.model_name != model_name:
        raise ValueError(f"{info.path}: trained as {info.model_name!r}, asked to {purpose} as {model_name!r}")
    return model_name
