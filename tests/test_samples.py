"""Sample assembly (docs/reference.md §4) and bad input: every example pairs the replayed
augmentation with its own teacher embedding row, DataComp and DataCompDR shards join by
key with uid and sha256 checked, and each kind of broken input is skipped, counted under
its reason and reported, while training goes on."""
from __future__ import annotations

import copy
import json
import logging
import pickle
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_repro import replay, shards, toyworld
from mobileclip_repro.config import REPO_ROOT, load_config, resolve_run
from mobileclip_repro.reinforce.reinforce import encode_pth
from mobileclip_repro.train.samples import (DRSamples, SampleSkipped, ShardCache, SkipCounter, assemble_dr_example,
                                      joined_samples, paired_shards)

EMBEDDING_DIM = 8
NUM_AUGMENTATIONS = 4
NUM_SYN = 3
IMAGE_KIND, TEXT_KIND = 0.0, 1.0
REPLAY = replay.ReplayTransform((32, 32), replay.InterpolationMode.BICUBIC,
                                (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _embedding(kind: float, sample: int, row: int) -> np.ndarray:
    """A row that says what it is: small integers, so exact in bf16 too."""
    values = np.zeros(EMBEDDING_DIM, np.float32)
    values[:3] = kind, sample, row
    return values


def _dr_sample(datacomp: dict, index: int, payload: str = "npz") -> dict:
    image = shards.decode_image(datacomp["jpg"])
    generator = torch.Generator().manual_seed(index)
    param_aug = [replay.sample_param_aug(image.width, image.height, generator, size=32)
                 for _ in range(NUM_AUGMENTATIONS)]
    image_emb = np.stack([_embedding(IMAGE_KIND, index, a) for a in range(NUM_AUGMENTATIONS)])
    text_emb = np.stack([_embedding(TEXT_KIND, index, t) for t in range(1 + NUM_SYN)])
    meta = json.loads(datacomp["json"])
    record = shards.dr_record(datacomp["__key__"], meta["uid"], meta["sha256"], meta["url"],
                              [f"synthetic caption {s} of sample {index}" for s in range(NUM_SYN)],
                              param_aug, image_emb, text_emb)
    if payload == "pth.gz":  # the DataCompDR-12M-bf16 layout
        del record["npz"]
        record["pth.gz"] = encode_pth(torch.from_numpy(image_emb), torch.from_numpy(text_emb))
    return record


def _write(path: Path, samples: list[dict]) -> None:
    with shards.atomic_tar_writer(path, mtime=0) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})


def _to_bytes(sample: dict) -> dict:
    return {k: v.encode() if isinstance(v, str) and k != "__key__" else v for k, v in sample.items()}


@pytest.fixture(scope="module")
def datacomp(tmp_path_factory) -> list[dict]:
    """24 toy-world DataComp samples (jpg/txt/json), in key order."""
    root = tmp_path_factory.mktemp("world")
    toyworld.generate(root, train_samples=24, teacher_samples=1, benchmark_samples=1, samples_per_shard=8)
    return [s for tar in shards.list_shards(root / "datacomp") for s in shards.iter_raw_samples(tar)]


def _pair(root: Path, datacomp_samples: list[dict], dr_samples: list[dict], shard: int = 0) -> tuple[Path, Path]:
    name = shards.shard_name(shard)
    _write(root / "datacomp" / name, datacomp_samples)
    _write(root / "dr" / name, dr_samples)
    return root / "datacomp" / name, root / "dr" / name


def _examples(datacomp_dir: Path, dr_dir: Path, counter: SkipCounter, workers: int = 0) -> list:
    pairs = paired_shards(shards.list_shards(datacomp_dir), datacomp_dir, dr_dir)
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=0, resampled=False,
                        counter=counter, shuffle_buffer=1, passes=1, embedding_dim=EMBEDDING_DIM)
    if workers == 0:
        return list(dataset.examples())
    # Through worker processes: counts must come back through shared memory.
    loader = torch.utils.data.DataLoader(_ExamplesOnly(dataset), batch_size=None, num_workers=workers)
    return list(loader)


