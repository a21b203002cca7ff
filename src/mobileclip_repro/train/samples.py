"""Training-sample assembly: DataComp shards (plain CLIP) and DataComp ⋈ DataCompDR (DR).

DR sampling follows docs/reference.md §4: ``aug = randint(num_samples)`` picks both the stored
augmentation to replay and its teacher image embedding ``image_emb[aug]``; the
ground-truth caption goes with ``text_emb[0]``; ``s = randint(n_syn)`` picks
``syn_text[s]`` with ``text_emb[1 + s]``. With several synthetic-caption sets (v2, §9) a
set ``k`` is drawn first, uniformly among the syn.json keys the run's regex matches, then
``s = randint(len(k))`` picks ``k[s]`` with its embedding row (``shards.decode_reinforcement``
pairs each set with its rows in either layout).

Both pipelines shuffle raw samples (bytes) across shards and decode after the shuffle,
as open_clip_train's webdataset pipeline does: the buffer holds compressed samples, not
decoded 224-px tensors.

A bad sample never stops a run: it is skipped and counted under a reason in
``SkipCounter``, whose counts reach the training log and the run manifest, and the first
few of each reason are logged with shard, key and what was wrong. Counts live in a
shared-memory tensor so DataLoader worker processes can report them. A run whose data is
broken as a whole never spins either: more than ``max_consecutive_skips`` skips in a row
at one stage (reading shards, assembling samples) with no sample getting through, over at
least ``SHARD_READS_IN_A_FATAL_RUN`` shard reads, stops it with ``TooManySkips``, naming the
top reasons and an example.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mobileclip_repro import shards
from mobileclip_repro.seeding import seed_from

log = logging.getLogger("mobileclip_repro.train.samples")

SKIP_REASONS = (
    "unreadable_shard",       # truncated / corrupt tar: the rest of that shard pass is lost
    "missing_key",            # a sample without jpg / txt / json / npz|pth.gz / paug.json / syn.json, or
                              # without a synthetic-caption set the run's regex selects or its <set>_emb
    "bad_metadata",           # DataComp json or caption that does not decode
    "undecodable_image",
    "sha256_mismatch",        # the image is not the one the reinforcement was computed on
    "uid_mismatch",           # same key, different DataComp uid: the shards are not a pair
    "bad_reinforcement",      # malformed npz / pth.gz / json, wrong shapes
    "non_finite_embedding",   # NaN or inf in a teacher embedding
    "bad_param_aug",          # entry that cannot be replayed (crop outside image, unknown op, ...)
    "no_reinforcement",       # DataComp sample with no DR counterpart in the paired shard
    "no_image",               # DR sample whose image is not in the DataComp shard (download failed)
    # appended, not inserted: checkpoints store per-reason counts in this order
    "truncated_shard",        # tar without its end-of-archive blocks (cut at a member boundary): its tail is lost
    "oversized_member",       # a sample with a tar member over shards.MAX_MEMBER_BYTES, left unread
)
EXAMPLES_LOGGED_PER_REASON = 5
# Where a skip happens: a raw sample (or DataComp/DataCompDR pair) read from the shards, or
# an assembled training sample after the shuffle. Each stage has its own run of skips.
STAGES = {"raw": "reading the shards", "sample": "assembling samples"}
# A run of skips stops the job only once it also spans this many shard reads (or every
# shard, when there are fewer): one shard lost whole -- e.g. a fetch that got none of its
# images, 10,000 DataCompDR samples without one -- is counted, not fatal.
SHARD_READS_IN_A_FATAL_RUN = 3


class SampleSkipped(Exception):
    """Why one sample cannot be used; ``reason`` is one of SKIP_REASONS.

    ``side`` says which shard of a DataComp/DataCompDR pair holds the problem
    (``datacomp``, ``dr`` or ``both``), so it is reported at that shard's path.
    """

    def __init__(self, reason: str, detail: str, side: str = "datacomp"):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        if side not in ("datacomp", "dr", "both"):
            raise ValueError(f"unknown side {side!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.side = reason, detail, side


class TooManySkips(RuntimeError):
    """More consecutive samples skipped than the run allows: the data or the config is broken as a whole."""


class _Streak:
    """Skips in a row at one stage of one process, with the first example of each reason."""

    def __init__(self, first_shard_read: int):
        self.first_shard_read = first_shard_read
        self.count = 0
        self.reasons: dict[str, int] = {}
        self.examples: dict[str, tuple[str, str]] = {}

    def add(self, reason: str, where: str, detail: str, n: int) -> None:
        self.count += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.examples.setdefault(reason, (where, detail))

    def message(self, stage: str, limit: int, shard_reads: int) -> str:
        top = sorted(self.reasons.items(), key=lambda item: -item[1])
        where, detail = self.examples[top[0][0]]
        return (f"{self.count} samples skipped in a row while {STAGES[stage]} "
                f"({shard_reads} shard read{'s' if shard_reads != 1 else ''}), "
                f"none usable (max_consecutive_skips = {limit}): the data or the config is broken as a whole. "
                f"Top reasons: {', '.join(f'{reason} {n}' for reason, n in top[:3])}. "
                f"Example [{top[0][0]}] {where}: {detail}")


class SkipCounter:
    """Counts of skipped samples by reason, shared across DataLoader workers.

    A resampled shard is read many times, so a count is the number of skip events in the
    run, not of distinct bad samples.

    ``max_consecutive``: the most skips in a row one process may see at one stage
    (``STAGES``) before it raises ``TooManySkips``, once the run also spans
    ``SHARD_READS_IN_A_FATAL_RUN`` shard reads (``shard_started``); ``passed(stage)`` ends a
    run of skips. None: no limit (the trainer passes the run's ``max_consecutive_skips``).
    """

    def __init__(self, max_workers: int = 64, max_consecutive: int | None = None):
        if max_consecutive is not None and max_consecutive < 1:
            raise ValueError(f"max_consecutive must be positive, got {max_consecutive}")
        self.counts = torch.zeros(max_workers + 1, len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self.max_consecutive = max_consecutive
        self._logged: dict[str, int] = {}  # per process, deliberately not shared
        self._streaks: dict[str, _Streak] = {}  # per process: each worker reads its own stream
        self._shard_reads, self._shards_per_pass = 0, 1

    def add(self, reason: str, where: str = "", detail: str = "", n: int = 1, stage: str = "raw") -> None:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else info.id + 1
        self.counts[row, SKIP_REASONS.index(reason)] += n
        logged = self._logged.get(reason, 0)
        if logged < EXAMPLES_LOGGED_PER_REASON:
            self._logged[reason] = logged + 1
            suffix = " (further ones are only counted)" if logged + 1 == EXAMPLES_LOGGED_PER_REASON else ""
            log.warning("skipped sample [%s] %s: %s%s", reason, where, detail, suffix)
        if stage not in self._streaks:
            self._streaks[stage] = _Streak(self._shard_reads)
        streak = self._streaks[stage]
        streak.add(reason, where, detail, n)
        shard_reads = self._shard_reads - streak.first_shard_read + 1
        if (self.max_consecutive is not None and streak.count > self.max_consecutive
                and shard_reads >= min(SHARD_READS_IN_A_FATAL_RUN, self._shards_per_pass)):
            raise TooManySkips(streak.message(stage, self.max_consecutive, shard_reads))

    def skipped(self, error: SampleSkipped, where: str, stage: str = "sample") -> None:
        self.add(error.reason, where, error.detail, stage=stage)

    def passed(self, stage: str) -> None:
        """A sample got through ``stage``: the run of skips there is over."""
        if stage in self._streaks:
            del self._streaks[stage]

    def shard_started(self, shards_per_pass: int) -> None:
        """This process starts reading a shard (of ``shards_per_pass`` in its stream)."""
        self._shard_reads += 1
        self._shards_per_pass = max(shards_per_pass, 1)

    def totals(self) -> dict[str, int]:
        summed = self.counts.sum(0).tolist()
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, summed) if n}

    def as_tensor(self) -> torch.Tensor:
        """Counts by reason (in SKIP_REASONS order), summed over this process's workers."""
        return self.counts.sum(0)


def counts_by_reason(counts: torch.Tensor | list[int]) -> dict[str, int]:
    """Every reason with its count, zeros included, from a tensor in SKIP_REASONS order."""
    return {reason: int(n) for reason, n in zip(SKIP_REASONS, list(counts))}


def stream_position() -> tuple[int, int, int, int]:
    """(rank, world size, worker, workers): which slice of the data stream this iterator is."""
    info = torch.utils.data.get_worker_info()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank() if distributed else 0,
            torch.distributed.get_world_size() if distributed else 1,
            0 if info is None else info.id, 1 if info is None else info.num_workers)


