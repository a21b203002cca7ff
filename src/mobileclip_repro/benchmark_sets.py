"""Benchmark sets from clip_benchmark's webdataset mirrors on the hub, into a local root.

clip_benchmark publishes every set it evaluates (ImageNet-1k, Flickr30k, MSCOCO, the
DataComp suite) as a dataset repo ``clip-benchmark/wds_<name>`` laid out as
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``dataset_type.txt`` (for
retrieval sets) and ``<split>/nshards.txt`` + ``<split>/<i>.tar``. Downloading them ahead
of evaluation, into the root the config names, keeps evaluation jobs off the network:
GPU nodes of a cluster rarely have it, and clip_benchmark would otherwise start its own
download inside every job.

Files go through huggingface_hub (``HF_ENDPOINT``/``HF_TOKEN`` honoured), which writes
each one under a temporary name and renames it when complete, so an interrupted fetch
resumes and never leaves a truncated shard under its final name.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mobileclip_repro.hub import hub_download

log = logging.getLogger(__name__)

CLASSIFICATION_FILES = ("classnames.txt", "zeroshot_classification_templates.txt")
OPTIONAL_FILES = ("dataset_type.txt",)


def fetch_benchmark_set(repo_id: str, root: str | Path, split: str = "test", revision: str | None = None) -> dict:
    """Download one clip_benchmark webdataset set; returns what was fetched (the set's manifest)."""
    from huggingface_hub.errors import EntryNotFoundError

    root = Path(root)

    def download(filename: str) -> Path:
        return hub_download(repo_id, filename, root, revision=revision)

    present = []
    for filename in (*OPTIONAL_FILES, *CLASSIFICATION_FILES):
        try:
            download(filename)
            present.append(filename)
        except EntryNotFoundError:
            pass  # retrieval sets have no class names; classification sets no dataset_type.txt
    dataset_type = (root / "dataset_type.txt").read_text().strip() if "dataset_type.txt" in present else "classification"
    missing = [f for f in CLASSIFICATION_FILES if f not in present]
    if dataset_type == "classification" and missing:
        raise FileNotFoundError(f"{repo_id}: a classification set without {missing}")
    nshards_text = download(f"{split}/nshards.txt").read_text().strip()
    if not nshards_text.isdigit() or int(nshards_text) < 1:
        raise ValueError(f"{repo_id}: {split}/nshards.txt holds {nshards_text!r}, not a shard count")
    num_shards = int(nshards_text)
    for shard in range(num_shards):
        download(f"{split}/{shard}.tar")
        log.info("%s: %s/%d.tar (%d/%d)", repo_id, split, shard, shard + 1, num_shards)
    return {"repo": repo_id, "split": split, "dataset_type": dataset_type, "num_shards": num_shards,
            "files": present + [f"{split}/nshards.txt"] + [f"{split}/{i}.tar" for i in range(num_shards)]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="hub dataset repo, e.g. clip-benchmark/wds_imagenet1k")
    parser.add_argument("--root", required=True, help="local dataset root the evaluation reads")
    parser.add_argument("--split", default="test")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--manifest", help="write what was fetched here (JSON)")


def command(args: argparse.Namespace) -> int:
    from mobileclip_repro import shards

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fetched = fetch_benchmark_set(args.repo, args.root, args.split, args.revision)
    if args.manifest:
        shards.write_json_atomic(args.manifest, fetched)
    print(f"{args.repo}: {fetched['num_shards']} {args.split} shards in {args.root}")
    return 0
