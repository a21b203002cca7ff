"""The trainer: one run, plain CLIP or DR, as Apple's run scripts configure open_clip_train.

Three entry points, as open_clip_train's ``main()`` builds and ``train_one_epoch()`` steps:
``build_run`` (the run folder, distributed setup, model, optimizer + schedule, precision, loss,
data, resume state: a ``Run``), ``train_step`` (one optimizer step of a ``Run``, gradient
accumulation included) and ``fit`` (the loop: checkpoints, metrics, preemption). ``train`` is
the two with the run folder locked; benchmarks and tests build a ``Run`` (``build_run``, or
``build_training`` around a model of their own) and step it with ``train_step``.

``fit`` runs the loop of pseudo-epochs (``num_checkpoints``, ending at ``checkpoint_steps``: equal ones as in
Apple's scripts, or log-spaced for a learning curve; shards drawn with replacement),
checkpointing in open_clip's format after each with its seen-sample count. ``resume: latest`` restarts from the newest checkpoint, so a requeued
or preempted job continues where it stopped.

Launch under torchrun (the Snakemake rule does) for one or many processes.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from open_clip.loss import ClipLoss
from open_clip_train.distributed import init_distributed_device_so
from open_clip_train.scheduler import const_lr, cosine_lr

from mobileclip_repro import config as config_lib
from mobileclip_repro import devices, flops, locks, models, preflight, shards
from mobileclip_repro.checkpoints import CHECKPOINT_PATTERN, RESUME_CHECKPOINT, checkpoint_path
from mobileclip_repro.telemetry import METRICS_FILE, MetricsLog
from mobileclip_repro.seeding import seed_from
from mobileclip_repro.train.samples import (SKIP_REASONS, DRSamples, PlainCLIPSamples, SkipCounter, counts_by_reason,
                                      paired_shards)

log = logging.getLogger("mobileclip_repro.train.train")
LOG_EVERY_STEPS = 20
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# Run-spec keys that do not change what a run computes: a checkpoint made with other values of
# these is resumed. Any other difference (lr, seeds, data, model, loss, schedule, workers, ...)
# makes it another run's checkpoint. resume_every_steps is not among them: the data stream
# restarts at every intra-epoch checkpoint, so it changes what a run draws.
RESULT_NEUTRAL_KEYS = ("resume", "save_most_recent", "max_consecutive_skips", "slurm", "ddp_static_graph",
                       "log_every_steps", "report_to", "wandb_project")
SET_ASIDE_DIR = "superseded"  # <run>/superseded/<when>/: checkpoints a restart from step 0 moved out of the way


def _checkpoint_files(out_dir: Path) -> list[Path]:
    folder = Path(out_dir) / "checkpoints"
    return sorted(path for path in folder.glob("*.pt")
                  if path.is_file() and (path.name == RESUME_CHECKPOINT or CHECKPOINT_PATTERN.search(path.name)
                                         or path.name == "epoch_latest.pt"))


def _as_json(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def spec_differences(stored: dict, spec: dict) -> dict[str, tuple]:
    """The keys whose values differ between a checkpoint's run spec and this job's, ``RESULT_NEUTRAL_KEYS``
    left out: {key: (checkpoint's value, job's value)}; a key one side lacks shows as None."""
    stored, spec = _as_json(_with_later_keys(stored or {})), _as_json(spec)
    keys = (set(stored) | set(spec)) - set(RESULT_NEUTRAL_KEYS)
    return {key: (stored.get(key), spec.get(key)) for key in sorted(keys) if stored.get(key) != spec.get(key)}


def _with_later_keys(stored: dict) -> dict:
    """A spec stored before a key existed, with the value that key's default gives it (a run resumes
    across the upgrade instead of restarting over a key it never set)."""
    if not stored:
        return stored
    later = {"accum_freq": 1, "per_gpu_micro_batch_size": stored.get("per_gpu_batch_size")}
    return {**later, **stored}


def _describe_differences(differences: dict[str, tuple]) -> str:
    def short(value):
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."

    return ", ".join(f"{key}: {short(old)} -> {short(new)}" for key, (old, new) in differences.items())


def set_aside(out_dir: Path, why: dict) -> Path:
    """Move ``checkpoints/`` (and the last manifest and metrics) to ``superseded/<UTC time>/`` with a
    ``why.json``: a restart from step 0 never overwrites or deletes earlier work."""
    out_dir = Path(out_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = out_dir / SET_ASIDE_DIR / stamp
    suffix = 1
    while target.exists():
        target, suffix = out_dir / SET_ASIDE_DIR / f"{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    os.replace(out_dir / "checkpoints", target / "checkpoints")
    for name in ("manifest.json", METRICS_FILE):
        if (out_dir / name).is_file():
            os.replace(out_dir / name, target / name)
    shards.write_json_atomic(target / "why.json", why)
    return target


def training_shards(spec: dict, data_manifests: list[Path] | None) -> dict[str, list[dict]]:
    """Per data folder of the run (``datacomp_dir``, and ``dr_dir`` unless joined): the shards it
    reads, as ``shards.SHARD_FILES_KEY`` entries. With the data manifests the rule hands the job,
    exactly the shards they list there (a shard lost by a fetch, or left over from other data, is
    not read); without (a run started by hand), every shard in the folder (``data_stamp`` hashes them)."""
    listed = shards.listed_shard_files(data_manifests) if data_manifests else None
    found = {}
    for role in ("datacomp_dir", "dr_dir"):
        if not spec.get(role) or spec[role] in found:
            continue  # the joined layout: one folder holds both sides
        if listed is None:
            found[spec[role]] = [{"path": str(shards.absolute_path(path)), "bytes": path.stat().st_size, "sha256": None}
                                 for path in shards.list_shards(spec[role])]
            continue
        entries = [listed[path] for path in shards.shards_in(spec[role], listed)]
        if not entries and role == "dr_dir" and spec.get("dr"):
            raise FileNotFoundError(f"none of the data manifests handed to this job ({', '.join(map(str, data_manifests))}) "
                                    f"lists a shard under dr_dir {spec[role]}")
        found[spec[role]] = entries
    return found


def data_stamp(spec: dict, files: dict[str, list[dict]]) -> dict:
    """What identifies the shards a run reads (``training_shards``), by content: per folder, the
    number of shards, their bytes and one digest over their names (relative to the folder), sizes
    and sha256. Modification times are no part of it, so the same bytes written again (a toy world
    made again, a rerun fetch) are the same data and the run resumes; other bytes under the same run
    spec (a DataComp-12M reinforced again with another seed, a toy world of another seed) are not."""
    stamp = {}
    for role in ("datacomp_dir", "dr_dir"):
        folder = spec.get(role)
        if not folder or folder not in files or folder in [entry["path"] for entry in stamp.values()]:
            continue
        root = shards.absolute_path(folder)
        listing = sorted((shards.absolute_path(entry["path"]).relative_to(root).as_posix(), entry["bytes"],
                          entry["sha256"] or shards.file_sha256(entry["path"])) for entry in files[folder])
        stamp[role] = {"path": folder, "shards": len(listing), "bytes": sum(size for _, size, _ in listing),
                       "content_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    return stamp


def same_training_data(recorded: dict, stamp: dict) -> bool:
    """Whether a checkpoint's ``data_stamp`` is this job's. A stamp of an earlier version (by
    modification time: ``newest_mtime_ns``) is compared on what both record, shard count and bytes,
    so upgrading does not restart finished work."""
    recorded, stamp = _as_json(recorded), _as_json(stamp)
    if any("newest_mtime_ns" in entry for entry in recorded.values()):
        return ({role: (entry["shards"], entry["bytes"]) for role, entry in recorded.items()}
                == {role: (entry["shards"], entry["bytes"]) for role, entry in stamp.items()})
    return recorded == stamp


def prepare_run_folder(spec: dict, out_dir: Path, stamp: dict) -> dict | None:
    """Before the first step (rank 0, run folder locked): keep ``checkpoints/`` only if this job
    resumes from it. Checkpoints made with another run spec (a changed config key) or on other
    data (``data_stamp``), with ``resume: none``, or none of which can be read are set aside
    (``set_aside``), loudly; the job then trains from step 0. Returns what was set aside and why
    (for the manifest), or None."""
    files = _checkpoint_files(out_dir)
    if not files:
        return None
    readable, unreadable, differing = [], {}, {}
    for path in files:
        try:
            # mmap: the spec and the step are read, not the tensors
            header = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            readable.append(path)
        except Exception as error:  # noqa: BLE001 -- any unreadable file is the same case
            unreadable[path.name] = f"{type(error).__name__}: {error}"
            continue
        differences = spec_differences(header.get("run"), spec)
        if "data_stamp" in header and not same_training_data(header["data_stamp"], stamp):
            differences["training data"] = (header["data_stamp"], stamp)
        differing.update({key: value for key, value in differences.items() if key not in differing})
    if spec["resume"] != "latest":
        why = {"reason": "resume: none", "detail": "the run starts from step 0 and does not resume"}
    elif differing:
        why = {"reason": "run spec changed", "detail": _describe_differences(differing),
               "differences": {key: {"checkpoint": old, "job": new} for key, (old, new) in differing.items()}}
    elif not readable:
        why = {"reason": "no checkpoint loads", "detail": "; ".join(f"{n}: {e}" for n, e in unreadable.items())}
    else:
        return None
    moved = set_aside(out_dir, why)
    why = {**why, "set_aside": str(moved), "files": [path.name for path in files]}
    banner = "=" * 100
    log.error("%s\nTRAINING FROM STEP 0: the checkpoints in %s are not this run's to resume (%s: %s).\n"
              "They were moved, not deleted, to %s\n%s", banner, Path(out_dir) / "checkpoints", why["reason"],
              why["detail"], moved, banner)
    return why


def load_latest_checkpoint(out_dir: Path) -> dict | None:
    """The checkpoint with the most steps that loads; one that does not (truncated by a crash,
    corrupt) is passed over with a warning, so a job falls back to the one before. None loading
    at all is said loudly (``prepare_run_folder`` sets such a folder aside before this runs)."""
    candidates = [path for path in _checkpoint_files(out_dir) if path.name != "epoch_latest.pt"]
    loaded = []
    for path in candidates:
        try:
            # mmap: only the step is read here; the one picked is loaded in full below
            loaded.append((torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"], path))
        except Exception as error:  # noqa: BLE001 -- any unreadable file is the same case: skip it
            log.warning("checkpoint %s cannot be loaded (%s: %s); falling back to an earlier one",
                        path, type(error).__name__, error)
    for _, path in sorted(loaded, key=lambda item: (item[0], item[1].name != RESUME_CHECKPOINT), reverse=True):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            log.info("resuming from %s", path)
            return checkpoint
        except Exception as error:  # noqa: BLE001
            log.warning("checkpoint %s cannot be loaded (%s: %s); falling back to an earlier one",
                        path, type(error).__name__, error)
    if candidates:
        log.error("NONE of the %d checkpoints in %s loads: TRAINING FROM STEP 0", len(candidates),
                  Path(out_dir) / "checkpoints")
    return None


# The signals a scheduler sends ahead of a kill: SLURM's SIGTERM at preemption and time limit
# (KillWait / GraceTime seconds before SIGKILL), or the one a user asks for (--signal=USR1@90).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A preemption signal stopped the run after a step, with ``resume.pt`` written at it."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a process ended by that signal: nonzero, so rerun


class PreemptionWarning:
    """Notes a preemption signal instead of dying of it; the loop asks ``agreed`` after each step.

    Its DataLoader workers ignore the signals (``ignore_preemption_signals``), so a scheduler that
    signals every process of the job leaves them running until the trainer stops. Signal
    handlers can only be set from the main thread; elsewhere the signals keep their default."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PreemptionWarning":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def agreed(self, device: torch.device, world_size: int) -> int | None:
        """The signal to stop for, once any rank has one (a collective per step with several
        ranks, so that all stop after the same step); None to go on."""
        if world_size == 1:
            return self.signum
        noted = torch.tensor([self.signum or 0], device=device)
        torch.distributed.all_reduce(noted, op=torch.distributed.ReduceOp.MAX)
        return int(noted.item()) or None