def shard_stream(shard_paths: list, seed: int, resampled: bool, passes: int | None = None) -> Iterator:
    """Shards for this worker and rank, forever unless ``passes`` is given.

    Resampled (``--dataset-resampled``): drawn with replacement, a pass being
    ``len(shard_paths)`` draws. Otherwise each rank × worker gets a disjoint slice,
    reshuffled every pass; a slice cannot be empty (that would spin without data).
    """
    rank, world, worker, num_workers = stream_position()
    rng = random.Random(seed_from(seed, rank, worker))
    if resampled:
        mine = None
    else:
        mine = shard_paths[rank * num_workers + worker::world * num_workers]
        if not mine:
            raise ValueError(f"{len(shard_paths)} shards cannot be split over {world} ranks x {num_workers} "
                             "workers without resampling; use fewer workers or dataset_resampled: true")
    pass_index = 0
    while passes is None or pass_index < passes:
        if mine is None:
            yield from (rng.choice(shard_paths) for _ in shard_paths)
        else:
            order = list(mine)
            random.Random(seed_from(seed, pass_index)).shuffle(order)
            yield from order
        pass_index += 1


DEFAULT_SHARD_CACHE_BYTES = 256 * 2 ** 20


class ShardCache:
    """The raw samples (bytes) of every shard read to its end, kept in this process.

    For a dataset that fits in ``max_bytes`` and is passed over many times (the toy runs read
    each shard ~8 times): Python's tarfile is about a third of the toy's data path per sample
    (benchmarks/shard_cache.py), and a cached shard skips it. ``for_shards`` gives None where the shards do not fit,
    so paper-scale data streams as before. A shard that fails to read is never kept: each
    draw reads it again and counts its loss again. Cached samples are shared; readers must
    not modify them.
    """

    def __init__(self):
        self.samples: dict[str, list[dict]] = {}

    @classmethod
    def for_shards(cls, shard_paths, max_bytes: int = DEFAULT_SHARD_CACHE_BYTES) -> "ShardCache | None":
        total = 0
        for path in shard_paths:
            try:
                total += Path(path).stat().st_size
            except OSError:
                continue  # a missing shard is the reader's to count, not a reason to stream the rest
            if total > max_bytes:
                return None
        return cls()

    def get(self, path: Path) -> list[dict] | None:
        return self.samples.get(str(path))

    def put(self, path: Path, samples: list[dict]) -> None:
        self.samples[str(path)] = samples


