"""CPU cost per sample of the training sample pipelines with the in-memory shard cache vs without.

What is measured (single process, ``torch.set_num_threads(1)``, ``time.process_time()``,
``--passes`` passes over the same shards per measurement, best of ``--repeats``, the two
sides interleaved so drift hits both alike):

* plain: ``PlainCLIPSamples`` over toy-world DataComp shards this script writes (tar read,
  sha256 check, JPEG decode, open_clip's train transform of ``toy-student``, tokenization);
* DR (with ``--results results/toy``, after ``make demo``): ``DRSamples`` over that run's
  DataComp and DataCompDR shards (two tars, join, npz decode, replay, tokenization).

Baseline: the same pipeline with ``cache_bytes=0`` (every shard draw parsed by tarfile
again, as before the cache). The toy runs pass over their 4 shards ~8 times, the default of
``--passes`` here is 4. Prints ``<side>: cached / streamed CPU time per sample: 0.NNx``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mobileclip_repro import models, shards, toyworld
from mobileclip_repro.replay import ReplayTransform
from mobileclip_repro.train.samples import DRSamples, PlainCLIPSamples, SkipCounter, paired_shards


def cpu_ms_per_sample(make_dataset) -> float:
    dataset = make_dataset()
    start = time.process_time()
    count = sum(1 for _ in dataset)
    return (time.process_time() - start) * 1000 / count


def compare(name: str, make_dataset, repeats: int) -> None:
    best = {"streamed": float("inf"), "cached": float("inf")}
    for _ in range(repeats):
        for side, cache_bytes in (("streamed", 0), ("cached", 2 ** 30)):
            best[side] = min(best[side], cpu_ms_per_sample(lambda: make_dataset(cache_bytes)))
    print(f"{name}: streamed {best['streamed']:.3f} ms/sample, cached {best['cached']:.3f} ms/sample")
    print(f"{name}: cached / streamed CPU time per sample: {best['cached'] / best['streamed']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="toy DataComp samples to write (plain side)")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=None, help="a finished toy run's results folder (DR side)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, train_transform, _ = models.create_model_and_transforms("toy-student")
    tokenizer = models.CachingTokenizer(models.get_tokenizer("toy-student"))

    with tempfile.TemporaryDirectory() as tmp:
        toyworld.generate(tmp, train_samples=args.samples, teacher_samples=1, benchmark_samples=1,
                          samples_per_shard=1000)
        plain_shards = shards.list_shards(Path(tmp) / "datacomp")
        compare("plain", lambda cache_bytes: PlainCLIPSamples(
            plain_shards, train_transform, tokenizer, seed=0, resampled=False, counter=SkipCounter(),
            passes=args.passes, cache_bytes=cache_bytes), args.repeats)

    if args.results is not None:
        datacomp_dir, dr_dir = args.results / "data" / "datacomp", args.results / "data" / "datacompdr"
        pairs = paired_shards(shards.list_shards(datacomp_dir), datacomp_dir, dr_dir)
        replay = ReplayTransform.from_open_clip(model)
        compare("DR", lambda cache_bytes: DRSamples(
            pairs, replay, tokenizer, seed=0, resampled=False, counter=SkipCounter(), passes=args.passes,
            embedding_dim=128, cache_bytes=cache_bytes), args.repeats)


if __name__ == "__main__":
    main()