class _ExamplesOnly(torch.utils.data.IterableDataset):
    def __init__(self, dataset: DRSamples):
        self.dataset = dataset

    def __iter__(self):
        return (example.aug for example in self.dataset.examples())


# -- assembly -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", ["npz", "pth.gz"])
def test_each_example_pairs_the_replayed_augmentation_with_its_teacher_rows(datacomp, tmp_path, payload):
    _, dr_tar = _pair(tmp_path, datacomp[:8], [_dr_sample(s, i, payload) for i, s in enumerate(datacomp[:8])])
    stored = [shards.decode_reinforcement(s) for s in shards.iter_raw_samples(dr_tar)]
    assert all(s.image_emb.dtype == np.float32 for s in stored)
    counter = SkipCounter()
    examples = _examples(tmp_path / "datacomp", tmp_path / "dr", counter)

    assert counter.totals() == {}
    assert sorted(int(e.image_emb[1]) for e in examples) == list(range(8)), "each sample exactly once"
    for example in examples:
        index = int(example.image_emb[1])
        reinforcement = stored[index]
        image = shards.decode_image(datacomp[index]["jpg"])
        # aug picks both the stored augmentation to replay and its teacher image embedding
        np.testing.assert_array_equal(example.image_emb, _embedding(IMAGE_KIND, index, example.aug))
        assert torch.equal(example.pixels, REPLAY(image, reinforcement.param_aug[example.aug]))
        # the ground-truth caption goes with text_emb[0], synthetic caption s with text_emb[1 + s]
        assert example.caption == datacomp[index]["txt"].decode()
        np.testing.assert_array_equal(example.caption_emb, _embedding(TEXT_KIND, index, 0))
        assert example.syn_caption == f"synthetic caption {example.syn} of sample {index}"
        np.testing.assert_array_equal(example.syn_emb, _embedding(TEXT_KIND, index, 1 + example.syn))
    assert len({e.aug for e in examples}) > 1 and len({e.syn for e in examples}) > 1, "draws vary"


def test_bf16_payload_reads_without_unpickling_objects(datacomp):
    sample = _to_bytes(_dr_sample(datacomp[0], 0, "pth.gz"))
    sample["pth.gz"] = __import__("gzip").compress(sample["pth.gz"])  # as read back from the tar
    image_emb, _ = shards.decode_embeddings(sample)
    assert image_emb.dtype == np.float32 and image_emb.shape == (NUM_AUGMENTATIONS, EMBEDDING_DIM)

    class Payload:  # an arbitrary object a malicious or broken file could carry
        def __reduce__(self):
            return (print, ("unpickled!",))

    buffer = __import__("io").BytesIO()
    torch.save({"image_emb": Payload()}, buffer)
    sample["pth.gz"] = __import__("gzip").compress(buffer.getvalue())
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        shards.decode_embeddings(sample)


def test_the_join_counts_samples_missing_on_either_side(datacomp, tmp_path):
    """A failed download leaves a DR sample without image; a DataComp sample may lack reinforcement."""
    dr = [_dr_sample(s, i) for i, s in enumerate(datacomp[:8])]
    datacomp_tar, dr_tar = _pair(tmp_path, datacomp[:2] + datacomp[3:8], dr[:5] + dr[6:8])
    counter = SkipCounter()
    keys = [d["__key__"] for d, r in joined_samples(datacomp_tar, dr_tar, counter)]

    assert keys == [datacomp[i]["__key__"] for i in (0, 1, 3, 4, 6, 7)]
    assert counter.totals() == {"no_image": 1, "no_reinforcement": 1}


def test_a_missing_dr_shard_counts_its_datacomp_samples(datacomp, tmp_path):
    datacomp_tar, dr_tar = _pair(tmp_path, datacomp[:8], [])
    dr_tar.unlink()
    counter = SkipCounter()
    assert list(joined_samples(datacomp_tar, dr_tar, counter)) == []
    assert counter.totals() == {"unreadable_shard": 1, "no_reinforcement": 8}


# -- bad input ------------------------------------------------------------------------------

