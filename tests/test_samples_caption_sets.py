"""v2 reinforced samples (docs/reference.md §9): several synthetic-caption sets per sample.

Per sample one set is drawn uniformly among the syn.json keys the run's regex matches, then a
caption of it; the caption goes with its own teacher embedding, a row appended to text_emb
(v1) or a row of the payload's ``<set>_emb`` (v2), in whichever layout the sample is stored.
v1 samples draw exactly what they drew before sets existed. A sample that offers no usable
set is skipped and counted, never a crash; a regex that cannot select anything fails when
the config loads.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mobileclip_repro import preflight, replay, shards, toyworld
from mobileclip_repro.config import REPO_ROOT, ConfigError, load_config
from mobileclip_repro.reinforce.reinforce import encode_pth
from mobileclip_repro.train.samples import DRSamples, SampleSkipped, SkipCounter, assemble_dr_example, paired_shards

EMBEDDING_DIM = 8
NUM_AUGMENTATIONS = 3
IMAGE_KIND, TRUTH_KIND, APPENDED_KIND = 0.0, 1.0, 2.0
SET_ID = {"syn_text": 10.0, "syn_text_a": 11.0, "syn_text_b": 12.0, "syn_text_dfn_mscoco38k": 13.0}
REPLAY = replay.ReplayTransform((16, 16), replay.InterpolationMode.BICUBIC, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _row(kind: float, sample: int, row: int) -> np.ndarray:
    """An embedding row that says what it is: small integers, exact in bf16 too."""
    values = np.zeros(EMBEDDING_DIM, np.float32)
    values[:3] = kind, sample, row
    return values


def _caption(key: str, sample: int, row: int) -> str:
    return f"{key} caption {row} of sample {sample}"


def _dr(datacomp: dict, index: int, *, v1: int | None = None, sets: dict[str, int] | None = None,
        payload: str = "npz") -> dict:
    """A DataCompDR sample for ``datacomp``: ``v1`` captions in syn_text with rows appended to
    text_emb, and/or v2 ``sets`` (key -> captions), each with its own ``<key>_emb``."""
    image = shards.decode_image(datacomp["jpg"])
    generator = torch.Generator().manual_seed(index)
    param_aug = [replay.sample_param_aug(image.width, image.height, generator, size=16)
                 for _ in range(NUM_AUGMENTATIONS)]
    image_emb = np.stack([_row(IMAGE_KIND, index, a) for a in range(NUM_AUGMENTATIONS)])
    text_emb = np.stack([_row(TRUTH_KIND, index, 0)] + [_row(APPENDED_KIND, index, s) for s in range(v1 or 0)])
    syn_text = [_caption("syn_text", index, s) for s in range(v1)] if v1 else None
    syn_sets = {key: ([_caption(key, index, s) for s in range(count)],
                      np.stack([_row(SET_ID[key], index, s) for s in range(count)]))
                for key, count in (sets or {}).items()}
    meta = json.loads(datacomp["json"])
    record = shards.dr_record(datacomp["__key__"], meta["uid"], meta["sha256"], meta["url"], syn_text, param_aug,
                              image_emb, text_emb, syn_sets)
    if payload == "pth.gz":
        del record["npz"]
        record["pth.gz"] = encode_pth(torch.from_numpy(image_emb), torch.from_numpy(text_emb),
                                      {key + "_emb": torch.from_numpy(rows) for key, (_, rows) in syn_sets.items()})
    return record


def _expected_emb(key: str, sample: int, row: int) -> np.ndarray:
    """Where caption ``row`` of set ``key`` keeps its embedding, as ``_dr`` wrote it."""
    return _row(APPENDED_KIND, sample, row) if key == "syn_text" else _row(SET_ID[key], sample, row)


def _bytes(sample: dict) -> dict:
    return {k: v.encode() if isinstance(v, str) and k != "__key__" else v for k, v in sample.items()}


def _arrays(sample: dict) -> dict[str, np.ndarray]:
    return shards.decode_payload(_bytes(sample))


def _with_arrays(sample: dict, arrays: dict[str, np.ndarray]) -> dict:
    image_emb, text_emb = arrays.pop("image_emb"), arrays.pop("text_emb")
    return {**sample, "npz": shards.encode_npz(image_emb, text_emb, arrays)}


@pytest.fixture(scope="module")
def datacomp(tmp_path_factory) -> list[dict]:
    """16 toy-world DataComp samples (jpg/txt/json), in key order."""
    root = tmp_path_factory.mktemp("world")
    toyworld.generate(root, train_samples=16, teacher_samples=1, benchmark_samples=1, samples_per_shard=16)
    return [s for tar in shards.list_shards(root / "datacomp") for s in shards.iter_raw_samples(tar)]


def _write(path: Path, samples: list[dict]) -> None:
    with shards.atomic_tar_writer(path, mtime=0) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})


def _examples(root: Path, datacomp: list[dict], dr: list[dict], regex: str = shards.DEFAULT_SYN_CAPTION_REGEX,
              passes: int = 1) -> tuple[list, SkipCounter]:
    """The trainer's dataset over one DataComp/DataCompDR shard pair: its examples and skip counts."""
    _write(root / "datacomp" / "00000000.tar", datacomp)
    _write(root / "dr" / "00000000.tar", dr)
    counter = SkipCounter()
    pairs = paired_shards(shards.list_shards(root / "datacomp"), root / "datacomp", root / "dr")
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=0, resampled=False, counter=counter, shuffle_buffer=1,
                        passes=passes, embedding_dim=EMBEDDING_DIM, syn_caption_regex=regex)
    return list(dataset.examples()), counter


