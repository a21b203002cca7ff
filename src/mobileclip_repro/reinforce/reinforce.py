"""DataCompDR generation: turn DataComp shards into reinforced shards (docs/reference.md §2-4).

For each image: ``num_samples`` random-resized-crop + RandAugment draws, stored as
``param_aug`` entries and embedded by the teacher ensemble *through the same replay the
student will use* (so ``image_emb[a]`` is exactly the teachers' view of ``param_aug[a]``);
the ground-truth caption and the synthetic captions embedded by the same teachers.
One captioner writes v1's ``syn_text`` set, its embeddings appended to ``text_emb``;
several (``{suffix: captioner}``) write a ``syn_text_<suffix>`` set each, with its
embeddings in ``syn_text_<suffix>_emb`` (the v2 layout, docs/reference.md §9).

One output shard per input shard, same relative path (``17/00000042.tar`` stays nested),
same keys, written atomically: a rerun skips every shard whose tar and per-shard manifest
are complete, and a half-written one is never mistaken for done. An input tar that is cut
(or unreadable past some point) gives a ``partial`` shard: the samples before the damage,
a manifest saying why, a failed command, and a redo on the next run. Augmentations are drawn
from a generator seeded by (seed, sample key), so a rerun, on any number of workers, draws
the same crops.

The same code path serves the toy DAG (every shard of ``--datacomp-dir``) and the hub DAG
(``--shard-spec/--group/--group-size``: one group of hub shard ids per job, a group
manifest with per-shard entries and totals). Per shard the work is pipelined:

* data: decode + sha256 check + replay of the ``num_samples`` augmentations (and the
  captioner's own preprocessing) run in ``--workers`` DataLoader processes, prefetched
  deep enough to keep two teacher batches ready while the teachers run; views travel as
  uint8 (pinned for CUDA) and are scaled and normalized on the teachers' device;
* teachers and captioner: batched, eval mode, ``torch.inference_mode``, on CUDA under
  bf16 autocast by default (fp32 on the CPU);
* writing: records are encoded (npz, or bf16 ``pth.gz`` gzipped at level 1) and written by
  a background thread while the next batch runs.

Each shard's manifest says where its wall time went (``teacher_seconds`` / ``seconds`` =
``teacher_share``; data wait, captioner, writing), so a slow stage shows up in the numbers.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from mobileclip_repro import devices, hub, replay, shards
from mobileclip_repro.config import non_finite_message, non_finite_number
from mobileclip_repro.flops import PerItemFlops
from mobileclip_repro.seeding import seed_from
from mobileclip_repro.teachers import ReinforceConfig, SyntheticCaptioner, TeacherEnsemble, build_captioner

log = logging.getLogger(__name__)
DTYPES = ("float32", "bf16")
AMP_MODES = ("auto", "bf16", "fp16", "off")
GROUP_MANIFEST_SCHEMA = "mobileclip_repro/reinforce-manifest/1"
# What decides a DR shard's content: a finished shard made with other values is not silently reused.
CONTENT_SETTINGS = ("teachers", "pretrained_entries", "num_samples", "captioner", "num_syn_captions", "seed", "dtype")
# Skip reasons that say the input tar itself was cut or broken (not one bad sample): the DR shard
# then holds only the samples before the damage, so it is "partial", not "ok", and is redone.
INPUT_DAMAGE_REASONS = {"truncated_shard": "truncated (cut before its end-of-archive blocks)",
                        "unreadable_shard": "unreadable past some point (cut inside a member, or corrupt)"}
_TIMINGS = ("seconds", "teacher_seconds", "image_teacher_seconds", "text_teacher_seconds", "captioner_seconds",
            "data_seconds", "upload_seconds", "write_seconds", "other_seconds", "writer_busy_seconds")


@dataclass
class PreparedSample:
    """One DataComp sample with its augmentations drawn and replayed, ready for the teachers."""
    key: str
    uid: str
    sha256: str
    url: str
    caption: str
    meta: dict
    param_aug: list
    # [num_samples, 3, S, S] uint8: the replayed crops before to-tensor + normalize, which
    # normalize_views does on the teachers' device (a quarter of the bytes between processes).
    views: torch.Tensor
    # What the captioner looks at, only when it looks at pixels: the decoded image, or its
    # image_transform output when it has one (made in the data workers, not the main loop);
    # with several captioners, a mapping syn.json key -> that, for those that look at pixels.
    caption_input: Image.Image | torch.Tensor | dict | None

    def pin_memory(self) -> "PreparedSample":
        """Called by the DataLoader's pinning thread: page-locked views copy to the GPU asynchronously."""
        self.views = self.views.pin_memory()
        return self