def segment_boundaries(spec: dict) -> set[int]:
    """Steps at which the data stream and torch's RNG restart: every checkpoint (pseudo-epoch ends,
    and every ``resume_every_steps`` in between, where a preempted job resumes)."""
    every = spec["resume_every_steps"]
    intra = set(range(every, spec["total_steps"], every)) if every else set()
    return intra | set(spec["checkpoint_steps"])


def segment_loader(dataset, spec: dict, step: int, rank: int, batch_size: int, device: torch.device):
    """A DataLoader whose stream depends only on (run seed, ``step``): the dataset's shard order,
    shuffling and augmentation draws, and torch's RNG (random crops, worker seeds) restart here.
    Workers are not persistent: each segment's workers take the new seed with the dataset."""
    dataset.seed = seed_from(spec["seed"], "stream", step)
    torch.manual_seed(seed_from(spec["seed"], "torch", rank, step))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=spec["workers"],
                                       pin_memory=device.type == "cuda",
                                       prefetch_factor=4 if spec["workers"] > 0 else None,
                                       worker_init_fn=ignore_preemption_signals if spec["workers"] > 0 else None)


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader workers outlive a preemption warning: torchrun and SLURM signal every process
    of the job, and torch's worker handler would end the worker mid-step. A worker still ends
    when its trainer stops it, or dies (the worker loop watches its parent).

    Workers start with the signals held (``starting_workers``): one that came before this point
    is pending, and ignoring it here discards it."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)


