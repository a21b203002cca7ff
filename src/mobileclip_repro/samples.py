"""Training-sample assembly: DataComp shards (plain CLIP) and DataComp ⋈ DataCompDR (DR).

DR sampling follows reference.md §4: ``aug = randint(num_samples)`` picks both the stored
augmentation to replay and its teacher image embedding ``image_emb[aug]``; the
ground-truth caption goes with ``text_emb[0]``; ``s = randint(n_syn)`` picks
``syn_text[s]`` with ``text_emb[1 + s]``.

A bad sample never stops a run: it is skipped and counted under a reason in
``SkipCounter``, whose counts reach the training log and the run manifest. Counts live in
a shared-memory tensor so DataLoader worker processes can report them.
"""
from __future__ import annotations

import io
import json
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobileclip_repro import shards

SKIP_REASONS = (
    "unreadable_shard",       # truncated / corrupt tar: the rest of the shard is lost
    "missing_key",            # a sample without jpg / txt / json / npz / paug.json / syn.json
    "undecodable_image",
    "sha256_mismatch",        # the image is not the one the reinforcement was computed on
    "bad_reinforcement",      # malformed npz / json / shapes / NaN
    "bad_param_aug",          # entry that cannot be replayed (crop outside image, unknown op, ...)
    "no_reinforcement",       # DataComp sample with no DR counterpart in the paired shard
)


class SkipCounter:
    """Per-worker counts of skipped samples by reason, shared across DataLoader workers."""

    def __init__(self, max_workers: int = 64):
        self.counts = torch.zeros(max_workers + 1, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def add(self, reason: str, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else info.id + 1
        self.counts[row, SKIP_REASONS.index(reason)] += n

    def totals(self) -> dict[str, int]:
        summed = self.counts.sum(0).tolist()
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, summed) if n}


def derived_seed(*parts) -> int:
    """A stable seed from parts (Python's ``hash`` of strings changes per process)."""
    return zlib.crc32(repr(parts).encode())


def stream_position() -> tuple[int, int, int, int]:
    """(rank, world size, worker, workers): which slice of the data stream this iterator is."""
    info = torch.utils.data.get_worker_info()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank() if distributed else 0,
            torch.distributed.get_world_size() if distributed else 1,
            0 if info is None else info.id, 1 if info is None else info.num_workers)


def shard_stream(shard_paths: list[Path], seed: int, resampled: bool) -> Iterator[Path]:
    """Shards for this worker and rank: drawn with replacement (``--dataset-resampled``) or split."""
    rank, world, worker, num_workers = stream_position()
    rng = random.Random(derived_seed(seed, rank, worker))
    if resampled:
        while True:
            yield rng.choice(shard_paths)
    else:
        mine = shard_paths[rank * num_workers + worker::world * num_workers]
        epoch = 0
        while True:
            order = list(mine)
            random.Random(derived_seed(seed, epoch)).shuffle(order)
            yield from order
            epoch += 1


def _raw_samples(tar_path: Path, counter: SkipCounter) -> Iterator[dict]:
    try:
        yield from shards.iter_raw_samples(tar_path)
    except Exception:  # noqa: BLE001 - a corrupt tar loses its tail, never the run
        counter.add("unreadable_shard")


def decode_image(jpg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpg))
    image.load()
    return image.convert("RGB")