def _assert_paired(example) -> None:
    """The example's synthetic caption and its embedding are row s of the set drawn."""
    index = int(example.image_emb[1])
    assert example.syn_caption == _caption(example.syn_key, index, example.syn)
    np.testing.assert_array_equal(example.syn_emb, _expected_emb(example.syn_key, index, example.syn))
    np.testing.assert_array_equal(example.caption_emb, _row(TRUTH_KIND, index, 0))
    np.testing.assert_array_equal(example.image_emb, _row(IMAGE_KIND, index, example.aug))


# -- the layouts of §9 ---------------------------------------------------------------------------

LAYOUTS = {
    "v1 appended": ({"v1": 5}, {"syn_text"}),
    "v2 single set": ({"sets": {"syn_text_dfn_mscoco38k": 4}}, {"syn_text_dfn_mscoco38k"}),
    "v2 several sets": ({"sets": {"syn_text_a": 3, "syn_text_b": 2}}, {"syn_text_a", "syn_text_b"}),
    "both layouts in one sample": ({"v1": 5, "sets": {"syn_text_a": 3}}, {"syn_text", "syn_text_a"}),
}


@pytest.mark.parametrize("payload", ["npz", "pth.gz"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_synthetic_caption_comes_with_its_own_embedding_row(datacomp, tmp_path, layout, payload):
    kwargs, keys = LAYOUTS[layout]
    examples, counter = _examples(tmp_path, datacomp, [_dr(s, i, payload=payload, **kwargs)
                                                       for i, s in enumerate(datacomp)], passes=4)

    assert counter.totals() == {}
    assert len(examples) == 4 * len(datacomp)
    for example in examples:
        _assert_paired(example)
    assert {e.syn_key for e in examples} == keys, "every selected set is drawn from"


def test_appended_rows_belong_to_syn_text_or_to_the_only_set(datacomp):
    v1 = _dr(datacomp[0], 0, v1=5)
    captions = json.loads(v1["syn.json"])["syn_text"]
    renamed = _bytes({**v1, "syn.json": json.dumps({"syn_text_coca": captions})})
    record = shards.decode_reinforcement(renamed)
    np.testing.assert_array_equal(record.syn_embs["syn_text_coca"], _arrays(v1)["text_emb"][1:])
    # beside another set they are syn_text's, so a set without its own array has none
    two = _bytes({**v1, "syn.json": json.dumps({"syn_text_coca": captions, "syn_text_x": captions})})
    with pytest.raises(shards.MissingCaptionSet, match="syn_text_coca_emb"):
        shards.decode_reinforcement(two)


def test_a_shard_may_mix_v1_and_v2_samples(datacomp, tmp_path):
    dr = [_dr(s, i, v1=5) if i % 2 else _dr(s, i, sets={"syn_text_a": 3, "syn_text_b": 2})
          for i, s in enumerate(datacomp)]
    examples, counter = _examples(tmp_path, datacomp, dr, passes=4)

    assert counter.totals() == {}
    for example in examples:
        _assert_paired(example)
        assert (example.syn_key == "syn_text") == (int(example.image_emb[1]) % 2 == 1)


def test_the_regex_selects_the_sets_drawn_from(datacomp, tmp_path):
    dr = [_dr(s, i, v1=5, sets={"syn_text_a": 3, "syn_text_b": 2}) for i, s in enumerate(datacomp)]
    examples, counter = _examples(tmp_path, datacomp, dr, regex="^syn_text_b$", passes=4)

    assert counter.totals() == {}
    assert {e.syn_key for e in examples} == {"syn_text_b"}
    assert {e.syn for e in examples} == {0, 1}
    for example in examples:
        _assert_paired(example)
    # re.match anchors at the start only: a prefix selects every set it begins
    examples, _ = _examples(tmp_path / "prefix", datacomp, dr, regex="syn_text_", passes=4)
    assert {e.syn_key for e in examples} == {"syn_text_a", "syn_text_b"}


def test_the_set_is_drawn_uniformly_then_the_caption_within_it(datacomp):
    dr = _bytes(_dr(datacomp[0], 0, sets={"syn_text_a": 3, "syn_text_b": 2}))
    rng = random.Random(0)
    drawn = Counter()
    for _ in range(600):
        example = assemble_dr_example(datacomp[0], dr, REPLAY, rng, EMBEDDING_DIM)
        drawn[example.syn_key, example.syn] += 1
    by_set = Counter({key: sum(n for (k, _), n in drawn.items() if k == key) for key in ("syn_text_a", "syn_text_b")})
    # uniform over sets (not over captions, which would give a 360/240 split): 300 +- 5 sd
    assert 240 <= by_set["syn_text_a"] <= 360
    assert set(drawn) == {("syn_text_a", s) for s in range(3)} | {("syn_text_b", s) for s in range(2)}


# -- the draws: v1 exactly as before, a set drawn only when there is a choice -------------------------

def _reference_draws(seed: int, keys: list[str], sizes: dict[str, int]) -> tuple[random.Random, tuple]:
    """What Apple's reader draws, in order: aug, the set (only among several), the caption."""
    rng = random.Random(seed)
    aug = rng.randrange(NUM_AUGMENTATIONS)
    key = keys[rng.randrange(len(keys))] if len(keys) > 1 else keys[0]
    return rng, (aug, key, rng.randrange(sizes[key]))


@pytest.mark.parametrize("kwargs, regex, keys", [
    ({"v1": 5}, shards.DEFAULT_SYN_CAPTION_REGEX, ["syn_text"]),
    ({"sets": {"syn_text_dfn_mscoco38k": 4}}, shards.DEFAULT_SYN_CAPTION_REGEX, ["syn_text_dfn_mscoco38k"]),
    ({"v1": 5, "sets": {"syn_text_a": 3, "syn_text_b": 2}}, "^syn_text_a$", ["syn_text_a"]),
    ({"sets": {"syn_text_a": 3, "syn_text_b": 2}}, shards.DEFAULT_SYN_CAPTION_REGEX, ["syn_text_a", "syn_text_b"]),
], ids=["v1", "v2-one-set", "one-set-selected", "two-sets"])
def test_a_sample_consumes_the_draws_of_the_reference_reader(datacomp, kwargs, regex, keys):
    dr = _bytes(_dr(datacomp[0], 0, **kwargs))
    sizes = {"syn_text": kwargs.get("v1"), **kwargs.get("sets", {})}
    for seed in range(20):
        rng = random.Random(seed)
        example = assemble_dr_example(datacomp[0], dr, REPLAY, rng, EMBEDDING_DIM, regex)
        reference, draws = _reference_draws(seed, keys, sizes)
        assert (example.aug, example.syn_key, example.syn) == draws
        # nothing else drawn: the next sample's draws are the reference's too
        assert rng.getstate() == reference.getstate()


def test_a_v1_sample_draws_as_a_reader_without_sets(datacomp):
    """The v1 reader this project had: aug, then s among syn_text, nothing else."""
    dr = _bytes(_dr(datacomp[3], 3, v1=5))
    rng, reference = random.Random(11), random.Random(11)
    for _ in range(30):
        example = assemble_dr_example(datacomp[3], dr, REPLAY, rng, EMBEDDING_DIM)
        assert (example.aug, example.syn) == (reference.randrange(NUM_AUGMENTATIONS), reference.randrange(5))
        assert example.syn_caption == _caption("syn_text", 3, example.syn)
        np.testing.assert_array_equal(example.syn_emb, _row(APPENDED_KIND, 3, example.syn))


# -- samples that offer no usable set: skipped and counted -----------------------------------------

def _no_matching_set(sample: dict) -> dict:
    return sample  # the regex of the case selects nothing in it


def _drop_set_emb(sample: dict) -> dict:
    arrays = _arrays(sample)
    del arrays["syn_text_b_emb"]
    return _with_arrays(sample, arrays)


def _short_set_emb(sample: dict) -> dict:
    arrays = _arrays(sample)
    arrays["syn_text_a_emb"] = arrays["syn_text_a_emb"][:2]
    return _with_arrays(sample, arrays)


def _short_appended_rows(sample: dict) -> dict:
    arrays = _arrays(sample)
    arrays["text_emb"] = arrays["text_emb"][:4]
    return _with_arrays(sample, arrays)


def _v1_rows_dropped(sample: dict) -> dict:
    arrays = _arrays(sample)
    arrays["text_emb"] = arrays["text_emb"][:1]
    return _with_arrays(sample, arrays)


def _set_emb_of_other_width(sample: dict) -> dict:
    arrays = _arrays(sample)
    arrays["syn_text_a_emb"] = np.zeros((3, EMBEDDING_DIM + 1), np.float32)
    return _with_arrays(sample, arrays)


def _nan_in_an_undrawn_set(sample: dict) -> dict:
    arrays = _arrays(sample)
    arrays["syn_text_b_emb"][1, 4] = np.nan
    return _with_arrays(sample, arrays)


def _empty_set(sample: dict) -> dict:
    syn_json = json.loads(sample["syn.json"])
    syn_json["syn_text_a"] = []
    return {**sample, "syn.json": json.dumps(syn_json)}


def _set_not_a_list(sample: dict) -> dict:
    syn_json = json.loads(sample["syn.json"])
    syn_json["syn_text_a"] = "one caption"
    return {**sample, "syn.json": json.dumps(syn_json)}


def _syn_json_not_an_object(sample: dict) -> dict:
    return {**sample, "syn.json": json.dumps(["a", "b"])}


TWO_SETS = {"sets": {"syn_text_a": 3, "syn_text_b": 2}}
BAD_SAMPLES = {
    # name: (sample, mutation, regex, reason, words the detail must contain)
    "no set matches the regex": (TWO_SETS, _no_matching_set, "^syn_text_dfn", "missing_key",
                                 ["^syn_text_dfn", "syn_text_a"]),
    "a selected set has no <set>_emb": (TWO_SETS, _drop_set_emb, None, "missing_key", ["syn_text_b_emb"]),
    "v1 rows gone, no syn_text_emb": ({"v1": 5}, _v1_rows_dropped, None, "missing_key", ["syn_text_emb"]),
    "<set>_emb shorter than the set": (TWO_SETS, _short_set_emb, None, "bad_reinforcement", ["syn_text_a", "2", "3"]),
    "appended rows fewer than syn_text": ({"v1": 5}, _short_appended_rows, None, "bad_reinforcement",
                                          ["3", "5", "syn_text"]),
    "<set>_emb of another width": (TWO_SETS, _set_emb_of_other_width, None, "bad_reinforcement", ["syn_text_a_emb"]),
    "NaN in a set not drawn": (TWO_SETS, _nan_in_an_undrawn_set, "^syn_text_", "non_finite_embedding", ["NaN"]),
    "an empty set": (TWO_SETS, _empty_set, None, "bad_reinforcement", ["syn_text_a"]),
    "a set that is not a list": (TWO_SETS, _set_not_a_list, None, "bad_reinforcement", ["syn_text_a"]),
    "syn.json not an object": (TWO_SETS, _syn_json_not_an_object, None, "bad_reinforcement", ["syn.json"]),
}


@pytest.mark.parametrize("name", list(BAD_SAMPLES))
def test_a_sample_without_a_usable_set_is_skipped_naming_why(datacomp, name):
    kwargs, mutate, regex, reason, words = BAD_SAMPLES[name]
    dr = _bytes(mutate(_dr(datacomp[0], 0, **kwargs)))
    with pytest.raises(SampleSkipped) as skipped:
        assemble_dr_example(datacomp[0], dr, REPLAY, random.Random(0), EMBEDDING_DIM,
                            regex or shards.DEFAULT_SYN_CAPTION_REGEX)
    assert (skipped.value.reason, skipped.value.side) == (reason, "dr")
    assert all(word in skipped.value.detail for word in words), skipped.value.detail


def test_bad_samples_are_counted_and_the_good_ones_come_through(datacomp, tmp_path):
    bad = [name for name in BAD_SAMPLES if BAD_SAMPLES[name][2] is None]
    dr, expected = [], Counter()
    for index, sample in enumerate(datacomp):
        if index < len(bad):
            kwargs, mutate, _, reason, _ = BAD_SAMPLES[bad[index]]
            dr.append(mutate(_dr(sample, index, **kwargs)))
            expected[reason] += 1
        else:
            dr.append(_dr(sample, index, **TWO_SETS))
    examples, counter = _examples(tmp_path, datacomp, dr)

    assert counter.totals() == dict(expected)
    assert sorted(int(e.image_emb[1]) for e in examples) == list(range(len(bad), len(datacomp)))


def test_a_regex_that_matches_nothing_anywhere_stops_the_stream_naming_it(datacomp, tmp_path):
    from mobileclip_repro.train.samples import TooManySkips

    dr = [_dr(s, i, **TWO_SETS) for i, s in enumerate(datacomp)]
    _write(tmp_path / "datacomp" / "00000000.tar", datacomp)
    _write(tmp_path / "dr" / "00000000.tar", dr)
    pairs = paired_shards(shards.list_shards(tmp_path / "datacomp"), tmp_path / "datacomp", tmp_path / "dr")
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=0, resampled=True,
                        counter=SkipCounter(max_consecutive=20), shuffle_buffer=1, syn_caption_regex="^syn_text_x$")
    with pytest.raises(TooManySkips, match=r"missing_key.*\^syn_text_x\$"):
        next(iter(dataset.examples()))


# -- writing the v2 layout ---------------------------------------------------------------------------

def test_the_v2_layout_on_disk(datacomp):
    record = _dr(datacomp[0], 0, sets={"syn_text_a": 3, "syn_text_b": 2})
    assert json.loads(record["syn.json"]) == {key: [_caption(key, 0, s) for s in range(n)]
                                              for key, n in (("syn_text_a", 3), ("syn_text_b", 2))}
    arrays = _arrays(record)
    assert sorted(arrays) == ["image_emb", "syn_text_a_emb", "syn_text_b_emb", "text_emb"]
    assert arrays["text_emb"].shape == (1, EMBEDDING_DIM), "only the ground truth's row"
    decoded = shards.decode_reinforcement(_bytes(record))
    assert decoded.syn_text == [] and list(decoded.syn_sets) == ["syn_text_a", "syn_text_b"]


@pytest.mark.parametrize("kwargs, message", [
    ({"syn_text": None, "syn_sets": {}}, "no synthetic captions"),
    ({"syn_text": ["x"], "syn_sets": {"syn_text": (["y"], np.zeros((1, EMBEDDING_DIM)))}}, "both"),
    ({"syn_text": None, "syn_sets": {"syn_text_a": (["y", "z"], np.zeros((1, EMBEDDING_DIM)))}}, "1 embeddings"),
])
def test_the_writer_refuses_sets_it_could_not_read_back(kwargs, message):
    text_emb = np.zeros((1 + len(kwargs["syn_text"] or []), EMBEDDING_DIM))
    with pytest.raises(ValueError, match=message):
        shards.dr_record("k", "u", "0" * 64, "http://x", kwargs["syn_text"], [[[0, 0, 8, 8], []]],
                         np.zeros((1, EMBEDDING_DIM)), text_emb, kwargs["syn_sets"])


def test_a_v1_record_keeps_the_v1_layout(datacomp):
    record = _dr(datacomp[0], 0, v1=5)
    assert json.loads(record["syn.json"]) == {"syn_text": [_caption("syn_text", 0, s) for s in range(5)]}
    arrays = _arrays(record)
    assert sorted(arrays) == ["image_emb", "text_emb"] and arrays["text_emb"].shape == (6, EMBEDDING_DIM)


# -- the regex is run config -------------------------------------------------------------------------

@pytest.fixture
def toy(tmp_path) -> dict:
    config = json.loads(json.dumps(yaml.safe_load((REPO_ROOT / "configs" / "toy.yaml").read_text())))
    config["results_dir"] = str(tmp_path / "results")
    return config


def test_the_default_regex_is_apples_and_draws_from_every_set(toy):
    config = load_config(toy)
    assert config["runs"]["toy_dr"]["syn_caption_regex"] == shards.DEFAULT_SYN_CAPTION_REGEX == "^syn_text.*$"


def test_a_regex_that_does_not_compile_fails_when_the_config_loads(toy):
    toy["runs"]["toy_dr"]["syn_caption_regex"] = "^syn_text_(dfn"
    with pytest.raises(ConfigError, match=r"config key 'runs\.toy_dr\.syn_caption_regex': .*not a regular expression"):
        load_config(toy)


def test_a_regex_selecting_none_of_the_sets_the_reinforcement_writes_fails_when_the_config_loads(toy):
    toy["runs"]["toy_dr"]["syn_caption_regex"] = "^syn_text_dfn_mscoco38k$"
    with pytest.raises(ConfigError, match=r"'runs\.toy_dr\.syn_caption_regex'.*selects none.*\(syn_text\)"):
        preflight.load_experiment(toy)
    toy["reinforcement"]["captioner"] = {"dfn_mscoco38k": "world", "docci": "world"}
    assert preflight.load_experiment(toy)["runs"]["toy_dr"]["syn_caption_regex"] == "^syn_text_dfn_mscoco38k$"


def test_a_regex_selecting_none_of_the_sets_of_shards_on_disk_is_refused(datacomp, tmp_path):
    _write(tmp_path / "dr" / "00000000.tar", [_dr(s, i, **TWO_SETS) for i, s in enumerate(datacomp[:4])])
    preflight.check_dr_shards(tmp_path / "dr", {}, {}, {"runs.x.syn_caption_regex": "^syn_text_b$"})
    with pytest.raises(ConfigError, match=r"'runs\.x\.syn_caption_regex'.*selects none.*syn_text_a, syn_text_b"):
        preflight.check_dr_shards(tmp_path / "dr", {}, {}, {"runs.x.syn_caption_regex": "^syn_text_dfn"})