def _drop(key):
    def mutate(datacomp, dr):
        del dr[key]
    return mutate


def _set_param_aug(entries):
    def mutate(datacomp, dr):
        dr["paug.json"] = json.dumps({"param_aug": json.dumps(entries)})  # the hub's JSON-string form
    return mutate


def _nan_embedding(datacomp, dr):
    with np.load(__import__("io").BytesIO(dr["npz"])) as npz:
        image_emb, text_emb = npz["image_emb"].copy(), npz["text_emb"]
    image_emb[2, 5] = np.nan
    dr["npz"] = shards.encode_npz(image_emb, text_emb)


def _tamper_image(datacomp, dr):
    datacomp["jpg"] = datacomp["jpg"][:-16] + b"\0" * 16


def _not_an_image(datacomp, dr):
    datacomp["jpg"] = b"<html>404 not found</html>"
    meta = json.loads(dr["json"])
    meta["sha256"] = shards.sha256_hex(datacomp["jpg"])  # the hash is right: the bytes are the problem
    dr["json"] = json.dumps(meta)


def _other_uid(datacomp, dr):
    dr["json"] = json.dumps({**json.loads(dr["json"]), "uid": "f" * 32})


def _wrong_width(datacomp, dr):
    dr["npz"] = shards.encode_npz(np.zeros((NUM_AUGMENTATIONS, 3)), np.zeros((1 + NUM_SYN, 3)))


OUT_OF_IMAGE = [[[0, 0, 4000, 4000], [[0, 0.0], [6, 0.27]]]] * NUM_AUGMENTATIONS
UNKNOWN_OP = [[[0, 0, 8, 8], [[99, 0.0]]]] * NUM_AUGMENTATIONS
WRONG_SHAPE = [[[0, 0, 8], [[0, 0.0]]]] * NUM_AUGMENTATIONS

BAD_INPUTS = {
    "no npz": (_drop("npz"), "missing_key"),
    "no paug.json": (_drop("paug.json"), "missing_key"),
    "no json": (_drop("json"), "missing_key"),
    "param_aug crop outside the image": (_set_param_aug(OUT_OF_IMAGE), "bad_param_aug"),
    "param_aug unknown op": (_set_param_aug(UNKNOWN_OP), "bad_param_aug"),
    "param_aug wrong shape": (_set_param_aug(WRONG_SHAPE), "bad_param_aug"),
    "paug.json not JSON": (lambda d, r: r.update({"paug.json": "{param_aug: ["}), "bad_reinforcement"),
    "NaN in image_emb": (_nan_embedding, "non_finite_embedding"),
    "embeddings of the wrong width": (_wrong_width, "bad_reinforcement"),
    "image changed after hashing": (_tamper_image, "sha256_mismatch"),
    "undecodable image": (_not_an_image, "undecodable_image"),
    "uid differs": (_other_uid, "uid_mismatch"),
}


def _bad_shards(root: Path, datacomp: list[dict]) -> tuple[list[str], Counter]:
    """Two shard pairs: every kind of bad sample once, between good ones; returns the good keys."""
    good, expected = [], Counter()
    pairs = [([], []), ([], [])]
    for index, (sample, (name, (mutate, reason))) in enumerate(zip(datacomp, BAD_INPUTS.items())):
        datacomp_sample, dr_sample = copy.deepcopy(sample), _dr_sample(sample, index)
        mutate(datacomp_sample, dr_sample)
        pairs[index % 2][0].append(datacomp_sample)
        pairs[index % 2][1].append(dr_sample)
        expected[reason] += 1
    for index, sample in enumerate(datacomp[len(BAD_INPUTS):], start=len(BAD_INPUTS)):
        pairs[index % 2][0].append(sample)
        pairs[index % 2][1].append(_dr_sample(sample, index))
        good.append(sample["__key__"])
    for shard, (datacomp_samples, dr_samples) in enumerate(pairs):
        key_order = lambda s: s["__key__"]  # noqa: E731
        _pair(root, sorted(datacomp_samples, key=key_order), sorted(dr_samples, key=key_order), shard)
    return good, expected


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_each_bad_sample_is_skipped_and_counted_under_its_reason(datacomp, tmp_path, workers):
    good, expected = _bad_shards(tmp_path, datacomp)
    counter = SkipCounter()
    examples = _examples(tmp_path / "datacomp", tmp_path / "dr", counter, workers)

    assert len(examples) == len(good), "every good sample comes through"
    assert counter.totals() == dict(expected)