@contextmanager
def starting_workers():
    """Hold the preemption signals while a DataLoader forks its workers. A worker installs
    torch's SIGTERM handler (which ends it when the signal is not its trainer's) before it runs
    ``ignore_preemption_signals``; a SIGTERM sent to the job's process group in between would
    end it and the trainer with it, before any resume.pt. Held, the signal waits: in each worker
    until it is ignored, in the trainer until this block ends, when ``PreemptionWarning`` notes it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
    from mobileclip_repro.train.loss import DRClipLoss

    distill = spec["distill"]
    members = distilled_members(distill)
    scale = distill["logit_scale"]
    return DRClipLoss(loss_weights=distill["loss_weights"],
                      teacher_dimension=[distill["teacher_dimension"][k] for k in members],
                      dist_logit_scale=[scale[k] for k in members] if isinstance(scale, list) else scale,
                      average_after_softmax=distill["average_after_softmax"], **common)


def distilled_members(distill: dict) -> list[int]:
    """The ensemble members a DR run distils from (``distill.teachers``: "all" or member indices)."""
    members = distill.get("teachers", "all")
    return list(range(len(distill["teacher_dimension"]))) if members == "all" else sorted(members)


def teacher_columns(distill: dict) -> list[int] | None:
    """The stored embedding columns of the distilled members (each member its slice of
    ``teacher_dimension``, in order); None when every member is distilled from."""
    if distill.get("teachers", "all") == "all":
        return None
    starts = [sum(distill["teacher_dimension"][:k]) for k in range(len(distill["teacher_dimension"]))]
    return [column for k in distilled_members(distill)
            for column in range(starts[k], starts[k] + distill["teacher_dimension"][k])]


def build_dataset(spec: dict, model, train_transform, tokenizer, counter: SkipCounter, stream_seed: int,
                  files: dict[str, list[dict]] | None = None):
    """The run's training samples from ``files`` (``training_shards``; None: every shard in datacomp_dir)."""
    # absolute, as the manifests' paths are: a DR shard is found at the DataComp shard's relative path
    datacomp_dir = shards.absolute_path(spec["datacomp_dir"])
    if files is None:
        shard_paths = shards.list_shards(datacomp_dir)
    else:
        shard_paths = sorted(shards.absolute_path(entry["path"]) for entry in files[spec["datacomp_dir"]])
    if not shard_paths:
        raise FileNotFoundError(f"no .tar shards in {spec['datacomp_dir']}")
    keep = None
    if spec.get("subset_size"):
        from mobileclip_repro import subsets

        keep = subsets.members(spec["subset_file"], spec["subset_size"])
        log.info("training on a subset of %d unique samples (%s)", len(keep), spec["subset_file"])
    if spec["dr"] and online_distillation(spec):
        from mobileclip_repro.replay import ReplayTransform
        from mobileclip_repro.train.samples import OnlineDRSamples
        from mobileclip_repro.teachers import ReinforceConfig

        joined = spec.get("data_layout") == "joined"
        pairs = paired_shards(shard_paths, datacomp_dir, None if joined else shards.absolute_path(spec["dr_dir"]))
        return OnlineDRSamples(pairs, ReplayTransform.from_open_clip(model), tokenizer, stream_seed,
                               spec["dataset_resampled"], counter, ReinforceConfig.load(spec["reinforcement_config"]),
                               syn_caption_regex=spec.get("syn_caption_regex", shards.DEFAULT_SYN_CAPTION_REGEX),
                               keep_uids=keep)
    if spec["dr"]:
        from mobileclip_repro.replay import ReplayTransform

        # shards made with other settings (num_samples, teachers, widths) stop the job here, not mid-run
        preflight.check_run_shards(spec)

        # The student replays the stored augmentation at its own size, interpolation and normalization.
        replay = ReplayTransform.from_open_clip(model)
        joined = spec.get("data_layout") == "joined"
        pairs = paired_shards(shard_paths, datacomp_dir, None if joined else shards.absolute_path(spec["dr_dir"]))
        return DRSamples(pairs, replay, tokenizer, stream_seed, spec["dataset_resampled"], counter,
                         embedding_dim=sum(spec["distill"]["teacher_dimension"]),
                         # a spec resolved before the key existed reads every set, as Apple's default
                         syn_caption_regex=spec.get("syn_caption_regex", shards.DEFAULT_SYN_CAPTION_REGEX),
                         keep_uids=keep)
    return PlainCLIPSamples(shard_paths, train_transform, tokenizer, stream_seed, spec["dataset_resampled"], counter,
                            keep_uids=keep)


def online_distillation(spec: dict) -> bool:
    return bool((spec.get("distill") or {}).get("online"))


