"""Nested uniform subsets of a dataset (``data.subsets``): the dataset-size axis.

Every sample is ranked by a seeded hash of its DataComp uid, ``sha256("<seed>:<uid>")``; the
subset of size N is the N first-ranked uids. So the subsets are uniform, nested (each one is
inside every larger one), the same for any shard order or sharding, and the same for a DR run
and a non-DR run: both read the same DataComp shards, and a DR run keeps the stored
augmentations and embeddings of exactly its kept uids, from the one reinforcement of the
full data (nothing is reinforced again).

``select-subsets`` ranks the dataset once per seed and writes the ranked uids up to the largest
size (``subsets.json``); each training job keeps the first ``subset_size`` of them. A sample
whose uid cannot be read (no json, a json without a uid) cannot be ranked: it is in no subset,
and the file counts it (``unranked``), with examples.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mobileclip_repro import shards

log = logging.getLogger(__name__)

SCHEMA = "mobileclip_repro/subsets/1"
EXAMPLES_KEPT = 5


def rank_key(uid: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{uid}".encode()).digest()


def ranked(uids: Iterable[str], seed: int) -> list[str]:
    """The distinct uids in subset order: subset N is the first N."""
    return sorted(set(uids), key=lambda uid: (rank_key(uid, seed), uid))


def check_sizes(sizes: list[int], available: int, where: str = "data.subsets") -> None:
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"config key '{where}': subset sizes must be positive, got {sizes}")
    if max(sizes) > available:
        raise ValueError(f"config key '{where}': a subset of {max(sizes):,} samples, but the data has "
                         f"{available:,} samples with a uid")


def dataset_uids(datacomp_dir: str | Path, data_manifests: list[Path] | None = None) -> tuple[list[str], list[str]]:
    """(uid of every sample, in shard order; where a sample had no readable uid), of the shards the
    data manifests list under ``datacomp_dir`` (the ones training reads), or of every shard there.

    Reads the tars' json members only (tarfile seeks past the images)."""
    uids, unranked = [], []
    if data_manifests:
        listed = shards.shards_in(datacomp_dir, shards.listed_shard_files(data_manifests))
    else:
        listed = shards.list_shards(datacomp_dir)
    for shard in listed:
        for key, json_bytes in _json_members(shard):
            try:
                uids.append(shards.datacomp_uid(json_bytes))
            except ValueError:
                unranked.append(f"{shard}:{key}")
    return uids, unranked


def _json_members(shard: Path) -> Iterator[tuple[str, bytes | None]]:
    seen_keys, json_keys = set(), set()
    with tarfile.open(shard) as archive:
        for member in archive:
            key_and_extension = shards.member_key(member.name) if member.isfile() else None
            if key_and_extension is None:
                continue
            key, extension = key_and_extension
            seen_keys.add(key)
            if extension != "json":
                continue
            json_keys.add(key)
            yield key, archive.extractfile(member).read()
    for key in sorted(seen_keys - json_keys):
        yield key, None


def select(datacomp_dir: str | Path, sizes: list[int], seed: int, data_manifests: list[Path] | None = None) -> dict:
    uids, unranked = dataset_uids(datacomp_dir, data_manifests)
    order = ranked(uids, seed)
    check_sizes(sizes, len(order))
    if unranked:
        log.warning("%d samples without a readable uid are in no subset, e.g. %s", len(unranked),
                    ", ".join(unranked[:EXAMPLES_KEPT]))
    return {"schema": SCHEMA, "seed": seed, "sizes": sorted(sizes), "samples": len(uids), "distinct_uids": len(order),
            "unranked": len(unranked), "unranked_examples": unranked[:EXAMPLES_KEPT], "uids": order[:max(sizes)]}


def members(path: str | Path, size: int) -> frozenset[str]:
    """The uids of the subset of ``size`` samples in a ``select-subsets`` file."""
    selection = json.loads(Path(path).read_text())
    if selection.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a subsets file (schema {selection.get('schema')!r}, expected {SCHEMA!r})")
    if size > len(selection["uids"]):
        raise ValueError(f"{path}: ranks {len(selection['uids']):,} uids, a subset of {size:,} was asked for")
    return frozenset(selection["uids"][:size])