@dataclass
class Skipped:
    key: str
    reason: str


@dataclass
class ShardReport:
    """Counts and where the wall time of one shard went.

    ``seconds`` is the shard's wall time; the main loop's parts are ``data_seconds`` (waiting
    for prepared samples: the decode + replay itself when there are no workers),
    ``upload_seconds`` (a batch's views to the teachers' device, normalized there),
    ``captioner_seconds``, ``image_teacher_seconds``, ``text_teacher_seconds`` and
    ``write_seconds`` (waiting for the writer thread); ``other_seconds`` is the rest.
    ``writer_busy_seconds`` is the writer thread's own time, overlapped with the rest.
    """
    shard: str
    samples_in: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    image_teacher_seconds: float = 0.0
    text_teacher_seconds: float = 0.0
    captioner_seconds: float = 0.0
    data_seconds: float = 0.0
    upload_seconds: float = 0.0
    write_seconds: float = 0.0
    writer_busy_seconds: float = 0.0

    @property
    def teacher_seconds(self) -> float:
        return self.image_teacher_seconds + self.text_teacher_seconds

    @property
    def input_damage(self) -> str | None:
        """Why the input tar could not be read to its end, None when it was."""
        damaged = [what for reason, what in INPUT_DAMAGE_REASONS.items() if self.skipped.get(reason)]
        return "; ".join(damaged) or None

    def as_dict(self) -> dict:
        accounted = (self.teacher_seconds + self.captioner_seconds + self.data_seconds + self.upload_seconds
                     + self.write_seconds)
        damage = self.input_damage
        # "partial": the DR shard is a faithful reinforcement of the samples before the damage (kept,
        # so that training still has them), but not of the shard; a rerun redoes it
        reason = {} if damage is None else {
            "reason": f"the input shard is {damage}: this DR shard holds only the {self.written} samples "
                      f"written from the part before it; fix the DataComp shard (fetch or copy it again) and "
                      f"rerun to redo it"}
        return {
            "shard": self.shard,
            "status": "ok" if damage is None else "partial",
            **reason,
            "samples_in": self.samples_in,
            "written": self.written,
            "skipped": dict(sorted(self.skipped.items())),
            "seconds": round(self.seconds, 3),
            "teacher_seconds": round(self.teacher_seconds, 3),
            "teacher_share": round(self.teacher_seconds / self.seconds, 4) if self.seconds else None,
            "image_teacher_seconds": round(self.image_teacher_seconds, 3),
            "text_teacher_seconds": round(self.text_teacher_seconds, 3),
            "captioner_seconds": round(self.captioner_seconds, 3),
            "data_seconds": round(self.data_seconds, 3),
            "upload_seconds": round(self.upload_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
            "other_seconds": round(max(0.0, self.seconds - accounted), 3),
            "writer_busy_seconds": round(self.writer_busy_seconds, 3),
            "samples_per_second": round(self.samples_in / self.seconds, 2) if self.seconds else None,
        }


def draw_param_aug(config: ReinforceConfig, width: int, height: int, generator: torch.Generator) -> list:
    """``config.num_samples`` compressed augmentations for a ``width`` x ``height`` image."""
    return [config.draw_param_aug(width, height, generator) for _ in range(config.num_samples)]


def augmentation_generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_from("param_aug", seed, key))