class OnlineTeachers:
    """Online distillation's teachers: the reinforcement's ensemble (its JSON: models, pretrained
    weights, crop size, normalization), frozen, in eval mode under inference mode and the
    reinforcement's autocast (bf16 on CUDA, none on the CPU, as the reinforce job runs them).
    ``targets`` turns an online batch into a DR batch, embeddings computed now rather than read."""

    def __init__(self, spec: dict, device: torch.device, batch_size: int, ensemble=None):
        """``ensemble``: teachers already built (benchmarks pass random-init ones); default the JSON's."""
        from mobileclip_repro.teachers import ReinforceConfig, TeacherEnsemble

        self.config = ReinforceConfig.load(spec["reinforcement_config"])
        self.device = device
        self.ensemble = ensemble or TeacherEnsemble.from_config(
            self.config, pretrained_root=spec.get("teachers_dir"), device=device,
            autocast_dtype=devices.autocast_dtype("auto", device), batch_size=batch_size)
        if self.ensemble.dims != list(spec["distill"]["teacher_dimension"]):
            raise config_lib.ConfigError(f"config key 'distill.teacher_dimension' of run '{spec['name']}': "
                                         f"{spec['distill']['teacher_dimension']}, the teachers give {self.ensemble.dims}")

    def targets(self, batch: list) -> list:
        from mobileclip_repro.replay import normalize_views

        images, texts, teacher_views, captions, syn_texts, syn_captions = batch
        views = normalize_views(teacher_views.to(self.device), self.config.mean, self.config.std)
        on = images.device
        return [images, texts, self.ensemble.encode_images(views).to(on), self.ensemble.encode_texts(list(captions)).to(on),
                syn_texts, self.ensemble.encode_texts(list(syn_captions)).to(on)]


def skipped_over_ranks(counter: SkipCounter, device: torch.device, world_size: int) -> torch.Tensor:
    """This run's skip counts by reason, summed over every rank's workers (a collective)."""
    counts = counter.as_tensor().to(device)
    if world_size > 1:
        torch.distributed.all_reduce(counts)
    return counts.cpu()


def autocast_for(precision: str, device: torch.device):
    """A factory of the step's autocast context for the run's ``precision`` (devices.autocast_dtype)."""
    dtype = devices.autocast_dtype(precision, device)
    return lambda: devices.autocast(device, dtype)


RunFolderBusy = locks.FolderBusy  # another trainer holds the run folder's lock


def run_folder_lock(out_dir: Path):
    """One writer per run folder (``locks.folder_lock``), held until the trainer ends."""
    return locks.folder_lock(out_dir, "trainer")