def test_an_image_fetch_kept_by_its_sha256_policy_trains_with_its_reinforcement(datacomp):
    """data.hub.sha256 same_size / off: the re-encoded bytes hash otherwise, and the json says which
    sha256 the metadata recorded; that is the DataCompDR sample's, so the pair is one image."""
    import io

    from PIL import Image

    datacomp_sample, dr_sample = copy.deepcopy(datacomp[0]), _dr_sample(datacomp[0], 0)
    reencoded = io.BytesIO()
    Image.open(io.BytesIO(datacomp_sample["jpg"])).save(reencoded, format="JPEG", quality=60)  # as a host might
    datacomp_sample["jpg"] = reencoded.getvalue()
    recorded = json.loads(dr_sample["json"])["sha256"]
    assert shards.sha256_hex(datacomp_sample["jpg"]) != recorded
    meta = json.loads(datacomp_sample["json"])
    datacomp_sample["json"] = json.dumps({**meta, "recorded_sha256": recorded, "sha256_policy": "same_size"}).encode()
    assert assemble_dr_example(datacomp_sample, _to_bytes(dr_sample), REPLAY, random.Random(0), EMBEDDING_DIM)
    datacomp_sample["json"] = json.dumps({**meta, "recorded_sha256": "0" * 64}).encode()  # another image's hash
    with pytest.raises(SampleSkipped, match="do not hash"):
        assemble_dr_example(datacomp_sample, _to_bytes(dr_sample), REPLAY, random.Random(0), EMBEDDING_DIM)


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_the_skip_reason_names_what_is_wrong(datacomp, name):
    mutate, reason = BAD_INPUTS[name]
    datacomp_sample, dr_sample = copy.deepcopy(datacomp[0]), _dr_sample(datacomp[0], 0)
    mutate(datacomp_sample, dr_sample)
    with pytest.raises(SampleSkipped) as skipped:
        assemble_dr_example(datacomp_sample, _to_bytes(dr_sample), REPLAY, random.Random(0), EMBEDDING_DIM)
    assert skipped.value.reason == reason and skipped.value.detail