def prepare_sample(raw: dict, config: ReinforceConfig, seed: int, keep_image: bool,
                   image_transform=None) -> PreparedSample | Skipped:
    """Validate one raw DataComp sample and replay its augmentations; a Skipped names why not.

    ``image_transform``: the captioner's (None: it takes the PIL image), or with several
    captioners a mapping syn.json key -> transform or None, one caption input per entry.
    """
    key = raw["__key__"]
    if shards.OVERSIZED in raw:
        return Skipped(key, "oversized_member")
    if not all(ext in raw for ext in shards.DATACOMP_KEYS):
        return Skipped(key, "missing_key")
    try:
        meta = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Skipped(key, "bad_json")
    if not isinstance(meta, dict) or "uid" not in meta or "sha256" not in meta:
        return Skipped(key, "missing_key")
    if shards.sha256_hex(raw["jpg"]) != str(meta["sha256"]).lower():
        return Skipped(key, "sha256_mismatch")
    try:
        caption = raw["txt"].decode("utf-8")
    except UnicodeDecodeError:
        return Skipped(key, "undecodable_caption")
    try:
        image = shards.decode_image(raw["jpg"])
    except (OSError, ValueError, Image.DecompressionBombError):
        return Skipped(key, "undecodable_image")
    url = raw["url.txt"].decode("utf-8", errors="replace") if "url.txt" in raw else meta.get("url", "")
    param_aug = draw_param_aug(config, image.width, image.height, augmentation_generator(seed, key))
    views = torch.stack([TF.pil_to_tensor(replay.replay_pil(image, entry, config.crop_size, config.interpolation))
                         for entry in param_aug])
    caption_input = None
    if keep_image and isinstance(image_transform, Mapping):
        caption_input = {key: transform(image) if transform is not None else image
                         for key, transform in image_transform.items()}
    elif keep_image:
        caption_input = image_transform(image) if image_transform is not None else image
    return PreparedSample(key, str(meta["uid"]), meta["sha256"], url, caption, meta, param_aug, views, caption_input)


class _PreparedShard(torch.utils.data.IterableDataset):
    """The samples of one shard, prepared in file order; worker w takes samples w, w+k, ...

    A DataLoader reads its workers round-robin, so with this split the samples come back
    in file order whatever the number of workers.
    """

    def __init__(self, path: Path, config: ReinforceConfig, seed: int, keep_images: bool, image_transform=None):
        self.path, self.config, self.seed, self.keep_images = path, config, seed, keep_images
        self.image_transform = image_transform

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        try:
            for position, raw in enumerate(shards.iter_raw_samples(self.path)):
                if position % workers == worker:
                    yield prepare_sample(raw, self.config, self.seed, self.keep_images, self.image_transform)
        except Exception as error:  # noqa: BLE001 - a truncated or corrupt tar: keep what came before it
            if worker == 0:  # every worker hits the same tail; count it once
                truncated = isinstance(error, shards.ShardTruncated)
                log.warning("%s: %s after the samples read so far (%s: %s)", self.path,
                            "truncated" if truncated else "unreadable", type(error).__name__, error)
                yield Skipped(f"{self.path.name}:<{'missing' if truncated else 'unreadable'} tail>",
                              "truncated_shard" if truncated else "unreadable_shard")


def _unbatched(item):
    return item


def encode_pth(image_emb: torch.Tensor, text_emb: torch.Tensor, extra: dict[str, torch.Tensor] | None = None) -> bytes:
    """The DataCompDR-12M-bf16 payload before compression: ``torch.save`` of bf16 tensors
    (``image_emb``, ``text_emb``, then ``extra`` by name: v2's ``<set>_emb``).

    Stored under the ``pth.gz`` key; the tar writer gzips it.
    """
    import io

    buffer = io.BytesIO()
    tensors = {"image_emb": image_emb, "text_emb": text_emb, **(extra or {})}
    # clone(): torch.save writes a view's whole storage, i.e. the whole batch for a row slice.
    torch.save({name: tensor.to(torch.bfloat16).clone(memory_format=torch.contiguous_format)
                for name, tensor in tensors.items()}, buffer)
    return buffer.getvalue()


def _encode_record(sample: dict) -> dict:
    """TarWriter encoder for DR records: text as UTF-8, ``*.gz`` members gzipped at level 1.

    webdataset's default encoder gzips at level 9 and stamps the current time in the gzip
    header: ~3x slower for bf16 embeddings that barely compress anyway (89.8 vs 89.0 kB a
    sample), and not byte-reproducible. Readers only gunzip, so the level is invisible.
    """
    encoded = {}
    for key, value in sample.items():
        if not key.startswith("__"):
            if isinstance(value, str):
                value = value.encode("utf-8")
            if key.endswith(".gz"):
                value = gzip.compress(value, compresslevel=1, mtime=0)
        encoded[key] = value
    return encoded