def die_with_launcher() -> None:
    """Under torchrun, end this worker when its launcher dies (SIGKILL included): torchrun starts
    workers in sessions of their own, so killing the launcher's process group would leave them
    training into the run folder."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != launcher:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def holding_run_folder(out_dir: Path):
    """Rank 0 holds the run folder's lock (``run_folder_lock``) around ``build_run`` and ``fit``.
    Taken before the process group forms: a busy folder fails this worker at once, and torchrun
    then stops the others rather than leaving them waiting for rank 0."""
    with run_folder_lock(out_dir) if os.environ.get("RANK", "0") == "0" else nullcontext():
        yield


def train(spec: dict, out_dir: Path, device_name: str | None = None, export_path: Path | None = None,
          data_manifests: list[Path] | None = None) -> dict:
    """Train one run into ``out_dir``, as the ``train`` command does: ``build_run``, then ``fit``,
    with the run folder locked; returns the manifest."""
    with holding_run_folder(out_dir):
        return fit(build_run(spec, out_dir, data_manifests, device_name), export_path)


@dataclass
class Run:
    """One run as the trainer holds it: what ``train_step`` steps (model, optimizer, schedule,
    precision, loss, online teachers), the distributed state, the data and where it resumes.

    ``build_run`` makes the whole of it; ``build_training`` only the step's part around a model
    (benchmarks and tests with batches of their own). ``training_model`` is the DDP-wrapped
    ``model`` under several processes, else ``model`` itself."""

    spec: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module | None = None  # None: build_loss(spec, rank, world_size)
    training_model: torch.nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None  # amp on CUDA
    autocast: Callable = nullcontext  # a factory of the step's autocast context (autocast_for)
    adjust_lr: Callable[[int], object] | None = None  # open_clip_train's schedule; None: the lr stays
    teachers: "OnlineTeachers | None" = None  # online distillation: they embed each batch in the step
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    # data: the samples, their skip counts
    dataset: object = None
    counter: SkipCounter | None = None
    # the run folder, and where this job starts in it
    out_dir: Path | None = None
    stamp: dict | None = None  # data_stamp: what the checkpoints carry
    set_aside_why: dict | None = None  # what prepare_run_folder set aside, for the manifest
    step: int = 0
    history: dict = field(default_factory=lambda: {"epochs": [], "attempts": 0})
    epoch_skipped: torch.Tensor = field(default_factory=lambda: torch.zeros(len(SKIP_REASONS), dtype=torch.int64))
    segment_start: int = 0  # where the data stream of the next step began (inside a segment after a signal)
    resumed_rng: list | None = None  # every rank's generators at a preemption signal

    def __post_init__(self):
        if self.loss_fn is None:
            self.loss_fn = build_loss(self.spec, self.rank, self.world_size)
        if self.training_model is None:
            self.training_model = self.model

    @property
    def per_process_batch(self) -> int:
        return self.spec["global_batch_size"] // self.world_size

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def build_training(spec: dict, model: torch.nn.Module, device: torch.device, rank: int = 0,
                   world_size: int = 1) -> Run:
    """The step's part of a run around ``model``, as the trainer builds it: DDP under several
    processes, AdamW with open_clip_train's weight-decay groups, the lr schedule, GradScaler for
    ``amp`` on CUDA, the autocast of ``precision``, the loss. No data and no run folder."""
    training_model = model
    if world_size > 1:
        training_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            static_graph=spec["ddp_static_graph"])
    # Fused on CPU: one pass over the parameters instead of a dozen (the 49k-token embedding of
    # a toy model made the default optimizer step ~20% of a step); GPUs keep open_clip_train's.
    optimizer = torch.optim.AdamW(weight_decay_groups(model, spec["weight_decay"]), lr=spec["lr"],
                                  betas=(spec["beta1"], spec["beta2"]), eps=spec["eps"],
                                  fused=True if device.type == "cpu" else None)
    schedule = cosine_lr if spec["schedule"] == "cosine" else const_lr
    return Run(spec=spec, model=model, optimizer=optimizer, loss_fn=build_loss(spec, rank, world_size),
               training_model=training_model,
               scaler=torch.amp.GradScaler("cuda") if spec["precision"] == "amp" and device.type == "cuda" else None,
               autocast=autocast_for(spec["precision"], device),
               adjust_lr=schedule(optimizer, spec["lr"], spec["warmup_steps"], spec["total_steps"]),
               device=device, rank=rank, world_size=world_size)


def build_run(spec: dict, out_dir: Path, data_manifests: list[Path] | None = None, device_name: str | None = None,
              teacher_ensemble=None) -> Run:
    """Everything ``fit`` needs, in this order: the shards the run reads (``training_shards``:
    ``data_manifests`` are the data stage's manifests the rule hands the job), the run folder
    prepared (rank 0, before the process group forms, so no other rank has looked at the
    checkpoints yet), the process group, the model, ``build_training``, the dataset, the online
    teachers (``teacher_ensemble``: teachers already built, e.g. random-init ones; default the
    reinforcement JSON's) and the newest checkpoint that loads (``resume: latest``).
    Hold the run folder's lock around it and ``fit`` (``holding_run_folder``)."""
    out_dir = Path(out_dir)
    files = training_shards(spec, data_manifests)
    is_rank0 = os.environ.get("RANK", "0") == "0"
    stamp = data_stamp(spec, files) if is_rank0 else None  # what its checkpoints are compared with, and carry
    set_aside_why = prepare_run_folder(spec, out_dir, stamp) if is_rank0 else None
    dist = init_distributed_device_so(device=device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    device, rank, world_size = torch.device(dist["device"]), dist["global_rank"], dist["world_size"]
    is_master = rank == 0
    if world_size != spec["world_size"] and spec["world_size"] > 1:
        log.warning("run asks for %d processes, launched with %d; the global batch stays %d",
                    spec["world_size"], world_size, spec["global_batch_size"])
    per_process_batch = spec["global_batch_size"] // world_size
    accum_freq = spec.get("accum_freq", 1)
    if per_process_batch % accum_freq:
        raise config_lib.ConfigError(
            f"config key 'accum_freq' of run '{spec['name']}': {accum_freq} micro-batches do not split the "
            f"{per_process_batch} rows of each of the {world_size} processes this job was launched with")
    torch.manual_seed(spec["seed"] + rank)
    if device.type == "cpu" and os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    elif device.type == "cpu" and is_master:
        # float reductions split by thread: another thread count gives other weights
        log.warning("OMP_NUM_THREADS is not set: torch uses %d threads, and the result depends on it; "
                    "set it as the DAG does (the rule's threads) to reproduce a DAG run", torch.get_num_threads())

    # --- model, then the step's optimizer, schedule, precision and loss
    model, train_transform, _ = models.create_model_and_transforms(spec["model"], device=str(device), output_dict=True)
    if spec["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    if accum_freq > 1 and is_master:
        log.info("gradient accumulation: %d micro-batches of %d rows per process and optimizer step",
                 accum_freq, per_process_batch // accum_freq)
        if _batch_norm_layers(model):
            log.warning("accum_freq %d with batch-norm layers in %s: they normalize each micro-batch by its own "
                        "statistics, so the step is close to, not exactly, the whole batch's", accum_freq,
                        spec["model"])
    run = build_training(spec, model, device, rank, world_size)
    run.out_dir, run.stamp, run.set_aside_why = out_dir, stamp, set_aside_why

    # --- data
    tokenizer = models.CachingTokenizer(models.get_tokenizer(spec["model"]))
    run.counter = SkipCounter(max_consecutive=spec["max_consecutive_skips"])
    run.dataset = build_dataset(spec, model, train_transform, tokenizer, run.counter, stream_seed=spec["seed"],
                                files=files)
    if online_distillation(spec):
        run.teachers = OnlineTeachers(spec, device, per_process_batch // accum_freq, ensemble=teacher_ensemble)

    # --- resume: the newest checkpoint that loads (a truncated one falls back to the one before)
    checkpoint = load_latest_checkpoint(out_dir) if spec["resume"] == "latest" else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        if run.scaler is not None and "scaler" in checkpoint:
            run.scaler.load_state_dict(checkpoint["scaler"])
        run.step = checkpoint["step"]
        run.history = checkpoint.get("history", run.history)
        stored = checkpoint.get("epoch_skipped", [])  # older checkpoints know fewer reasons: the rest are 0
        run.epoch_skipped[:len(stored)] = torch.tensor(stored, dtype=torch.int64)
        # Where the data stream of the step to come began: a checkpoint written on a preemption
        # signal lies inside a segment, and its job re-reads that segment's batches so far.
        run.segment_start = checkpoint.get("segment_start", run.step)
        run.resumed_rng = checkpoint.get("rng")
        if is_master:
            log.info("resumed at step %d (%s seen samples)", run.step, f"{checkpoint['seen_samples']:,}")
    return run


def segment_batches(run: Run, segment_start: int):
    """The batches of the data segment that began at ``segment_start`` (``segment_loader``), its
    workers started with the preemption signals held (``starting_workers``)."""
    with starting_workers():
        return iter(segment_loader(run.dataset, run.spec, segment_start, run.rank, run.per_process_batch, run.device))


def fit(run: Run, export_path: Path | None = None) -> dict:
    """The loop of pseudo-epochs from ``run.step`` to the run's last step: a ``train_step`` per
    batch, metrics every ``log_every_steps``, the intra-epoch and epoch checkpoints, a stop after
    the step a preemption signal arrives in (``Preempted``, with ``resume.pt`` written). Writes the
    manifest (and, with ``export_path``, the final weights: teachers) and returns the manifest.

    The data stream restarts at every segment boundary (pseudo-epoch ends and the intra-epoch
    checkpoints) from a seed of (run seed, boundary step), and so does torch's RNG, so a job
    resumed at a boundary draws exactly what an uninterrupted one draws there."""
    spec, model, optimizer, scaler = run.spec, run.model, run.optimizer, run.scaler
    out_dir, device, rank, world_size, counter = run.out_dir, run.device, run.rank, run.world_size, run.counter
    is_master, accum_freq, total_steps = run.is_master, spec.get("accum_freq", 1), spec["total_steps"]
    step, segment_start, resumed_rng = run.step, run.segment_start, run.resumed_rng
    start_epoch = sum(end <= step for end in spec["checkpoint_steps"])
    boundaries = segment_boundaries(spec)
    # The per-epoch history travels in the checkpoints, so a requeued job's manifest still
    # covers the epochs (and skipped samples) of the attempts before it.
    # the arm (data, online) and reinforcement: what the compute ledger groups runs by
    manifest = {"run": spec["name"], "seed": spec["seed"], "data": spec["data"], "online": online_distillation(spec),
                "reinforcement": spec.get("reinforcement") if spec["dr"] else None,
                "subset_size": spec.get("subset_size"),  # None: the whole data
                "world_size": world_size, "device": str(device),
                "accum_freq": accum_freq, "per_gpu_micro_batch_size": run.per_process_batch // accum_freq,
                "attempts": run.history["attempts"] + 1, "epochs": list(run.history["epochs"]),
                "torch_threads": torch.get_num_threads()}
    flops_per_step = run.history.get("flops_per_step")  # counted by an earlier attempt, if any
    if flops_per_step is not None:
        manifest["flops_per_step"] = flops_per_step
    if run.set_aside_why is not None:
        manifest["set_aside"] = run.set_aside_why
    skipped_before = -run.epoch_skipped  # counts since the epoch began = counter now - skipped_before
    segment_skips = run.epoch_skipped.clone()  # the epoch's counts when the current segment began
    started = time.time()
    batches, stop_after_epoch = None, None
    log_every = spec.get("log_every_steps", LOG_EVERY_STEPS)
    metrics = MetricsLog(out_dir, step, spec) if is_master else None
    warning = PreemptionWarning()
    with warning:
        for epoch in range(start_epoch, spec["num_checkpoints"]):
            model.train()
            epoch_start, window_start, window_samples, epoch_first_step = time.time(), time.time(), 0, step
            window_data_seconds = 0.0
            while step < spec["checkpoint_steps"][epoch]:
                if batches is None:
                    batches = segment_batches(run, segment_start)
                    for _ in range(step - segment_start):  # read again, not trained on: what the segment drew so far
                        next(batches)
                    if resumed_rng is not None:  # this rank's generators as they were at the signal
                        if len(resumed_rng) == world_size:
                            _set_rng_state(resumed_rng[rank], device)
                        else:
                            log.warning("resume.pt holds the RNG states of %d ranks, this job has %d: not restored",
                                        len(resumed_rng), world_size)
                        resumed_rng = None
                waited = time.time()
                batch = next(batches)
                window_data_seconds += time.time() - waited
                if flops_per_step is None:  # counted once a run, on its first real step
                    losses, flops_per_step = flops.count_flops(train_step, run, batch, step)
                    flops_per_step = _summed_over_ranks(flops_per_step, device, world_size)
                    manifest["flops_per_step"] = flops_per_step
                else:
                    losses = train_step(run, batch, step)
                step += 1
                run.step = step
                window_samples += spec["global_batch_size"]
                if is_master and (step % log_every == 0 or step == total_steps):
                    window_seconds = max(time.time() - window_start, 1e-9)
                    rate = window_samples / window_seconds
                    log.info("epoch %d step %d/%d seen %s | %s | lr %.2e | scale %.1f | %.0f samples/s | skipped here %s",
                             epoch + 1, step, total_steps, f"{step * spec['global_batch_size']:,}",
                             " ".join(f"{k} {v.item():.4f}" for k, v in losses.items()),
                             optimizer.param_groups[0]["lr"], model.logit_scale.exp().item(), rate,
                             counter.totals() or "none")
                    metrics.write({
                        "step": step, "seen_samples": step * spec["global_batch_size"], "epoch": epoch + 1,
                        "lr": optimizer.param_groups[0]["lr"], "logit_scale": model.logit_scale.exp().item(),
                        "loss": sum(v.item() for v in losses.values()), **{k: v.item() for k, v in losses.items()},
                        # the DR loss's terms as it computes them (weighted): CLIP and distillation (image->text,
                        # text->image) on the real captions and on the synthetic ones
                        **{f"loss/{k}": v.item() for k, v in getattr(run.loss_fn, "terms", {}).items()},
                        "samples_per_second": rate, "samples_per_second_per_gpu": rate / world_size,
                        "data_wait_share": window_data_seconds / window_seconds,
                        "skipped_samples": counter.totals()})
                    window_start, window_samples, window_data_seconds = time.time(), 0, 0.0
                if step in boundaries:
                    batches, segment_start = None, step  # the next segment draws a stream of its own
                    if step < spec["checkpoint_steps"][epoch]:
                        segment_skips = skipped_over_ranks(counter, device, world_size) - skipped_before
                        if is_master:
                            _save_checkpoint(out_dir, None, spec, run.stamp, model, optimizer, scaler, step,
                                             step * spec["global_batch_size"],
                                             _history(manifest),
                                             epoch_skipped=segment_skips.tolist())
                            log.info("resume checkpoint at step %d", step)
                signum = warning.agreed(device, world_size)
                if signum is not None and step < spec["checkpoint_steps"][epoch]:
                    if step not in boundaries:  # (at a boundary, resume.pt is this step's already)
                        rng = _rng_states(device, world_size)
                        if is_master:
                            # The counts as the segment began: the rerun reads the segment again and counts it again.
                            _save_checkpoint(out_dir, None, spec, run.stamp, model, optimizer, scaler, step,
                                             step * spec["global_batch_size"],
                                             _history(manifest),
                                             epoch_skipped=segment_skips.tolist(), segment_start=segment_start,
                                             rng=rng)
                    _stop_preempted(signum, step, world_size)
                stop_after_epoch = signum  # at an epoch's end: stop once its checkpoint is written
            epoch_seconds = time.time() - epoch_start
            seen = step * spec["global_batch_size"]
            epoch_samples = (step - epoch_first_step) * spec["global_batch_size"]
            skipped_total = skipped_over_ranks(counter, device, world_size)
            skipped_in_epoch = counts_by_reason(skipped_total - skipped_before)
            skipped_before = skipped_total
            segment_skips = torch.zeros_like(segment_skips)
            if is_master:
                manifest["epochs"].append({"epoch": epoch + 1, "step": step, "seen_samples": seen,
                                           "seconds": round(epoch_seconds, 2),
                                           "samples_per_second": round(epoch_samples / epoch_seconds, 1),
                                           "skipped_samples": skipped_in_epoch})
                _save_checkpoint(out_dir, epoch + 1, spec, run.stamp, model, optimizer, scaler, step, seen,
                                 _history(manifest))
                log.info("checkpoint epoch_%d.pt: %s seen samples, %.1f s, %.0f samples/s, skipped (all ranks) %s",
                         epoch + 1, f"{seen:,}", epoch_seconds, epoch_samples / epoch_seconds,
                         {k: v for k, v in skipped_in_epoch.items() if v} or "none")
            if stop_after_epoch is not None and step < total_steps:
                _stop_preempted(stop_after_epoch, step, world_size)
    if is_master:
        metrics.close()
        if flops_per_step is not None:
            manifest["flops"] = {"per_step": flops_per_step, "steps": total_steps,
                                 "seen_samples": total_steps * spec["global_batch_size"],
                                 "total": flops_per_step * total_steps,
                                 "per_seen_sample": flops_per_step / spec["global_batch_size"],
                                 "counted": "one optimizer step with torch's FlopCounterMode (forward, backward, "
                                            "loss; every rank), times the run's steps"}
        # Per-epoch counts include what the loader read ahead before a segment ended (that
        # read-ahead is dropped with the segment's loader); the run total is their sum over
        # every attempt, so nothing is counted twice or lost.
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


def _history(manifest: dict) -> dict:
    """What a checkpoint carries for the attempts after it: the epochs so far, the attempt count
    and the FLOPs of one step (counted once per run)."""
    history = {"epochs": manifest["epochs"], "attempts": manifest["attempts"]}
    if "flops_per_step" in manifest:
        history["flops_per_step"] = manifest["flops_per_step"]
    return history


def _summed_over_ranks(value: int, device: torch.device, world_size: int) -> int:
    if world_size == 1:
        return int(value)
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def _stop_preempted(signum: int, step: int, world_size: int) -> None:
    """Every rank leaves together, once rank 0's checkpoint is on disk (a launcher that sees one
    worker end stops the others)."""
    log.warning("%s received: stopping after step %d, resume.pt written; a rerun resumes there",
                signal.Signals(signum).name, step)
    if world_size > 1:
        torch.distributed.barrier()
    raise Preempted(signum, step)


def _rng_states(device: torch.device, world_size: int) -> list[dict]:
    """Every rank's torch generators, rank order (a collective with several ranks)."""
    state = _rng_state(device)
    if world_size == 1:
        return [state]
    states = [None] * world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_step(run: Run, batch: list, step: int) -> dict:
    """One optimizer step as open_clip_train's ``train_one_epoch`` takes it: the lr of ``step``
    (``run.adjust_lr``), the batch onto the run's device, amp with GradScaler on CUDA, clipping,
    the temperature clamp; returns the losses. A non-finite loss stops the run. With
    ``run.teachers`` (online distillation) they embed the batch first, inside the step (and its
    FLOP count). With ``accum_freq`` k > 1 the batch goes through in k micro-batches
    (``accumulate_gradients``) and the step is the same step; clipping, the scaler and the clamp
    still act once."""
    spec, model, optimizer, scaler = run.spec, run.model, run.optimizer, run.scaler
    if run.adjust_lr is not None:
        run.adjust_lr(step)
    # captions travel as text for the online teachers (a list, not a tensor)
    batch = [t.to(run.device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch]
    optimizer.zero_grad(set_to_none=True)
    if spec.get("accum_freq", 1) > 1:
        losses = accumulate_gradients(run, batch, step)
    else:
        if run.teachers is not None:
            batch = run.teachers.targets(batch)
        with run.autocast():
            losses = _forward(run.training_model, model, run.loss_fn, batch, spec)
            total = sum(losses.values())
        _check_finite(losses, total, step)
        _backward(total, scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if spec["grad_clip_norm"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip_norm"])
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():  # open_clip clamps the learnable temperature at 100
        model.logit_scale.clamp_(0, math.log(100))
    return losses


def _check_finite(losses: dict, total: torch.Tensor, step: int) -> None:
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss at step {step}: {({k: v.item() for k, v in losses.items()})}")


def _backward(total: torch.Tensor, scaler) -> None:
    (scaler.scale(total) if scaler is not None else total).backward()


def split_batch(batch: list, parts: int) -> list[list]:
    """``parts`` micro-batches of consecutive rows: tensors and caption lists alike."""
    rows = len(batch[0])
    if rows % parts:
        raise ValueError(f"a batch of {rows} rows does not split into {parts} micro-batches (accum_freq)")
    size = rows // parts
    return [[column[i * size:(i + 1) * size] for column in batch] for i in range(parts)]


def _batch_norm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]


def _batch_norm_buffers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, saved copy) of every batch-norm running statistic, to undo the caching pass's update."""
    return [(buffer, buffer.detach().clone()) for module in _batch_norm_layers(model) for buffer in module.buffers()]


_SYNCED_BEFORE: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()  # DDP modules past their first step


def accumulate_gradients(run: Run, batch: list, step: int) -> dict:
    """The gradient of the whole batch's loss, in ``accum_freq`` micro-batches (open_clip's exact
    accumulation): first every micro-batch's features without gradients (and, online, its teacher
    embeddings: the teachers see each micro-batch once); then for each micro-batch j its features
    again with gradients, the loss of the whole batch over j's fresh features and the others'
    cached ones, and a backward. The contrastive and distillation terms compare whole-batch
    similarity matrices, so the k backwards sum to exactly the whole batch's gradient, under DDP
    too (every rank takes micro-batch j together; its gathers see j's fresh rows of every rank).
    The learnable temperature enters the loss in every pass but keeps its gradient in one (the
    last), or it would count k times. Each micro-batch replays the RNG state of its caching pass,
    so a random layer draws the same both times. Only the last backward syncs DDP's gradients."""
    spec, model, training_model, autocast = run.spec, run.model, run.training_model, run.autocast
    parts = split_batch(batch, spec["accum_freq"])
    if run.teachers is not None:
        parts = [run.teachers.targets(part) for part in parts]
    device = next(model.parameters()).device
    saved_statistics = _batch_norm_buffers(model)
    cached, rng_before = [], []
    with autocast(), torch.no_grad():
        for part in parts:
            rng_before.append(_rng_state(device))
            cached.append(_features(model, part, spec))
    for buffer, saved in saved_statistics:  # batch norm's running statistics move once, in the passes below
        buffer.copy_(saved)
    rng_after = _rng_state(device)
    targets = _concat_features([_teacher_targets(part, spec) for part in parts])
    last = len(parts) - 1
    reported = None
    for j, part in enumerate(parts):
        _set_rng_state(rng_before[j], device)
        # DDP's static graph is recorded in a synced backward: a process's first step syncs every pass
        syncs = j == last or not hasattr(training_model, "no_sync") or training_model not in _SYNCED_BEFORE
        with (nullcontext() if syncs else training_model.no_sync()):
            with autocast():
                fresh = _features(training_model, part, spec)
                features = _concat_features([fresh if i == j else cached[i] for i in range(len(parts))])
                features["logit_scale"] = fresh["logit_scale"] if j == last else _without_gradient(fresh["logit_scale"])
                losses = _loss(run.loss_fn, features, targets, spec)
                total = sum(losses.values())
            if reported is None:
                _check_finite(losses, total, step)
                reported = {name: value.detach() for name, value in losses.items()}
            _backward(total, run.scaler)
    _set_rng_state(rng_after, device)
    if hasattr(training_model, "no_sync"):
        _SYNCED_BEFORE.add(training_model)
    return reported


def _without_gradient(value: torch.Tensor) -> torch.Tensor:
    """``value``, passing a zero gradient back: its parameter still takes part in the backward, as
    DDP's static graph expects of every parameter in every backward."""
    return value.detach() + value * 0


def _concat_features(pieces: list[dict]) -> dict:
    """Micro-batches' features as one batch (rows in batch order); the temperature of the first."""
    return {name: (pieces[0][name] if name == "logit_scale" or pieces[0][name] is None
                   else torch.cat([piece[name] for piece in pieces]))
            for name in pieces[0]}


def _features(training_model, batch, spec: dict) -> dict:
    """The student's features of a batch: image, text (and synthetic-caption text) rows, temperature."""
    images, texts = batch[0], batch[1]
    if not spec["dr"] or not spec["distill"].get("synthetic_captions", True):
        out = training_model(images, texts)
        return {"image_features": out["image_features"], "text_features": out["text_features"],
                "syn_text_features": None, "logit_scale": out["logit_scale"]}
    # One text-encoder pass over real + synthetic captions, as the reference does.
    out = training_model(images, torch.cat([texts, batch[4]]))
    text_features, syn_features = out["text_features"].chunk(2)
    return {"image_features": out["image_features"], "text_features": text_features,
            "syn_text_features": syn_features, "logit_scale": out["logit_scale"]}


def _teacher_targets(batch, spec: dict) -> dict:
    """The teachers' embeddings a DR batch carries (image, caption, synthetic caption), restricted to
    the distilled members' columns; empty for a plain batch."""
    if not spec["dr"]:
        return {}
    image_emb, text_emb, syn_emb = batch[2], batch[3], batch[5]
    columns = teacher_columns(spec["distill"])
    if columns is not None:  # distil from some members only: their slices of the stored embeddings
        index = torch.tensor(columns, device=image_emb.device)
        image_emb, text_emb, syn_emb = image_emb[:, index], text_emb[:, index], syn_emb[:, index]
    return {"image_emb": image_emb, "text_emb": text_emb, "syn_emb": syn_emb}


def _loss(loss_fn, features: dict, targets: dict, spec: dict) -> dict:
    if not spec["dr"]:
        return {"contrastive_loss": loss_fn(features["image_features"], features["text_features"],
                                            features["logit_scale"])}
    if features["syn_text_features"] is None:
        return loss_fn(features["image_features"], features["text_features"], features["logit_scale"],
                       targets["image_emb"], targets["text_emb"])
    return loss_fn(features["image_features"], features["text_features"], features["logit_scale"],
                   targets["image_emb"], targets["text_emb"], features["syn_text_features"], targets["syn_emb"])


def _forward(training_model, model, loss_fn, batch, spec: dict) -> dict:
    """The losses of one batch in one pass (no accumulation)."""
    return _loss(loss_fn, _features(training_model, batch, spec), _teacher_targets(batch, spec), spec)


def _save_checkpoint(out_dir, epoch, spec, stamp, model, optimizer, scaler, step, seen, history,
                     epoch_skipped: list[int] | None = None, segment_start: int | None = None,
                     rng: dict | None = None) -> None:
    """``epoch`` None: the intra-epoch resume checkpoint, with the epoch's skip counts so far.
    ``run`` and ``data_stamp`` say what it belongs to (``prepare_run_folder`` compares them).
    One written on a preemption signal, inside a segment, also carries where the segment
    began and every rank's RNG state (``segment_start``, ``rng``)."""
    checkpoint = {"epoch": epoch or len(history["epochs"]), "name": spec["name"], "model_name": spec["model"],
                  "step": step, "seen_samples": seen, "state_dict": model.state_dict(),
                  "optimizer": optimizer.state_dict(), "run": spec, "data_stamp": stamp, "history": history}
    if epoch_skipped is not None:
        checkpoint["epoch_skipped"] = epoch_skipped
    if segment_start is not None:
        checkpoint.update(segment_start=segment_start, rng=rng)
    if scaler is not None:
        checkpoint["scaler"] = scaler.state_dict()
    path = checkpoint_path(out_dir, epoch)
    with shards.atomic_output(path) as partial:
        torch.save(checkpoint, partial)
    if epoch is None:
        return
    resume = checkpoint_path(out_dir, None)
    resume.unlink(missing_ok=True)  # superseded: an epoch checkpoint is at least as new
    if spec["save_most_recent"]:  # open_clip's --save-most-recent: an extra epoch_latest.pt
        with shards.atomic_output(path.with_name("epoch_latest.pt")) as partial:
            shutil.copyfile(path, partial)