def test_a_truncated_shard_keeps_the_samples_before_the_cut(datacomp, tmp_path, caplog):
    datacomp_tar, _ = _pair(tmp_path, datacomp[:8], [_dr_sample(s, i) for i, s in enumerate(datacomp[:8])])
    data = datacomp_tar.read_bytes()
    datacomp_tar.write_bytes(data[: len(data) // 2])
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.train.samples"):
        examples = _examples(tmp_path / "datacomp", tmp_path / "dr", counter)

    counts = counter.totals()
    assert counts["unreadable_shard"] == 1
    assert 1 <= len(examples) < 8
    # every DR sample is accounted for: used, or unjoined after the cut, which the
    # unreadable_shard report at the DataComp tar's path counts (not as failed downloads)
    assert "no_image" not in counts
    [report] = [r.getMessage() for r in caplog.records if "[unreadable_shard]" in r.getMessage()]
    assert f"{datacomp_tar}:" in report
    unjoined = int(report.split(" DataCompDR samples after the cut")[0].rsplit(" ", 1)[1])
    assert len(examples) + unjoined + counts.get("missing_key", 0) == 8


def _examples_over_passes(datacomp_dir: Path, dr_dir: Path, counter: SkipCounter, passes: int, cache_bytes: int):
    pairs = paired_shards(shards.list_shards(datacomp_dir), datacomp_dir, dr_dir)
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=0, resampled=False, counter=counter, shuffle_buffer=4,
                        passes=passes, embedding_dim=EMBEDDING_DIM, cache_bytes=cache_bytes)
    return [(e.caption, e.aug, e.pixels) for e in dataset.examples()]


def test_a_small_dataset_is_read_from_disk_once_and_gives_the_same_examples(datacomp, tmp_path, monkeypatch):
    for shard in range(2):
        chunk = datacomp[8 * shard: 8 * shard + 8]
        _pair(tmp_path, chunk, [_dr_sample(s, 8 * shard + i) for i, s in enumerate(chunk)], shard=shard)
    streamed = _examples_over_passes(tmp_path / "datacomp", tmp_path / "dr", SkipCounter(), passes=3, cache_bytes=0)

    reads = Counter()
    real_reader = shards.iter_raw_samples
    monkeypatch.setattr(shards, "iter_raw_samples", lambda path: reads.update([Path(path).name]) or real_reader(path))
    cached = _examples_over_passes(tmp_path / "datacomp", tmp_path / "dr", SkipCounter(), passes=3,
                                   cache_bytes=2 ** 30)

    assert len(cached) == len(streamed) == 3 * 16
    assert all(a[:2] == b[:2] and torch.equal(a[2], b[2]) for a, b in zip(cached, streamed))
    # each of the 4 tars (2 DataComp + 2 DataCompDR, same names) parsed on the first pass only
    assert reads == {shards.shard_name(0): 2, shards.shard_name(1): 2}


def test_the_cache_outlives_an_iteration_so_a_run_of_many_segments_reads_each_shard_once(datacomp, tmp_path,
                                                                                         monkeypatch):
    """The trainer iterates its dataset anew at every checkpoint segment; with the data read in
    its own process the shards are parsed once per run, and a fresh copy of the dataset in
    another process (a DataLoader worker) starts without the parent's cache."""
    _pair(tmp_path, datacomp[:8], [_dr_sample(s, i) for i, s in enumerate(datacomp[:8])])
    reads = Counter()
    real_reader = shards.iter_raw_samples
    monkeypatch.setattr(shards, "iter_raw_samples", lambda path: reads.update([Path(path).name]) or real_reader(path))
    pairs = paired_shards(shards.list_shards(tmp_path / "datacomp"), tmp_path / "datacomp", tmp_path / "dr")
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=0, resampled=False, counter=SkipCounter(),
                        shuffle_buffer=4, passes=1, embedding_dim=EMBEDDING_DIM, cache_bytes=2 ** 30)
    segments = [[(e.caption, e.aug) for e in dataset.examples()] for _ in range(3)]
    assert all(len(segment) == 8 for segment in segments)
    assert reads == {shards.shard_name(0): 2}, "the DataComp and the DataCompDR tar, once each"
    assert "_cache" not in pickle.loads(pickle.dumps(dataset)).__dict__


def test_the_cache_is_off_when_the_shards_do_not_fit(tmp_path):
    for name, size in (("a.tar", 600), ("b.tar", 600)):
        (tmp_path / name).write_bytes(b"x" * size)
    paths = [tmp_path / "a.tar", tmp_path / "b.tar"]
    assert ShardCache.for_shards(paths, max_bytes=1000) is None
    assert ShardCache.for_shards(paths, max_bytes=1200) is not None