class _BackgroundWriter:
    """Builds and writes DR records on a thread of its own, batch by batch, in submission order.

    ``submit`` returns as soon as the batch is queued (it waits only when ``depth`` batches
    are already waiting), so encoding and gzip overlap the next teacher batch. An error on
    the thread is raised in the caller at the next ``submit`` or on exit; when the caller
    fails, queued batches are dropped, not written (the tar is discarded anyway).
    """

    def __init__(self, writer: wds.TarWriter, dtype: str, report: ShardReport, depth: int = 2,
                 appended: bool = True):
        self.writer, self.dtype, self.report, self.appended = writer, dtype, report, appended
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="dr-writer", daemon=True)

    def __enter__(self) -> "_BackgroundWriter":
        self._thread.start()
        return self

    def submit(self, batch: tuple) -> None:
        self._raise_error()
        start = time.perf_counter()
        self._queue.put(batch)
        self.report.write_seconds += time.perf_counter() - start

    def __exit__(self, exc_type, exc, traceback) -> bool:
        start = time.perf_counter()
        self._abort = exc_type is not None
        self._queue.put(None)
        self._thread.join()
        self.report.write_seconds += time.perf_counter() - start
        if exc_type is None:
            self._raise_error()
        return False

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the DR shard failed: {self._error!r}") from self._error

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is not None or self._abort:
                continue  # keep draining so that submit() never blocks forever
            start = time.perf_counter()
            try:
                self._write(*batch)
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller
                self._error = error
            self.report.writer_busy_seconds += time.perf_counter() - start

    def _write(self, samples: list[PreparedSample], syn_sets: list[dict[str, list[str]]], image_emb: torch.Tensor,
               text_emb: torch.Tensor) -> None:
        """``text_emb`` holds, per sample, the ground truth's row then each set's rows in order."""
        image_np, text_np = image_emb.numpy(), text_emb.numpy()
        if self.dtype == "bf16":
            # One conversion per batch, not per sample: a CPU tensor op has a fixed cost (the
            # thread pool's wake-up; up to ~15 ms on a busy 2-core machine, whatever the size).
            image_emb, text_emb = image_emb.to(torch.bfloat16), text_emb.to(torch.bfloat16)
        image_rows = text_rows = 0
        for sample, sets in zip(samples, syn_sets):
            image_slice = slice(image_rows, image_rows + len(sample.param_aug))
            truth = slice(text_rows, text_rows + 1)
            set_rows, text_rows = {}, truth.stop
            for name, captions in sets.items():
                set_rows[name] = slice(text_rows, text_rows + len(captions))
                text_rows += len(captions)
            image_rows = image_slice.stop
            if self.appended:
                [syn] = sets.values()
                rows = slice(truth.start, text_rows)
                record = shards.dr_record(sample.key, sample.uid, sample.sha256, sample.url, syn, sample.param_aug,
                                          image_np[image_slice], text_np[rows])
                if self.dtype == "bf16":
                    del record["npz"]
                    record["pth.gz"] = encode_pth(image_emb[image_slice], text_emb[rows])
            else:
                record = shards.dr_record(sample.key, sample.uid, sample.sha256, sample.url, None, sample.param_aug,
                                          image_np[image_slice], text_np[truth],
                                          {name: (sets[name], text_np[rows]) for name, rows in set_rows.items()})
                if self.dtype == "bf16":
                    del record["npz"]
                    record["pth.gz"] = encode_pth(image_emb[image_slice], text_emb[truth], {
                        name + shards.EMBEDDING_SUFFIX: text_emb[rows] for name, rows in set_rows.items()})
            self.writer.write(record)
            self.report.written += 1


_END = object()


