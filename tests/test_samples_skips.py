"""Fail fast, never spin; every skip under its real reason, at the right shard (issue 10, item 4).

A run whose data is broken as a whole stops with an error naming the top skip reasons and
an example, instead of resampling its shards forever; a truncated DataComp tar is one
``unreadable_shard`` on that tar, not ``no_image`` for its DataCompDR partners; a broken
DataCompDR sample is reported at the DataCompDR tar; the plain path checks the sha256 its
json records.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_repro import shards, toyworld
from mobileclip_repro.config import REPO_ROOT, ConfigError, load_config, resolve_run
from mobileclip_repro.train.samples import (DRSamples, PlainCLIPSamples, SkipCounter, TooManySkips, joined_samples,
                                      paired_shards)

WIDTH = 8          # teacher embedding width of the shards written here (4 + 4)
AUGMENTATIONS = 3  # stored augmentations per image
SYN = 2            # synthetic captions per image


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> list[dict]:
    """16 toy-world DataComp samples (jpg, txt, json with uid and sha256), in key order."""
    root = tmp_path_factory.mktemp("world")
    toyworld.generate(root, train_samples=16, teacher_samples=1, benchmark_samples=1, samples_per_shard=8)
    return [s for tar in shards.list_shards(root / "datacomp") for s in shards.iter_raw_samples(tar)]


def _dr(datacomp: dict, *, sha256: str | None = None, width: int = WIDTH) -> dict:
    """A DataCompDR sample for ``datacomp``: full-image crops, no ops, embeddings of ``width``."""
    image = shards.decode_image(datacomp["jpg"])
    meta = json.loads(datacomp["json"])
    param_aug = [[[0, 0, image.height, image.width], []]] * AUGMENTATIONS
    return shards.dr_record(datacomp["__key__"], meta["uid"], sha256 or meta["sha256"], meta["url"],
                            [f"syn {s}" for s in range(SYN)], param_aug,
                            np.ones((AUGMENTATIONS, width), np.float32), np.ones((1 + SYN, width), np.float32))


def _write(path: Path, samples: list[dict]) -> Path:
    with shards.atomic_tar_writer(path, mtime=0) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    return path


def _shard_pair(root: Path, datacomp: list[dict], dr: list[dict], index: int = 0) -> tuple[Path, Path]:
    name = shards.shard_name(index)
    return _write(root / "datacomp" / name, datacomp), _write(root / "dr" / name, dr)


def _dr_dataset(root: Path, counter: SkipCounter, embedding_dim: int, passes: int | None,
                resampled: bool = True) -> DRSamples:
    pairs = paired_shards(shards.list_shards(root / "datacomp"), root / "datacomp", root / "dr")
    return DRSamples(pairs, replay=lambda image, entry: image.size, tokenizer=None, seed=0, resampled=resampled,
                     counter=counter, shuffle_buffer=4, passes=passes, embedding_dim=embedding_dim)


# -- a limit on skips in a row ----------------------------------------------------------------

def test_a_run_of_skips_longer_than_the_limit_stops_naming_reasons_and_an_example():
    counter = SkipCounter(max_consecutive=3)
    for n in range(3):
        counter.add("no_image", f"dr/00000000.tar:{n:04d}", "no sample in the DataComp shard")
    counter.passed("raw")  # a sample got through: the run of skips is over
    for n in range(3):
        counter.add("unreadable_shard", "datacomp/00000001.tar", "ReadError: unexpected end of data")
    with pytest.raises(TooManySkips) as stopped:
        counter.add("no_image", "dr/00000002.tar:0007", "no sample in the DataComp shard")
    message = str(stopped.value)
    assert "4 samples skipped in a row while reading the shards (1 shard read)" in message
    assert "max_consecutive_skips = 3" in message
    assert "unreadable_shard 3, no_image 1" in message
    assert "Example [unreadable_shard] datacomp/00000001.tar: ReadError: unexpected end of data" in message
    assert counter.totals() == {"no_image": 4, "unreadable_shard": 3}, "every skip is still counted"


def test_each_stage_has_its_own_run_of_skips():
    """Raw samples that get through do not end a run of skipped assembled samples."""
    counter = SkipCounter(max_consecutive=2)
    for key in (1, 2):
        counter.add("no_image", f"dr.tar:{key}", "no sample in the DataComp shard")  # raw stage: a run of 1
        counter.passed("raw")
        counter.add("sha256_mismatch", f"datacomp.tar:{key}", "image bytes do not hash to ...", stage="sample")
    with pytest.raises(TooManySkips, match=r"3 samples skipped in a row while assembling samples.*"
                                           r"Top reasons: sha256_mismatch 3\."):
        counter.add("sha256_mismatch", "datacomp.tar:3", "image bytes do not hash to ...", stage="sample")


def _dead_shard(root: Path, world: list[dict], index: int) -> None:
    """A shard pair whose DataComp side got none of its images (a fetch during an outage)."""
    _shard_pair(root, [], [_dr(s) for s in world], index)


@pytest.mark.timeout(120)
def test_one_shard_lost_whole_is_counted_not_fatal(world, tmp_path):
    _dead_shard(tmp_path, world[:8], 0)  # 8 no_image in a row, more than the limit of 5
    _shard_pair(tmp_path, world[8:12], [_dr(s) for s in world[8:12]], 1)
    _shard_pair(tmp_path, world[12:16], [_dr(s) for s in world[12:16]], 2)
    counter = SkipCounter(max_consecutive=5)
    # each pass reads every shard once, in a new order: the dead one is at most twice in a row
    examples = list(_dr_dataset(tmp_path, counter, WIDTH, passes=6, resampled=False).examples())
    assert len(examples) == 6 * 8 and counter.totals() == {"no_image": 6 * 8}


@pytest.mark.timeout(120)
def test_shard_after_shard_lost_whole_stops_the_stream(world, tmp_path):
    for index in range(3):
        _dead_shard(tmp_path, world[4 * index:4 * index + 4], index)
    _shard_pair(tmp_path, world[12:16], [_dr(s) for s in world[12:16]], 3)
    counter = SkipCounter(max_consecutive=5)
    with pytest.raises(TooManySkips, match=r"skipped in a row while reading the shards \([3-9] shard reads\).*"
                                           r"Top reasons: no_image"):
        list(_dr_dataset(tmp_path, counter, WIDTH, passes=None).examples())


@pytest.mark.timeout(120)
def test_dr_samples_of_the_wrong_width_stop_the_stream_instead_of_spinning(world, tmp_path):
    """teacher_dimension [768, 768] on shards of narrower teachers: every sample is bad_reinforcement."""
    _shard_pair(tmp_path, world[:8], [_dr(s) for s in world[:8]])
    counter = SkipCounter(max_consecutive=50)
    dataset = _dr_dataset(tmp_path, counter, embedding_dim=768 + 768, passes=None)  # resampled forever
    with pytest.raises(TooManySkips) as stopped:
        next(dataset.examples())
    message = str(stopped.value)
    assert "51 samples skipped in a row while assembling samples (" in message
    assert "Top reasons: bad_reinforcement 51" in message
    # the example names the DataCompDR shard and key, and what is wrong
    assert f"{tmp_path / 'dr' / '00000000.tar'}:" in message
    assert f"embeddings are {WIDTH}-D, the teachers give 1536-D" in message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "1-worker"])
def test_plain_shards_that_cannot_be_read_stop_the_stream(tmp_path, workers):
    for index in range(2):
        (tmp_path / shards.shard_name(index)).write_bytes(b"not a tar" * 100)
    counter = SkipCounter(max_consecutive=20)
    dataset = PlainCLIPSamples(shards.list_shards(tmp_path), transform=lambda image: 0, tokenizer=lambda t: t,
                               seed=0, resampled=True, counter=counter)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    with pytest.raises(TooManySkips, match=r"21 samples skipped in a row while reading the shards \(21 shard reads\).*"
                                           r"unreadable_shard 21.*Example \[unreadable_shard\] .*0000000[01]\.tar"):
        next(iter(loader))


@pytest.mark.timeout(300)
def test_training_on_data_that_is_all_bad_stops_with_the_reasons(world, tmp_path):
    """The whole trainer: shards whose every image fails its sha256 end the job, not spin it."""
    from mobileclip_repro.train.train import train

    _shard_pair(tmp_path, world[:8], [_dr(s, sha256="0" * 64) for s in world[:8]])
    spec = _toy_dr_spec(tmp_path, max_consecutive_skips=40)
    with pytest.raises(TooManySkips, match=r"sha256_mismatch 41.*Example \[sha256_mismatch\] .*00000000\.tar:"):
        train(spec, tmp_path / "run", device_name="cpu")
    assert not (tmp_path / "run" / "checkpoints").exists(), "no step was taken"


def _toy_dr_spec(root: Path, **overrides) -> dict:
    config = load_config(REPO_ROOT / "configs" / "toy-smoke.yaml")
    config["runs"]["smoke_dr"].pop("seeds", None)  # one training job
    config["runs"]["smoke_dr"].update({"global_batch_size": 4, "seen_samples": 8, "num_checkpoints": 1,
                                       "warmup_steps": 1, **overrides})
    config["runs"]["smoke_dr"]["distill"]["teacher_dimension"] = [WIDTH // 2] * 2
    spec = resolve_run(config, "smoke_dr")
    made_with = json.loads((REPO_ROOT / "configs" / "reinforce" / "toy.json").read_text())
    (root / "reinforce.json").write_text(json.dumps({**made_with, "num_samples": AUGMENTATIONS}))
    spec.update(datacomp_dir=str(root / "datacomp"), dr_dir=str(root / "dr"),
                reinforcement_config=str(root / "reinforce.json"))
    return spec


@pytest.mark.timeout(300)
def test_a_teacher_dimension_the_shards_do_not_have_stops_the_train_job_at_its_start(world, tmp_path):
    from mobileclip_repro.train.train import train

    _shard_pair(tmp_path, world[:8], [_dr(s) for s in world[:8]])
    spec = _toy_dr_spec(tmp_path)
    spec["distill"]["teacher_dimension"] = [768, 768]
    with pytest.raises(ConfigError, match=r"'distill\.teacher_dimension' of run 'smoke_dr'.*8-D embeddings"):
        train(spec, tmp_path / "run", device_name="cpu")
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- the real reason, at the right shard ----------------------------------------------------------

def test_a_truncated_datacomp_tar_is_one_unreadable_shard_not_missing_images(world, tmp_path, caplog):
    datacomp_tar, dr_tar = _shard_pair(tmp_path, world[:8], [_dr(s) for s in world[:8]])
    data = datacomp_tar.read_bytes()
    datacomp_tar.write_bytes(data[: len(data) // 2])
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.train.samples"):
        joined = list(joined_samples(datacomp_tar, dr_tar, counter))

    assert counter.totals() == {"unreadable_shard": 1}, "no DataCompDR partner is counted as a failed download"
    [report] = [r.getMessage() for r in caplog.records]
    assert report.startswith(f"skipped sample [unreadable_shard] {datacomp_tar}: ")
    assert f"{8 - len(joined)} DataCompDR samples after the cut in {dr_tar} not joined" in report


def test_a_missing_npz_is_reported_at_the_datacompdr_tar(world, tmp_path, caplog):
    dr = [_dr(s) for s in world[:4]]
    del dr[2]["npz"]
    datacomp_tar, dr_tar = _shard_pair(tmp_path, world[:4], dr)
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.train.samples"):
        examples = list(_dr_dataset(tmp_path, counter, WIDTH, passes=1).examples())

    assert len(examples) == 3 and counter.totals() == {"missing_key": 1}
    [report] = [r.getMessage() for r in caplog.records]
    assert report == f"skipped sample [missing_key] {dr_tar}:{world[2]['__key__']}: no npz|pth.gz"


def test_the_plain_path_checks_the_sha256_its_json_records(world, tmp_path):
    samples = [dict(s) for s in world[:8]]
    jpg = samples[3]["jpg"]
    middle = len(jpg) // 2
    samples[3]["jpg"] = jpg[:middle] + bytes(b ^ 0xFF for b in jpg[middle:middle + 8]) + jpg[middle + 8:]
    no_hash = json.loads(samples[5]["json"])
    del no_hash["sha256"]
    samples[5]["json"] = json.dumps(no_hash).encode()  # nothing recorded: nothing to check
    samples[6]["jpg"] = samples[6]["jpg"] + b"\0"  # appended bytes still decode, but are not the image hashed
    tar = _write(tmp_path / "00000000.tar", samples)
    counter = SkipCounter()
    dataset = PlainCLIPSamples([tar], transform=lambda image: image.size, tokenizer=lambda texts: texts, seed=0,
                               resampled=False, counter=counter, passes=1)
    captions = sorted(caption for _, caption in dataset)

    assert counter.totals() == {"sha256_mismatch": 2}
    assert captions == sorted(s["txt"].decode() for i, s in enumerate(samples) if i not in (3, 6))


# -- truncated shards: a cut at a member boundary reads like a shorter shard ---------------------

def _member_offsets(tar: Path) -> list[int]:
    import tarfile

    with tarfile.open(tar) as archive:
        return [member.offset for member in archive.getmembers()]


def test_a_shard_cut_at_any_member_boundary_or_inside_any_header_is_flagged(world, tmp_path):
    whole = _write(tmp_path / "whole.tar", world[:4])
    data = whole.read_bytes()
    starts = _member_offsets(whole)[1:]
    end_of_last_member = len(data.rstrip(b"\0")) + 511 & ~511  # where the end-of-archive blocks begin
    cuts = [*starts, end_of_last_member, *(start + 100 for start in starts), end_of_last_member + 512]
    assert shards.tar_problem(whole) is None and len(list(shards.iter_raw_samples(whole))) == 4
    for cut in cuts:
        cut_tar = tmp_path / "cut.tar"
        cut_tar.write_bytes(data[:cut])
        assert shards.tar_problem(cut_tar) is not None, f"a cut at byte {cut} passes as complete"
        with pytest.raises(shards.ShardTruncated, match="truncated"):
            list(shards.iter_raw_samples(cut_tar))


def test_a_plain_run_over_a_cut_shard_counts_it_and_keeps_the_samples_before_the_cut(world, tmp_path):
    tar = _write(tmp_path / "00000000.tar", world[:8])
    tar.write_bytes(tar.read_bytes()[:_member_offsets(tar)[3 * 4]])  # 4 members a sample: cut before sample 3
    counter = SkipCounter()
    dataset = PlainCLIPSamples([tar], transform=lambda image: image.size, tokenizer=lambda texts: texts, seed=0,
                               resampled=False, counter=counter, passes=2)

    assert len(list(dataset)) == 2 * 3, "each pass keeps the 3 samples before the cut"
    assert counter.totals() == {"truncated_shard": 2}, "a cut shard is never cached: each pass counts it"


def test_a_datacomp_tar_cut_at_a_member_boundary_is_a_truncated_shard_not_missing_images(world, tmp_path, caplog):
    datacomp_tar, dr_tar = _shard_pair(tmp_path, world[:8], [_dr(s) for s in world[:8]])
    datacomp_tar.write_bytes(datacomp_tar.read_bytes()[:_member_offsets(datacomp_tar)[5 * 4]])
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.train.samples"):
        joined = list(joined_samples(datacomp_tar, dr_tar, counter))

    assert len(joined) == 5 and counter.totals() == {"truncated_shard": 1}
    [report] = [r.getMessage() for r in caplog.records]
    assert report.startswith(f"skipped sample [truncated_shard] {datacomp_tar}: truncated")
    assert f"3 DataCompDR samples after the cut in {dr_tar} not joined" in report


def test_a_sample_with_an_oversized_member_is_a_counted_skip_and_the_shard_goes_on(world, tmp_path, monkeypatch):
    samples = [dict(s) for s in world[:4]]
    samples[1]["jpg"] = samples[1]["jpg"] + bytes(4096)
    tar = _write(tmp_path / "00000000.tar", samples)
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", max(len(s["jpg"]) for s in world[:4]) + 1024)
    counter = SkipCounter()
    dataset = PlainCLIPSamples([tar], transform=lambda image: image.size, tokenizer=lambda texts: texts, seed=0,
                               resampled=False, counter=counter, passes=1)

    assert sorted(caption for _, caption in dataset) == sorted(s["txt"].decode() for s in world[:4] if s is not world[1])
    assert counter.totals() == {"oversized_member": 1}


# -- undecodable DataCompDR payloads: a counted skip, never the run's end ------------------------

def _garbage_payloads() -> dict[str, dict]:
    import gzip
    import pickle

    class Refused:  # a pickle torch.load(weights_only=True) refuses: it names a global outside its allow-list
        def __reduce__(self):
            return (print, ("pickled code",))

    return {
        "npz not a zip": {"npz": b"PK\x03\x04 not really a zip"},
        "npz random bytes": {"npz": bytes(range(256)) * 4},
        "pth.gz not gzip": {"pth.gz": b"\x1f\x8b\x08garbage"},
        "pth.gz of random bytes": {"pth.gz": gzip.compress(bytes(range(256)) * 4)},
        "pth.gz holding a refused pickle": {"pth.gz": gzip.compress(pickle.dumps({"image_emb": Refused()}))},
    }


@pytest.mark.parametrize("name", list(_garbage_payloads()))
def test_an_undecodable_payload_is_a_counted_bad_reinforcement(world, tmp_path, name):
    dr = [_dr(s) for s in world[:4]]
    del dr[1]["npz"]
    dr[1].update(_garbage_payloads()[name])
    _shard_pair(tmp_path, world[:4], dr)
    counter = SkipCounter()
    examples = list(_dr_dataset(tmp_path, counter, WIDTH, passes=1).examples())

    assert len(examples) == 3 and counter.totals() == {"bad_reinforcement": 1}


@pytest.mark.timeout(300)
def test_a_run_over_undecodable_payloads_finishes_and_counts_them(world, tmp_path):
    from mobileclip_repro.train.train import train

    dr = [_dr(s) for s in world[:8]]
    for sample, garbage in zip(dr[::3], _garbage_payloads().values()):
        del sample["npz"]
        sample.update(garbage)
    _shard_pair(tmp_path, world[:8], dr)
    manifest = train(_toy_dr_spec(tmp_path, workers=0), tmp_path / "run", device_name="cpu")

    assert (tmp_path / "run" / "checkpoints" / "epoch_1.pt").is_file()
    assert manifest["skipped_samples"]["bad_reinforcement"] > 0
    assert {k for k, v in manifest["skipped_samples"].items() if v} == {"bad_reinforcement"}