def test_a_truncated_shard_is_never_cached_so_every_pass_counts_its_loss(datacomp, tmp_path):
    datacomp_tar, _ = _pair(tmp_path, datacomp[:8], [_dr_sample(s, i) for i, s in enumerate(datacomp[:8])])
    data = datacomp_tar.read_bytes()
    datacomp_tar.write_bytes(data[: len(data) // 2])
    counter = SkipCounter()
    examples = _examples_over_passes(tmp_path / "datacomp", tmp_path / "dr", counter, passes=3, cache_bytes=2 ** 30)
    assert counter.totals()["unreadable_shard"] == 3
    assert len(examples) % 3 == 0 and 3 <= len(examples) < 24


def test_the_first_skips_of_a_reason_are_logged_with_shard_and_key(caplog):
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.train.samples"):
        for n in range(8):
            counter.add("sha256_mismatch", f"shard.tar:key{n}", "image bytes do not hash to abc")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5 and "shard.tar:key0" in messages[0] and "sha256_mismatch" in messages[0]
    assert "only counted" in messages[-1]
    assert counter.totals() == {"sha256_mismatch": 8}


# -- training goes on ------------------------------------------------------------------------

def _training_spec(root: Path, **overrides) -> dict:
    config = load_config(REPO_ROOT / "configs" / "toy-smoke.yaml")
    config["results_dir"] = str(root)
    config["runs"]["smoke_dr"].update({"global_batch_size": 4, "seen_samples": 16, "num_checkpoints": 2,
                                       "warmup_steps": 1, **overrides})
    config["runs"]["smoke_dr"]["distill"]["teacher_dimension"] = [EMBEDDING_DIM // 2] * 2
    spec = resolve_run(config, "smoke_dr", seed=0)
    # the reinforcement JSON these shards were made with (the train job checks them against it)
    made_with = json.loads((REPO_ROOT / "configs" / "reinforce" / "toy.json").read_text())
    (root / "reinforce.json").write_text(json.dumps({**made_with, "num_samples": NUM_AUGMENTATIONS}))
    spec.update(datacomp_dir=str(root / "datacomp"), dr_dir=str(root / "dr"),
                reinforcement_config=str(root / "reinforce.json"))
    return spec


def test_training_on_bad_shards_goes_on_and_reports_the_counts(datacomp, tmp_path, caplog):
    from mobileclip_repro.train.train import train

    _, expected = _bad_shards(tmp_path, datacomp)
    # enough steps that every planted sample is drawn (the draw is seeded, so this is fixed)
    spec = _training_spec(tmp_path, seen_samples=64)
    with caplog.at_level(logging.INFO):
        manifest = train(spec, tmp_path / "run", device_name="cpu")

    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "epoch_2.pt").exists()
    written = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert written["skipped_samples"] == manifest["skipped_samples"]
    # the stream reads the shards many times over: every planted reason shows up, no other
    assert {r for r, n in written["skipped_samples"].items() if n} == set(expected)
    assert sum(e["skipped_samples"]["sha256_mismatch"] for e in written["epochs"]) == \
        written["skipped_samples"]["sha256_mismatch"]
    log = caplog.text
    assert "skipped sample [uid_mismatch]" in log and "skipped (all ranks)" in log
    assert "skipped samples over the run" in log and "non_finite_embedding" in log


def test_a_requeued_run_keeps_the_earlier_attempts_epochs_and_counts(datacomp, tmp_path):
    from mobileclip_repro.train.train import train

    _bad_shards(tmp_path, datacomp)
    spec = _training_spec(tmp_path)
    first = train(spec, tmp_path / "run", device_name="cpu")
    (tmp_path / "run" / "checkpoints" / "epoch_2.pt").unlink()  # preempted before the 2nd checkpoint

    second = train(spec, tmp_path / "run", device_name="cpu")
    assert second["attempts"] == 2
    assert second["epochs"][0] == first["epochs"][0], "epoch 1 comes from the first attempt"
    assert [e["epoch"] for e in second["epochs"]] == [1, 2]
    totals = {r: sum(e["skipped_samples"][r] for e in second["epochs"]) for r in second["skipped_samples"]}
    assert second["skipped_samples"] == totals


def test_shards_pair_by_relative_path_in_the_nested_1b_layout(tmp_path):
    for root in ("datacomp", "dr"):
        for shard in ("00/00000000.tar", "00/00000001.tar", "65/00000535.tar"):
            (tmp_path / root / shard).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / shard).write_bytes(b"")
    (tmp_path / "datacomp" / "00" / "00000002.tar.partial").write_bytes(b"")  # an interrupted write
    pairs = paired_shards(shards.list_shards(tmp_path / "datacomp"), tmp_path / "datacomp", tmp_path / "dr")
    assert [(d.relative_to(tmp_path).as_posix(), r.relative_to(tmp_path).as_posix()) for d, r in pairs] == [
        ("datacomp/00/00000000.tar", "dr/00/00000000.tar"), ("datacomp/00/00000001.tar", "dr/00/00000001.tar"),
        ("datacomp/65/00000535.tar", "dr/65/00000535.tar")]