class Reinforcer:
    """Teachers + captioner(s) + config: reinforces one shard at a time.

    ``captioner``: one captioner (v1's ``syn_text``, embeddings appended to ``text_emb``), or a
    mapping syn.json key -> captioner (a set each, embeddings in ``<key>_emb``: v2).
    ``batch_size`` is the teachers' batch (views, or captions, per forward). A batch of
    ``images_per_batch`` images is gathered so that both its views and its captions fill at
    least one teacher batch; the captioners see the same images at once.
    """

    def __init__(self, config: ReinforceConfig, teachers: TeacherEnsemble,
                 captioner: SyntheticCaptioner | Mapping[str, SyntheticCaptioner], *,
                 seed: int = 0, dtype: str = "float32", batch_size: int = 256, workers: int = 0):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if batch_size < 1 or workers < 0:
            raise ValueError(f"batch_size must be positive and workers non-negative, got {batch_size}, {workers}")
        self.appended = not isinstance(captioner, Mapping)
        self.captioners = {shards.SYN_TEXT: captioner} if self.appended else dict(captioner)
        if not self.captioners:
            raise ValueError("no captioner")
        self.config, self.teachers = config, teachers
        self.seed, self.dtype, self.batch_size, self.workers = seed, dtype, batch_size, workers
        # The compute ledger: FLOPs of the teachers' image and text forwards and of the captioners
        # (each entry point counted once with FlopCounterMode, then scaled by its batch).
        self.metered = {"teacher_images": PerItemFlops(teachers.encode_images),
                        "teacher_texts": PerItemFlops(teachers.encode_texts),
                        **{f"captioner_{key}": PerItemFlops(captioner.caption_batch)
                           for key, captioner in self.captioners.items()}}

    def flops(self) -> dict:
        """FLOPs spent so far by each model entry point, their total and the items each saw."""
        counted = {name: int(meter.total) for name, meter in self.metered.items()}
        return {**counted, "total": sum(counted.values()),
                "items": {name: meter.items for name, meter in self.metered.items()}}

    @property
    def images_per_batch(self) -> int:
        captions = sum(captioner.num_captions for captioner in self.captioners.values())
        per_image = min(self.config.num_samples, 1 + captions)
        return max(1, math.ceil(self.batch_size / per_image))

    def _image_transforms(self):
        """What ``prepare_sample`` makes of each image for the captioners (its ``image_transform``)."""
        if self.appended:
            return getattr(self.captioners[shards.SYN_TEXT], "image_transform", None)
        return {key: getattr(captioner, "image_transform", None)
                for key, captioner in self.captioners.items() if captioner.needs_images}

    def loader(self, source: Path) -> torch.utils.data.DataLoader:
        """The prepared samples of ``source``, in file order, from ``workers`` processes.

        The workers keep two image batches in flight (prefetch), so that decoding and replaying
        batch k+1 overlaps the teachers' forward of batch k; for CUDA teachers the views arrive
        in page-locked memory (the DataLoader's pinning thread), ready for an async copy.
        """
        dataset = _PreparedShard(source, self.config, self.seed,
                                 any(captioner.needs_images for captioner in self.captioners.values()),
                                 self._image_transforms())
        options = {}
        if self.workers > 0:
            options["prefetch_factor"] = max(2, math.ceil(2 * self.images_per_batch / self.workers))
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.workers,
                                           collate_fn=_unbatched, pin_memory=self.teachers.device.type == "cuda",
                                           **options)

    def reinforce_shard(self, source: Path, target: Path, progress: tqdm | None = None,
                        name: str | None = None) -> ShardReport:
        report = ShardReport(shard=name or source.name)
        start = time.perf_counter()
        pending: list[PreparedSample] = []
        with (shards.atomic_tar_writer(target, mtime=0, encoder=_encode_record) as writer,
              _BackgroundWriter(writer, self.dtype, report, appended=self.appended) as output):
            waited = time.perf_counter()
            samples = iter(self.loader(source))  # starts the workers
            report.data_seconds += time.perf_counter() - waited
            while True:
                waited = time.perf_counter()
                item = next(samples, _END)
                report.data_seconds += time.perf_counter() - waited
                if item is _END:
                    break
                report.samples_in += 1
                if isinstance(item, Skipped):
                    report.skipped[item.reason] += 1
                else:
                    pending.append(item)
                if len(pending) >= self.images_per_batch:
                    self._flush(pending, output, report)
                    pending = []
                if progress is not None:
                    progress.update(1)
            self._flush(pending, output, report)
        report.seconds = time.perf_counter() - start
        return report

    def _flush(self, pending: list[PreparedSample], output: _BackgroundWriter, report: ShardReport) -> None:
        if not pending:
            return
        syn_sets: list[dict[str, list[str]]] = [{} for _ in pending]
        for key, captioner in self.captioners.items():
            if self.appended:
                inputs = [sample.caption_input for sample in pending]
                seeds = [seed_from("captions", self.seed, sample.key) for sample in pending]
            else:
                inputs = [(sample.caption_input or {}).get(key) for sample in pending]
                # a stream of draws per set: two captioners of one kind must not write the same captions
                seeds = [seed_from("captions", self.seed, sample.key, key) for sample in pending]
            start = time.perf_counter()
            captions = self.metered[f"captioner_{key}"](inputs, [sample.meta for sample in pending], seeds)
            report.captioner_seconds += time.perf_counter() - start
            counts = {len(per_image) for per_image in captions}
            if len(captions) != len(pending) or counts != {captioner.num_captions}:
                raise ValueError(f"captioner {key} returned {sorted(counts)} captions per image for {len(captions)} "
                                 f"of {len(pending)} images, expected {captioner.num_captions} each")
            for sets, per_image in zip(syn_sets, captions):
                sets[key] = per_image

        texts = [text for sample, sets in zip(pending, syn_sets)
                 for text in [sample.caption, *(caption for captions in sets.values() for caption in captions)]]
        start = time.perf_counter()
        device = self.teachers.device
        views = torch.cat([sample.views.to(device, non_blocking=True) for sample in pending])
        views = replay.normalize_views(views, self.config.mean, self.config.std)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # charge the copy to the upload, not to the teachers
        report.upload_seconds += time.perf_counter() - start
        start = time.perf_counter()
        image_emb = self.metered["teacher_images"](views)
        report.image_teacher_seconds += time.perf_counter() - start
        start = time.perf_counter()
        text_emb = self.metered["teacher_texts"](texts)
        report.text_teacher_seconds += time.perf_counter() - start
        del views
        for sample in pending:
            sample.views = sample.caption_input = None  # the writer needs neither: free them now
        output.submit((pending, syn_sets, image_emb, text_emb))