class _KeepsShardCache:
    """A dataset's ShardCache, one per process, kept across iterations: the trainer starts a new
    one at every checkpoint segment, and where the data is read in the trainer's own process
    (``workers: 0``, the toy runs) the cache then lasts the whole run rather than one segment.
    A DataLoader worker (a forked copy of the dataset) builds its own; a pickled copy carries none."""

    cache_bytes: int

    def _shard_cache(self, tars: list[Path]) -> ShardCache | None:
        if getattr(self, "_cache_pid", None) != os.getpid():
            self._cache_pid, self._cache = os.getpid(), ShardCache.for_shards(tars, self.cache_bytes)
        return self._cache

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cache_pid", None)
        state.pop("_cache", None)
        return state


class _ShardReader:
    """A shard's samples; a read error ends them and is kept in ``error`` (and its skip reason in
    ``reason``) rather than raised. A sample with an oversized member is counted and dropped
    here, on every pass (the cache keeps it, without its data, so each pass counts it again)."""

    def __init__(self, tar_path: Path, counter: SkipCounter, cache: ShardCache | None = None):
        self.path, self.counter, self.cache = tar_path, counter, cache
        self.error, self.reason = None, None

    def __iter__(self) -> Iterator[dict]:
        cached = self.cache.get(self.path) if self.cache is not None else None
        yield from self._usable(cached if cached is not None else self._read())

    def _read(self) -> Iterator[dict]:
        read = []
        try:
            for sample in shards.iter_raw_samples(self.path):
                read.append(sample)
                yield sample
        except shards.ShardTruncated as error:
            self.error, self.reason = str(error), "truncated_shard"
            return
        except Exception as error:  # noqa: BLE001 - tarfile, OSError, webdataset's own: all mean "unreadable"
            self.error, self.reason = f"{type(error).__name__}: {error}", "unreadable_shard"
            return
        if self.cache is not None:
            self.cache.put(self.path, read)

    def _usable(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            if shards.OVERSIZED in sample:
                sizes = ", ".join(f"{extension} {size:,} bytes" for extension, size in sample[shards.OVERSIZED])
                self.counter.add("oversized_member", _where(sample),
                                 f"{sizes} (over {shards.MAX_MEMBER_BYTES:,}), left unread")
                continue
            yield sample


def raw_samples(tar_path: Path, counter: SkipCounter, cache: ShardCache | None = None) -> Iterator[dict]:
    """A shard's samples; a truncated or corrupt tar loses its tail, never the run."""
    reader = _ShardReader(tar_path, counter, cache)
    yield from reader
    if reader.error is not None:
        counter.add(reader.reason, str(tar_path), reader.error)


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


def _where(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def _pair_where(datacomp: dict, dr: dict, side: str) -> str:
    """Where a joined pair's problem lies: the DataComp shard, the DataCompDR shard, or both."""
    if side == "both":
        return f"{_where(datacomp)} + {_where(dr)}"
    return _where(dr if side == "dr" else datacomp)


def _caption(datacomp: dict) -> str:
    try:
        return datacomp["txt"].decode("utf-8")
    except UnicodeDecodeError as error:
        raise SampleSkipped("bad_metadata", f"txt is not UTF-8: {error}") from None


def _image(jpg: bytes):
    try:
        return shards.decode_image(jpg)
    except Exception as error:  # noqa: BLE001 - PIL raises many types for bad bytes
        raise SampleSkipped("undecodable_image", f"{type(error).__name__}: {error}") from None


def in_subset(datacomp: dict, keep_uids: frozenset[str] | None) -> bool:
    """Whether a DataComp sample is in the run's subset (``keep_uids`` None: no subset, every one is).
    A sample whose uid cannot be read was ranked in no subset (``subsets.py`` counts it)."""
    if keep_uids is None:
        return True
    try:
        return shards.datacomp_uid(datacomp.get("json")) in keep_uids
    except ValueError:
        return False


def _check_recorded_sha256(datacomp: dict) -> None:
    """A DataComp sample whose json records the jpg's sha256 must hash to it (plain path).

    No json, or a json without ``sha256``: nothing to check. A json that does not decode
    is ``bad_metadata``, as on the DR path.
    """
    if "json" not in datacomp:
        return
    try:
        meta = json.loads(datacomp["json"])
    except ValueError as error:
        raise SampleSkipped("bad_metadata", f"DataComp json: {type(error).__name__}: {error}") from None
    recorded = meta.get("sha256") if isinstance(meta, dict) else None
    if recorded is None:
        return
    if not isinstance(recorded, str) or shards.sha256_hex(datacomp["jpg"]) != recorded.lower():
        raise SampleSkipped("sha256_mismatch", f"image bytes do not hash to the json's sha256 {recorded}")


class PlainCLIPSamples(_KeepsShardCache, torch.utils.data.IterableDataset):
    """(image tensor, token ids) from DataComp shards with a train transform."""

    def __init__(self, shard_paths: list[Path], transform: Callable, tokenizer: Callable, seed: int,
                 resampled: bool, counter: SkipCounter, shuffle_buffer: int = 1000, passes: int | None = None,
                 cache_bytes: int = DEFAULT_SHARD_CACHE_BYTES, keep_uids: frozenset[str] | None = None):
        self.shard_paths, self.transform, self.tokenizer = shard_paths, transform, tokenizer
        self.seed, self.resampled, self.counter, self.shuffle_buffer = seed, resampled, counter, shuffle_buffer
        self.passes, self.cache_bytes, self.keep_uids = passes, cache_bytes, keep_uids

    def _raw(self) -> Iterator[dict]:
        cache = self._shard_cache(self.shard_paths)
        for shard in shard_stream(self.shard_paths, self.seed, self.resampled, self.passes):
            self.counter.shard_started(len(self.shard_paths))
            for raw in raw_samples(shard, self.counter, cache):
                if "jpg" not in raw or "txt" not in raw:
                    missing = [k for k in ("jpg", "txt") if k not in raw]
                    self.counter.add("missing_key", _where(raw), f"no {', '.join(missing)}")
                    continue
                if not in_subset(raw, self.keep_uids):
                    continue
                self.counter.passed("raw")
                yield raw

    def __iter__(self):
        rng = random.Random(seed_from(self.seed, "shuffle", *stream_position()))
        for raw in shuffled(self._raw(), self.shuffle_buffer, rng):
            try:
                _check_recorded_sha256(raw)
                caption, image = _caption(raw), _image(raw["jpg"])
            except SampleSkipped as skip:
                self.counter.skipped(skip, _where(raw))
                continue
            self.counter.passed("sample")
            yield self.transform(image), self.tokenizer([caption])[0]


def joined_samples(datacomp_tar: Path, dr_tar: Path, counter: SkipCounter,
                   cache: ShardCache | None = None) -> Iterator[tuple[dict, dict]]:
    """Merge-join a DataComp shard with its DataCompDR shard on sample key (both are key-sorted).

    Either side may lack samples the other has, and both losses are counted: a DataComp
    sample without reinforcement (``no_reinforcement``) and a DataCompDR sample whose
    image is not in the DataComp shard, typically a failed download (``no_image``).

    A DataComp tar that cannot be read to its end is one ``unreadable_shard`` at that tar's
    path, whose detail says how many DataCompDR samples after the cut went unjoined: their
    images were not lost by a download, so they are not ``no_image``.
    """
    dr_exists = Path(dr_tar).exists()
    if not dr_exists:
        counter.add("unreadable_shard", str(dr_tar), "no DataCompDR shard for this DataComp shard")
    dr_iter = raw_samples(dr_tar, counter, cache) if dr_exists else iter(())
    dr = next(dr_iter, None)
    datacomp_reader = _ShardReader(datacomp_tar, counter, cache)
    for datacomp in datacomp_reader:
        key = datacomp["__key__"]
        while dr is not None and dr["__key__"] < key:
            counter.add("no_image", _where(dr), f"no sample {dr['__key__']} in {datacomp_tar}")
            dr = next(dr_iter, None)
        if dr is None or dr["__key__"] != key:
            counter.add("no_reinforcement", _where(datacomp), f"no sample {key} in {dr_tar}")
            continue
        counter.passed("raw")
        yield datacomp, dr
        dr = next(dr_iter, None)
    if datacomp_reader.error is not None:
        unjoined = sum(1 for _ in dr_iter) + (dr is not None)
        counter.add(datacomp_reader.reason, str(datacomp_tar),
                    f"{datacomp_reader.error}; {unjoined} DataCompDR samples after the cut in {dr_tar} not joined")
        return
    while dr is not None:
        counter.add("no_image", _where(dr), f"no sample {dr['__key__']} in {datacomp_tar}")
        dr = next(dr_iter, None)


def one_tar_samples(tar: Path, counter: SkipCounter, cache: ShardCache | None = None) -> Iterator[tuple[dict, dict]]:
    """Apple's joined layout: each tar holds both sides of a sample, read once and split
    (shards.split_joined_sample). A sample without its DataCompDR keys is ``no_reinforcement``;
    one without its image, ``no_image``; a tar that cannot be read to its end, ``unreadable_shard``."""
    for sample in raw_samples(tar, counter, cache):
        datacomp, dr = shards.split_joined_sample(sample)
        if not any(key in dr for key in shards.DR_KEYS):
            counter.add("no_reinforcement", _where(sample), f"sample {sample['__key__']} has no DataCompDR keys")
            continue
        if "jpg" not in datacomp:
            counter.add("no_image", _where(sample), f"sample {sample['__key__']} has no image")
            continue
        counter.passed("raw")
        yield datacomp, dr


@dataclass
class DRExample:
    """One assembled DR training example (docs/reference.md §4), before tokenization."""
    pixels: torch.Tensor        # the student's replay of param_aug[aug]
    caption: str                # ground-truth caption (txt)
    image_emb: np.ndarray       # image_emb[aug]: the teachers' view of the same augmentation
    caption_emb: np.ndarray     # text_emb[0]
    syn_caption: str            # syn_json[syn_key][s]
    syn_emb: np.ndarray         # its row: text_emb[1 + s] in v1, <syn_key>_emb[s] in v2
    aug: int
    syn: int
    syn_key: str = shards.SYN_TEXT


def _require_keys(datacomp: dict, dr: dict, dr_keys: list[str]) -> None:
    """missing_key, at the side that lacks them, unless both samples carry what is needed
    (``dr_keys``: extensions, or ``a|b`` for either of two)."""
    missing_datacomp = [k for k in shards.DATACOMP_KEYS if k not in datacomp]
    missing_dr = [k for k in dr_keys if not any(option in dr for option in k.split("|"))]
    if missing_datacomp or missing_dr:
        side = "both" if missing_datacomp and missing_dr else "datacomp" if missing_datacomp else "dr"
        raise SampleSkipped("missing_key", f"no {', '.join(missing_datacomp + missing_dr)}", side)


def _datacomp_uid(datacomp: dict) -> str:
    try:
        return shards.datacomp_uid(datacomp.get("json"))
    except ValueError as error:
        raise SampleSkipped("bad_metadata", f"DataComp json: {error}") from None


def _kept_by_sha256_policy(datacomp: dict, stored_sha256: str) -> bool:
    """Whether fetch kept these bytes for this DataCompDR sample although they hash otherwise: under
    ``data.hub.sha256`` (same_size, off) a re-encoded image is kept, and its json records the sha256
    the metadata named (``recorded_sha256``), which is the DataCompDR sample's."""
    try:
        meta = json.loads(datacomp["json"])
    except (KeyError, ValueError):
        return False
    recorded = meta.get("recorded_sha256") if isinstance(meta, dict) else None
    return isinstance(recorded, str) and recorded.lower() == stored_sha256.lower()


def _check_same_image(datacomp: dict, uid, stored_uid: str, stored_sha256: str) -> None:
    """The DataCompDR sample belongs to these very image bytes: same uid, and the jpg hashes to its
    sha256 (or fetch kept a re-encoding of that image by its sha256 policy)."""
    if str(uid) != str(stored_uid):
        raise SampleSkipped("uid_mismatch", f"DataComp uid {uid} vs DataCompDR uid {stored_uid}", "both")
    if shards.sha256_hex(datacomp["jpg"]) != stored_sha256.lower() and not _kept_by_sha256_policy(datacomp,
                                                                                                  stored_sha256):
        raise SampleSkipped("sha256_mismatch", f"image bytes do not hash to {stored_sha256}", "both")


def assemble_dr_example(datacomp: dict, dr: dict, replay: Callable, rng: random.Random,
                        embedding_dim: int | None = None,
                        syn_caption_regex: str = shards.DEFAULT_SYN_CAPTION_REGEX) -> DRExample:
    """Join one DataComp sample with its DataCompDR sample; raises SampleSkipped naming why not.

    Checks run cheapest first, and the image is decoded only once the reinforcement is
    known to be usable and to belong to these very image bytes. ``embedding_dim`` (the
    teachers' summed width) keeps a sample of the wrong width out of a batch, where it
    would break collation. ``syn_caption_regex`` selects the synthetic-caption sets drawn from.
    """
    _require_keys(datacomp, dr, ["syn.json", "paug.json", "json", "npz|pth.gz"])
    uid = _datacomp_uid(datacomp)
    try:
        reinforcement = shards.decode_reinforcement(dr, check_finite=False, syn_caption_regex=syn_caption_regex)
    except shards.MissingCaptionSet as error:
        raise SampleSkipped("missing_key", str(error), "dr") from None
    except Exception as error:  # noqa: BLE001 - numpy, zipfile, gzip, pickle and json each raise their own
        # types for damaged bytes (BadZipFile, UnpicklingError, ...): every one is this sample's loss, not the run's
        raise SampleSkipped("bad_reinforcement", f"{type(error).__name__}: {error}", "dr") from None
    width = reinforcement.image_emb.shape[1]
    if embedding_dim is not None and width != embedding_dim:
        raise SampleSkipped("bad_reinforcement", f"embeddings are {width}-D, the teachers give {embedding_dim}-D "
                            "(distill.teacher_dimension)", "dr")
    _check_same_image(datacomp, uid, reinforcement.uid, reinforcement.sha256)
    aug = rng.randrange(len(reinforcement.param_aug))
    keys = list(reinforcement.syn_sets)
    # The set is drawn only when there is a choice: a sample with one selected set (every v1
    # sample under the default regex) consumes the same draws as before sets existed, so v1
    # runs stay bit-identical. With one set the draw would be 0 anyway.
    syn_key = keys[rng.randrange(len(keys))] if len(keys) > 1 else keys[0]
    syn = rng.randrange(len(reinforcement.syn_sets[syn_key]))
    # The whole payload, not only the drawn rows: a NaN anywhere means the stored
    # reinforcement is broken, and the count should not depend on the draw.
    if not reinforcement.all_finite():
        raise SampleSkipped("non_finite_embedding", "NaN or inf in image_emb/text_emb/<set>_emb", "dr")
    caption = _caption(datacomp)
    image = _image(datacomp["jpg"])
    try:
        pixels = replay(image, reinforcement.param_aug[aug])
    except Exception as error:  # noqa: BLE001 - an entry is data: whatever it breaks in replay is its loss
        raise SampleSkipped("bad_param_aug", f"param_aug[{aug}]: {type(error).__name__}: {error}", "dr") from None
    # Copies of the drawn rows only: the payload's arrays are views of the cached shard's bytes.
    return DRExample(pixels, caption, reinforcement.image_emb[aug].copy(), reinforcement.text_emb[0].copy(),
                     reinforcement.syn_sets[syn_key][syn], reinforcement.syn_embs[syn_key][syn].copy(),
                     aug, syn, syn_key)


@dataclass
class OnlineExample:
    """One online-distillation training example: a fresh augmentation, replayed twice."""
    pixels: torch.Tensor        # the student's replay of the augmentation drawn for this step
    caption: str                # ground-truth caption (txt)
    teacher_view: torch.Tensor  # uint8 [3, S, S]: the same augmentation at the teachers' crop size
    syn_caption: str            # syn_json[syn_key][s], from the stored syn.json
    syn_key: str = shards.SYN_TEXT


def assemble_online_example(datacomp: dict, dr: dict, replay: Callable, reinforce_config, rng: random.Random,
                            syn_caption_regex: str = shards.DEFAULT_SYN_CAPTION_REGEX) -> OnlineExample:
    """Online distillation's counterpart of ``assemble_dr_example``: the same checks (keys, uid,
    sha256) and the same synthetic-caption draw, but the augmentation is drawn afresh with the
    reinforcement config's own sampler (``ReinforceConfig.draw_param_aug``) and replayed for the
    student and, at the reinforcement's crop size, for the teachers, which embed it during the
    step. The stored augmentations and embeddings are not read."""
    _require_keys(datacomp, dr, ["syn.json", "json"])
    uid = _datacomp_uid(datacomp)
    try:
        meta, syn_json = json.loads(dr["json"]), json.loads(dr["syn.json"])
        stored_uid, stored_sha256 = str(meta["uid"]), str(meta["sha256"])
        pattern = re.compile(syn_caption_regex)
        keys = [key for key in syn_json if pattern.match(key)]
    except Exception as error:  # noqa: BLE001 - any malformed DataCompDR metadata is this sample's loss
        raise SampleSkipped("bad_reinforcement", f"{type(error).__name__}: {error}", "dr") from None
    if not keys:
        raise SampleSkipped("missing_key", f"syn.json has no caption set matching {syn_caption_regex!r}", "dr")
    _check_same_image(datacomp, uid, stored_uid, stored_sha256)
    # the set and caption drawn as assemble_dr_example draws them (its augmentation draw is not made here)
    syn_key = keys[rng.randrange(len(keys))] if len(keys) > 1 else keys[0]
    captions = syn_json[syn_key]
    if not isinstance(captions, list) or not captions or not all(isinstance(text, str) for text in captions):
        raise SampleSkipped("bad_reinforcement", f"syn.json's {syn_key!r} must be a non-empty list of strings", "dr")
    syn_caption = captions[rng.randrange(len(captions))]
    caption = _caption(datacomp)
    image = _image(datacomp["jpg"])
    from torchvision.transforms.functional import pil_to_tensor

    from mobileclip_repro import replay as replay_ops

    entry = reinforce_config.draw_param_aug(image.width, image.height,
                                            torch.Generator().manual_seed(rng.getrandbits(63)))
    pixels = replay(image, entry)
    teacher_view = pil_to_tensor(replay_ops.replay_pil(image, entry, reinforce_config.crop_size,
                                                       reinforce_config.interpolation))
    return OnlineExample(pixels, caption, teacher_view, syn_caption, syn_key)


def paired_shards(datacomp_shards: list[Path], datacomp_dir: str | Path,
                  dr_dir: str | Path | None) -> list[tuple[Path, Path | None]]:
    """Each DataComp shard (listed under ``datacomp_dir``) with the DataCompDR shard at the same
    relative path; ``dr_dir`` None: the joined layout, where each tar holds both (paired with None)."""
    if dr_dir is None:
        return [(shard, None) for shard in datacomp_shards]
    datacomp_dir, dr_dir = Path(datacomp_dir), Path(dr_dir)
    return [(shard, dr_dir / shard.relative_to(datacomp_dir)) for shard in datacomp_shards]


class DRSamples(_KeepsShardCache, torch.utils.data.IterableDataset):
    """(image, caption ids, teacher image emb, teacher caption emb, syn caption ids, teacher syn emb)."""

    def __init__(self, shard_pairs: list[tuple[Path, Path]], replay: Callable, tokenizer: Callable,
                 seed: int, resampled: bool, counter: SkipCounter, shuffle_buffer: int = 1000,
                 passes: int | None = None, embedding_dim: int | None = None,
                 syn_caption_regex: str = shards.DEFAULT_SYN_CAPTION_REGEX,
                 cache_bytes: int = DEFAULT_SHARD_CACHE_BYTES, keep_uids: frozenset[str] | None = None):
        self.shard_pairs, self.replay, self.tokenizer = shard_pairs, replay, tokenizer
        self.seed, self.resampled, self.counter, self.shuffle_buffer = seed, resampled, counter, shuffle_buffer
        self.passes, self.embedding_dim, self.syn_caption_regex = passes, embedding_dim, syn_caption_regex
        self.cache_bytes, self.keep_uids = cache_bytes, keep_uids

    def _joined(self) -> Iterator[tuple[dict, dict]]:
        cache = self._shard_cache([tar for pair in self.shard_pairs for tar in pair if tar is not None])
        for datacomp_tar, dr_tar in shard_stream(self.shard_pairs, self.seed, self.resampled, self.passes):
            self.counter.shard_started(len(self.shard_pairs))
            if dr_tar is None:  # joined layout
                pairs = one_tar_samples(datacomp_tar, self.counter, cache)
            else:
                pairs = joined_samples(datacomp_tar, dr_tar, self.counter, cache)
            # after the join, so the other subsets' samples still pair up (and count as no loss)
            yield from (pair for pair in pairs if in_subset(pair[0], self.keep_uids))

    def _assemble(self, datacomp: dict, dr: dict, rng: random.Random) -> DRExample:
        return assemble_dr_example(datacomp, dr, self.replay, rng, self.embedding_dim, self.syn_caption_regex)

    def examples(self) -> Iterator[DRExample]:
        rng = random.Random(seed_from(self.seed, "dr", *stream_position()))
        for datacomp, dr in shuffled(self._joined(), self.shuffle_buffer, rng):
            try:
                example = self._assemble(datacomp, dr, rng)
            except SampleSkipped as skip:
                self.counter.skipped(skip, _pair_where(datacomp, dr, skip.side))
                continue
            self.counter.passed("sample")
            yield example

    def __iter__(self):
        for example in self.examples():
            caption_ids, syn_caption_ids = self.tokenizer([example.caption, example.syn_caption])
            yield (example.pixels, caption_ids, torch.from_numpy(example.image_emb),
                   torch.from_numpy(example.caption_emb), syn_caption_ids, torch.from_numpy(example.syn_emb))


class OnlineDRSamples(DRSamples):
    """(image, caption ids, teacher view uint8, caption, syn caption ids, syn caption): the online
    arm's samples, over the same joined DataComp / DataCompDR shards as ``DRSamples``. The
    captions go to the teachers as text, each teacher tokenizing them its own way."""

    def __init__(self, shard_pairs, replay: Callable, tokenizer: Callable, seed: int, resampled: bool,
                 counter: SkipCounter, reinforce_config, **kwargs):
        super().__init__(shard_pairs, replay, tokenizer, seed, resampled, counter, **kwargs)
        self.reinforce_config = reinforce_config

    def _assemble(self, datacomp: dict, dr: dict, rng: random.Random) -> OnlineExample:
        return assemble_online_example(datacomp, dr, self.replay, self.reinforce_config, rng, self.syn_caption_regex)

    def __iter__(self):
        for example in self.examples():
            yield (example.pixels, self.tokenizer([example.caption])[0], example.teacher_view, example.caption,
                   self.tokenizer([example.syn_caption])[0], example.syn_caption)