def shuffled(samples: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Reservoir shuffle across shards, as webdataset's ``shuffle`` stage does."""
    buffer = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = sample
    rng.shuffle(buffer)
    yield from buffer


class PlainCLIPSamples(torch.utils.data.IterableDataset):
    """(image tensor, token ids) from DataComp shards with a train transform."""

    def __init__(self, shard_paths: list[Path], transform: Callable, tokenizer: Callable, seed: int,
                 resampled: bool, counter: SkipCounter, shuffle_buffer: int = 1000):
        self.shard_paths, self.transform, self.tokenizer = shard_paths, transform, tokenizer
        self.seed, self.resampled, self.counter, self.shuffle_buffer = seed, resampled, counter, shuffle_buffer

    def _decoded(self) -> Iterator[tuple]:
        for shard in shard_stream(self.shard_paths, self.seed, self.resampled):
            for raw in _raw_samples(shard, self.counter):
                if "jpg" not in raw or "txt" not in raw:
                    self.counter.add("missing_key")
                    continue
                try:
                    image = decode_image(raw["jpg"])
                except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes
                    self.counter.add("undecodable_image")
                    continue
                yield image, raw["txt"].decode("utf-8")

    def __iter__(self):
        rng = random.Random(derived_seed(self.seed, "shuffle", *stream_position()))
        for image, caption in shuffled(self._decoded(), self.shuffle_buffer, rng):
            yield self.transform(image), self.tokenizer([caption])[0]


def joined_samples(datacomp_tar: Path, dr_tar: Path, counter: SkipCounter) -> Iterator[tuple[dict, dict]]:
    """Merge-join a DataComp shard with its DataCompDR shard on sample key (both are key-sorted).

    DataComp samples whose image failed to download have no DR partner and vice versa;
    only DataComp samples without reinforcement are counted (they are data lost to DR).
    """
    dr_iter = _raw_samples(dr_tar, counter)
    dr = next(dr_iter, None)
    for datacomp in _raw_samples(datacomp_tar, counter):
        key = datacomp["__key__"]
        while dr is not None and dr["__key__"] < key:
            dr = next(dr_iter, None)
        if dr is None or dr["__key__"] != key:
            counter.add("no_reinforcement")
            continue
        yield datacomp, dr


class DRSamples(torch.utils.data.IterableDataset):
    """(image, caption ids, teacher image emb, teacher caption emb, syn caption ids, teacher syn emb)."""

    def __init__(self, datacomp_shards: list[Path], dr_dir: Path, replay: Callable, tokenizer: Callable,
                 seed: int, resampled: bool, counter: SkipCounter, shuffle_buffer: int = 1000):
        self.datacomp_shards, self.dr_dir, self.replay, self.tokenizer = datacomp_shards, Path(dr_dir), replay, tokenizer
        self.seed, self.resampled, self.counter, self.shuffle_buffer = seed, resampled, counter, shuffle_buffer

    def _assembled(self, rng: random.Random) -> Iterator[tuple]:
        for shard in shard_stream(self.datacomp_shards, self.seed, self.resampled):
            for datacomp, dr in joined_samples(shard, self.dr_dir / shard.name, self.counter):
                sample = self._assemble(datacomp, dr, rng)
                if sample is not None:
                    yield sample

    def _assemble(self, datacomp: dict, dr: dict, rng: random.Random) -> tuple | None:
        if not all(k in datacomp for k in shards.DATACOMP_KEYS) or not all(
                k in dr for k in ("syn.json", "paug.json", "json")) or not ("npz" in dr or "pth.gz" in dr):
            self.counter.add("missing_key")
            return None
        try:
            reinforcement = shards.decode_reinforcement(dr)
        except (KeyError, ValueError, OSError, json.JSONDecodeError):
            self.counter.add("bad_reinforcement")
            return None
        if shards.sha256_hex(datacomp["jpg"]) != reinforcement.sha256:
            self.counter.add("sha256_mismatch")
            return None
        try:
            image = decode_image(datacomp["jpg"])
        except Exception:  # noqa: BLE001
            self.counter.add("undecodable_image")
            return None
        aug = rng.randrange(len(reinforcement.param_aug))
        try:
            pixels = self.replay(image, reinforcement.param_aug[aug])
        except (ValueError, TypeError, IndexError):
            self.counter.add("bad_param_aug")
            return None
        syn = rng.randrange(len(reinforcement.syn_text))
        caption = datacomp["txt"].decode("utf-8")
        return (pixels, caption, reinforcement.image_emb[aug], reinforcement.text_emb[0],
                reinforcement.syn_text[syn], reinforcement.text_emb[1 + syn])

    def __iter__(self):
        rng = random.Random(derived_seed(self.seed, "dr", *stream_position()))
        for pixels, caption, image_emb, caption_emb, syn, syn_emb in shuffled(
                self._assembled(rng), self.shuffle_buffer, rng):
            yield (pixels, self.tokenizer([caption])[0], torch.from_numpy(np.ascontiguousarray(image_emb)),
                   torch.from_numpy(np.ascontiguousarray(caption_emb)), self.tokenizer([syn])[0],
                   torch.from_numpy(np.ascontiguousarray(syn_emb)))