# ---------------------------------------------------------------------------------------------
# CLI


def parse_workers(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a non-negative integer, got {text!r}")
    return value


def _captioner_spec(args: argparse.Namespace):
    if args.captioner_json is not None:
        try:
            spec = json.loads(args.captioner_json)
        except json.JSONDecodeError as error:
            raise ValueError(f"--captioner-json is not valid JSON: {error}") from error
        found = non_finite_number(spec)  # named here, before any model loads (json reads NaN and Infinity)
        if found is not None:
            inner, value = found
            raise ValueError(f"--captioner-json: '{'.'.join(map(str, inner))}': {non_finite_message(value)}")
        return spec
    return args.captioner or "world"


def _shard_id(relative: str) -> str:
    return relative[:-len(".tar")] if relative.endswith(".tar") else relative


def _select_shards(args: argparse.Namespace) -> tuple[list[str], list[str], int | None]:
    """(selected shard ids in order, those of them missing in --datacomp-dir, group index or None).

    An id is a shard's path relative to --datacomp-dir without ``.tar`` (``00000042``,
    ``17/00000042``); its DR shard gets the same relative path under --out-dir.
    """
    if not args.datacomp_dir.is_dir():
        raise ValueError(f"--datacomp-dir {args.datacomp_dir} is not a directory")
    grouped = (args.group is not None, args.group_size is not None)
    if args.shard_spec is not None:
        if not all(grouped):
            raise ValueError("--shard-spec needs --group and --group-size")
        index, ids = hub.select_group(args.shard_spec, args.group, args.group_size)
        missing = [shard for shard in ids if not (args.datacomp_dir / f"{shard}.tar").is_file()]
        return ids, missing, index
    if any(grouped):
        raise ValueError("--group and --group-size go with --shard-spec")
    if args.shards is None:
        selected = [path.relative_to(args.datacomp_dir).as_posix() for path in shards.list_shards(args.datacomp_dir)]
        if not selected:
            raise ValueError(f"no *.tar shards in {args.datacomp_dir}")
        return [_shard_id(name) for name in selected], [], None
    missing = [name for name in args.shards if not (args.datacomp_dir / name).is_file()]
    if missing:
        raise ValueError(f"shards not found in {args.datacomp_dir}: {missing}")
    return [_shard_id(name) for name in args.shards], [], None


def _shard_manifest_path(target: Path) -> Path:
    return target.with_name(target.name + ".manifest.json")


def _finished_shard(source: Path, target: Path, settings: dict, replace_other_settings: bool = False) -> dict | None:
    """The per-shard manifest of a DR shard that a rerun can keep, else None (it is redone).

    Kept: a readable tar with a manifest, made from a DataComp shard of the same size.
    A finished shard made with other content settings (teachers, seed, ...) stops the run:
    redoing it silently would mix two reinforcements in one dataset. With
    ``replace_other_settings`` (the DAG's reinforce jobs, which own their shards and rerun
    exactly when those settings change) it is redone instead, so the job ends with every
    shard made with this run's settings.
    """
    manifest_path = _shard_manifest_path(target)
    if not (target.is_file() and manifest_path.is_file()):
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not shards.is_readable_tar(target):
        return None
    # made from a cut input (status partial; a manifest written before that status existed says
    # ok but counts the damage): redone, so that a fixed input is reinforced in full
    if manifest.get("status", "ok") != "ok" or any((manifest.get("skipped") or {}).get(reason)
                                                   for reason in INPUT_DAMAGE_REASONS):
        return None
    if manifest.get("source_bytes", source.stat().st_size) != source.stat().st_size:
        return None  # the DataComp shard was rewritten since
    for key in CONTENT_SETTINGS:
        if key in manifest and manifest[key] != settings[key]:
            message = f"{target} was reinforced with {key} = {manifest[key]!r}, this run has {settings[key]!r}"
            if replace_other_settings:
                tqdm.write(f"{message}: reinforcing it again")
                return None
            raise ValueError(f"{message}; delete it (and its manifest) or choose another --out-dir")
    return manifest


def resolve_workers(workers: str | int, device: torch.device) -> int:
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        return 0  # on the CPU the teachers want every core
    return max(1, min(16, len(os.sched_getaffinity(0)) - 1))


def _shards_flops(entries: list[dict]) -> int | None:
    done = [entry for entry in entries if entry.get("status") in ("ok", "partial")]
    if any(entry.get("flops") is None for entry in done):
        return None
    return sum(int(entry["flops"]) for entry in done)


def totals(entries: list[dict]) -> dict:
    """Sums over a group's shards: counts, skips by reason, seconds by stage, and the teachers' share.

    A partial shard's samples and seconds count (they were reinforced, and are on disk); it is
    counted in ``shards_partial``, not among the shards reinforced.
    """
    done = [entry for entry in entries if entry.get("status") in ("ok", "partial")]
    skipped = Counter()
    for entry in done:
        skipped.update(entry.get("skipped", {}))
    summed = {name: round(sum(float(entry.get(name) or 0.0) for entry in done), 3) for name in _TIMINGS}
    return {
        "shards": len(entries),
        "shards_reinforced": sum(entry["status"] == "ok" and not entry.get("resumed") for entry in done),
        "shards_resumed": sum(bool(entry.get("resumed")) for entry in done),
        "shards_partial": sum(entry["status"] == "partial" for entry in done),
        "shards_missing": sum(entry.get("status") == "missing" for entry in entries),
        "samples_in": sum(int(entry.get("samples_in", 0)) for entry in done),
        "written": sum(int(entry.get("written", 0)) for entry in done),
        "skipped": dict(sorted(skipped.items())),
        **summed,
        "teacher_share": round(summed["teacher_seconds"] / summed["seconds"], 4) if summed["seconds"] else None,
    }


def load_reinforce_config(path: Path) -> ReinforceConfig:
    """The reinforcement JSON, its numbers finite: json reads NaN and Infinity, and a NaN in
    ``normalize`` or the crop's ``scale`` would be written into every shard's embeddings."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raw = None  # ReinforceConfig.load says what is wrong with the file
    found = non_finite_number(raw)
    if found is not None:
        inner, value = found
        raise ValueError(f"--reinforce-config {path}: '{'.'.join(map(str, inner))}': {non_finite_message(value)}")
    return ReinforceConfig.load(path)


def _lock_slots(selected: list[str], group_index: int | None) -> list[int] | None:
    """The byte of the folder's lock file each shard of a hub group takes (its number); None,
    the whole folder, for every other selection."""
    numbers = [shard.replace("/", "") for shard in selected]
    if group_index is None or not all(number.isdigit() for number in numbers):
        return None
    return [int(number) for number in numbers]


def _reinforce_selected(args, selected, missing, group_index, config, sets, v1_layout, settings, start) -> int:
    for shard in missing:
        tqdm.write(f"{shard}.tar: not in {args.datacomp_dir} (lost by the fetch?), skipped")

    entries: dict[str, dict] = {shard: {"id": shard, "shard": f"{shard}.tar", "status": "missing"} for shard in missing}
    todo = []
    for shard in (shard for shard in selected if shard not in entries):
        source, target = args.datacomp_dir / f"{shard}.tar", args.out_dir / f"{shard}.tar"
        finished = _finished_shard(source, target, settings, args.replace_other_settings)
        if finished is None:
            todo.append(shard)
        else:
            entries[shard] = {**finished, "id": shard, "status": "ok", "resumed": True}
            tqdm.write(f"{shard}.tar: already reinforced, skipped")

    run_info = dict(settings)
    if todo:
        device = devices.resolve_device(args.device)
        amp = devices.autocast_dtype(args.amp, device)
        workers = resolve_workers(args.workers, device)
        teachers = TeacherEnsemble.from_config(config, pretrained_root=args.pretrained_root, device=device,
                                               autocast_dtype=amp, batch_size=args.batch_size)
        captioners = {key: build_captioner(member, num_captions=args.num_syn_captions, device=device,
                                           pretrained_root=args.pretrained_root, autocast_dtype=amp)
                      for key, member in sets.items()}
        reinforcer = Reinforcer(config, teachers, captioners[shards.SYN_TEXT] if v1_layout else captioners,
                                seed=args.seed, dtype=args.dtype, batch_size=args.batch_size, workers=workers)
        run_info.update(pretrained=list(teachers.pretrained), quick_gelu=list(teachers.quick_gelu),
                        dims=teachers.dims, device=str(device), amp=str(amp).replace("torch.", "") if amp else "off",
                        workers=workers)
        with tqdm(desc="reinforce", unit="sample", dynamic_ncols=True) as progress:
            for shard in todo:
                source, target = args.datacomp_dir / f"{shard}.tar", args.out_dir / f"{shard}.tar"
                spent_before = reinforcer.flops()["total"]
                report = reinforcer.reinforce_shard(source, target, progress, name=f"{shard}.tar")
                # what this shard cost, kept with it: a later job that keeps the shard still knows
                summary = {**report.as_dict(), **run_info, "source_bytes": source.stat().st_size,
                           "flops": reinforcer.flops()["total"] - spent_before}
                shards.write_json_atomic(_shard_manifest_path(target), summary)
                entries[shard] = {**summary, "id": shard}
                tqdm.write(f"{shard}.tar: {report.written}/{report.samples_in} written, skipped "
                           f"{dict(report.skipped) or 'none'}, {summary['samples_per_second']} samples/s, "
                           f"teachers {100 * (summary['teacher_share'] or 0):.0f}% of the time")
                if summary["status"] != "ok":
                    tqdm.write(f"{shard}.tar: {summary['status']}: {summary['reason']}")

    ordered = [entries[shard] for shard in selected]
    summary = totals(ordered)
    # this job's work only: shards kept from an earlier job were paid for there
    summary["flops"] = reinforcer.flops() if todo else {"total": 0}
    # what the group's shards cost, whichever job made them (the reinforcement's one-time cost);
    # None where a shard was made before shards recorded their FLOPs
    summary["shards_flops"] = _shards_flops(ordered)
    if args.manifest is not None:
        shards.write_json_atomic(args.manifest, {
            "schema": GROUP_MANIFEST_SCHEMA, "group": args.group, "group_index": group_index,
            "group_size": args.group_size, "datacomp_dir": str(args.datacomp_dir), "dr_dir": str(args.out_dir),
            "run": run_info, "totals": summary, "shards": ordered,
            # the DR shards a training job reads, by content (train.training_shards)
            shards.SHARD_FILES_KEY: shards.relative_to_manifest(
                [shards.describe_shard(args.out_dir / f"{entry['id']}.tar") for entry in ordered
                 if entry["status"] == "ok"], args.manifest),
            "elapsed_s": round(time.perf_counter() - start, 3)})
    share = summary["teacher_share"]
    tqdm.write(f"reinforced {summary['shards_reinforced']} shards ({summary['shards_resumed']} already done, "
               f"{summary['shards_partial']} partial, {summary['shards_missing']} missing): "
               f"{summary['written']}/{summary['samples_in']} samples written, skipped {summary['skipped'] or 'none'}"
               + (f", teachers {100 * share:.0f}% of the time" if share is not None else ""))
    partial = [entry for entry in ordered if entry["status"] == "partial"]
    if partial:
        # Not a success: the job fails (the DAG keeps the finished shards, not the group manifest)
        # and its rerun redoes these shards. A missing shard is the fetch's loss, recorded there;
        # a cut one is damage on this side of the fetch, which a researcher has to see and fix.
        for entry in partial:
            tqdm.write(f"error: {entry['shard']}: {entry['reason']}")
        tqdm.write(f"error: {len(partial)} of {len(ordered)} shards reinforced only in part: their input shards "
                   f"in {args.datacomp_dir} are cut")
        return 1
    return 0
