"""The dataset-size axis (issue 22): ``data.subsets`` expands each run into one run per size,
each trained on a nested uniform subset (ranked by a seeded hash of the uid, the same uids for
DR and non-DR runs, DR runs keeping the full data's reinforcement of them); the report reads
the data-efficiency multiplier off the final accuracies."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from mobileclip_repro import cli, shards, subsets, toyworld
from mobileclip_repro.report import efficiency
from mobileclip_repro.config import ConfigError, load_config, resolve_run
from mobileclip_repro.train.samples import DRSamples, PlainCLIPSamples, SkipCounter, paired_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subsets_world")
    toyworld.generate(root, train_samples=60, teacher_samples=1, benchmark_samples=1, samples_per_shard=20)
    return root


def _select(world: Path, out: Path, sizes: list[int], seed: int = 0) -> dict:
    assert cli.main(["select-subsets", "--datacomp-dir", str(world / "datacomp"), "--sizes", *map(str, sizes),
                     "--seed", str(seed), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _all_uids(world: Path) -> list[str]:
    return [json.loads(s["json"])["uid"] for tar in shards.list_shards(world / "datacomp")
            for s in shards.iter_raw_samples(tar)]


def test_subsets_are_nested_deterministic_and_uniform_over_shards(world, tmp_path):
    selection = _select(world, tmp_path / "a.json", [10, 30, 60])
    again = _select(world, tmp_path / "b.json", [60, 10, 30])
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes(), "same data, seed: same bytes"
    small, medium, full = (subsets.members(tmp_path / "a.json", n) for n in (10, 30, 60))
    assert small < medium < full and (len(small), len(medium), len(full)) == (10, 30, 60)
    assert full == set(_all_uids(world)) and selection["unranked"] == 0 and again["samples"] == 60
    # ranked by the hash, not by position: the 30-sample subset draws from all three shards
    shard_of = {uid: position // 20 for position, uid in enumerate(_all_uids(world))}
    assert {shard_of[uid] for uid in medium} == {0, 1, 2}
    other_seed = _select(world, tmp_path / "c.json", [30], seed=1)
    assert set(other_seed["uids"]) != medium


def test_a_subset_larger_than_the_data_is_refused_naming_the_key(world, tmp_path):
    with pytest.raises(ValueError, match="config key 'data.subsets': a subset of 61 samples, but the data has 60"):
        subsets.select(world / "datacomp", [10, 61], 0)


def test_a_sample_without_a_readable_uid_is_in_no_subset_and_is_counted(world, tmp_path):
    broken = tmp_path / "datacomp"
    broken.mkdir()
    samples = [s for s in shards.iter_raw_samples(shards.list_shards(world / "datacomp")[0])]
    samples[3] = {**samples[3], "json": b"{not json"}
    del samples[5]["json"]
    with shards.atomic_tar_writer(broken / shards.shard_name(0), mtime=0) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    selection = subsets.select(broken, [18], 0)
    assert selection["unranked"] == 2 and len(selection["unranked_examples"]) == 2
    assert selection["samples"] == 18 and len(selection["uids"]) == 18


def _toy_config(tmp_path: Path, **data) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "toy.yaml").read_text())
    raw["data"].update(data)
    raw["results_dir"] = str(tmp_path / "results")
    return raw


def test_data_subsets_expands_every_run_into_one_run_per_size(tmp_path):
    raw = _toy_config(tmp_path, subsets=[1000, 250], subset_seed=3)
    raw["report"]["efficiency_pairs"] = [["toy_dr", "toy_plain"]]
    config = load_config(raw)
    assert list(config["runs"]) == ["toy_dr_n250", "toy_dr_n1000", "toy_plain_n250", "toy_plain_n1000"]
    spec = resolve_run(config, "toy_plain_n250", seed=1)
    assert (spec["subset_size"], spec["subset_of"], spec["seen_samples"]) == (250, "toy_plain", 32768)
    assert spec["subset_file"] == str(tmp_path / "results" / "data" / "subsets" / "seed_3.json")
    assert config["report"]["efficiency_pairs"] == [["toy_dr_n250", "toy_plain_n250"],
                                                    ["toy_dr_n1000", "toy_plain_n1000"]]
    assert list(load_config(config)["runs"]) == list(config["runs"]), "loading an expanded config again expands nothing"


@pytest.mark.parametrize("data, runs, message", [
    ({"subsets": [250, 8000]}, {}, "config key 'data.subsets': a subset of 8,000 samples, but the toy world has "
                                   "data.toy.train_samples = 4,000"),
    ({"subsets": [250, 250]}, {}, "data.subsets"),
    ({"subsets": [0]}, {}, "data.subsets"),
    ({"subsets": [250]}, {"toy_dr_n250": {"model": "toy-student", "seen_samples": 128, "global_batch_size": 128,
                                          "warmup_steps": 0}},
     "config key 'runs.toy_dr_n250': the name data.subsets gives run 'toy_dr''s 250-sample subset"),
], ids=["larger than the world", "a size twice", "zero", "a name clash"])
def test_bad_subsets_are_refused_naming_the_key(tmp_path, data, runs, message):
    raw = _toy_config(tmp_path, **data)
    raw["runs"].update(runs)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(raw)


def test_both_arms_train_on_the_same_uids_and_dr_keeps_the_full_reinforcement(tmp_path, write_reinforced_toy):
    results = write_reinforced_toy(tmp_path, train_samples=40, samples_per_shard=20)
    datacomp_dir, dr_dir = results / "data" / "datacomp", results / "data" / "datacompdr"
    keep = frozenset(subsets.select(datacomp_dir, [12], seed=0)["uids"])
    plain = PlainCLIPSamples(shards.list_shards(datacomp_dir), transform=lambda image: image, tokenizer=lambda t: t,
                             seed=0, resampled=False, counter=SkipCounter(), shuffle_buffer=1, passes=1,
                             keep_uids=keep)
    pairs = paired_shards(shards.list_shards(datacomp_dir), datacomp_dir, dr_dir)
    from mobileclip_repro.replay import ReplayTransform

    replay = ReplayTransform((32, 32), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    counter = SkipCounter()
    subset = list(DRSamples(pairs, replay, None, seed=0, resampled=False, counter=counter, shuffle_buffer=1,
                            passes=1, keep_uids=keep).examples())
    captions = {json.loads(s["json"])["uid"]: s["txt"].decode()
                for tar in shards.list_shards(datacomp_dir) for s in shards.iter_raw_samples(tar)}
    assert sorted(example.caption for example in subset) == sorted(captions[uid] for uid in keep)
    assert sorted(caption for _, caption in plain) == sorted(captions[uid] for uid in keep)
    assert counter.totals() == {}, "the other subsets' samples are not skips"
    caption_of_key = {s["__key__"]: s["txt"].decode()
                      for tar in shards.list_shards(datacomp_dir) for s in shards.iter_raw_samples(tar)}
    stored = defaultdict(list)  # web alt-text repeats ("a photo"): a caption may name several samples
    for tar in shards.list_shards(dr_dir):
        for sample in shards.iter_raw_samples(tar):
            stored[caption_of_key[sample["__key__"]]].append(shards.decode_reinforcement(sample))
    for example in subset:  # the one reinforcement of the full data: its stored rows for the drawn augmentation
        assert any(torch.equal(torch.from_numpy(example.image_emb), torch.from_numpy(r.image_emb[example.aug]))
                   and example.syn_caption == r.syn_sets[example.syn_key][example.syn]
                   for r in stored[example.caption])


# -- the data-efficiency multiplier on hand-made final accuracies --------------------------------

def _records(run: str, dr: bool, finals: dict[int, list[float]], budget: int = 1000) -> list[dict]:
    """Records of a data.subsets run: per size, per seed, a mid checkpoint and the final one."""
    records = []
    for size, values in finals.items():
        for seed, value in enumerate(values):
            for seen, metric in ((budget // 2, value / 2), (budget, value)):
                records.append({"run": f"{run}_n{size}", "dr": dr, "model": "toy-student", "benchmark": "zs",
                                "task": "zeroshot_classification", "main_metric_name": "acc1", "main_metric": metric,
                                "seen_samples": seen, "seed": seed, "epoch": 1 if seen < budget else 2,
                                "run_spec": {"subset_size": size, "subset_of": run}})
    return records


def _data_records(dr: dict, plain: dict) -> list[dict]:
    return efficiency.data_efficiency_records(_records("dr", True, dr) + _records("plain", False, plain))


def test_the_non_dr_size_reaching_drs_accuracy_is_interpolated_in_log_size():
    [small, large] = _data_records({100: [0.40]}, {100: [0.10], 400: [0.30], 1600: [0.50]})[:1] + \
        _data_records({400: [0.50]}, {100: [0.10], 400: [0.30], 1600: [0.50]})
    # 0.40 lies halfway between 400 (0.30) and 1600 (0.50) in accuracy: 800 samples in log size
    assert small["plain_size_needed"] == pytest.approx(800) and small["multiplier"] == pytest.approx(8)
    assert not small["lower_bound"] and not small["upper_bound"] and small["kind"] == "data"
    assert large["plain_size_needed"] == pytest.approx(1600) and large["multiplier"] == pytest.approx(4)


def test_a_non_dr_run_that_never_gets_there_gives_a_lower_bound():
    [result] = _data_records({100: [0.60, 0.70]}, {100: [0.1, 0.1], 1600: [0.5, 0.55]})
    assert result["lower_bound"] and result["multiplier"] == pytest.approx(16)
    assert [entry["lower_bound"] for entry in result["per_seed"]] == [True, True]
    assert "≥ 16.0×" in efficiency.describe_data(result)


def test_dr_below_non_dr_gives_a_multiplier_below_one():
    [result] = _data_records({1600: [0.20]}, {100: [0.10], 400: [0.30], 1600: [0.50]})
    assert result["multiplier"] < 1 and not result["lower_bound"] and not result["upper_bound"]
    assert result["plain_size_needed"] == pytest.approx(200)


def test_per_seed_pairs_and_the_seed_mean_are_both_reported():
    [result] = _data_records({100: [0.30, 0.50]}, {100: [0.10, 0.10], 400: [0.30, 0.30], 1600: [0.50, 0.50]})
    assert [entry["multiplier"] for entry in result["per_seed"]] == pytest.approx([4, 16])
    assert result["range"] == pytest.approx([4, 16]) and result["target"] == pytest.approx(0.40)
    assert result["multiplier"] == pytest.approx(8), "the seed mean's 40% is reached at 800 samples"


def test_the_paper_subset_config_gives_every_size_the_recipes_budget(repo_root):
    config = load_config(repo_root / "configs" / "paper" / "subsets-1b.yaml")
    sizes = [1_280_000, 12_800_000, 128_000_000]
    assert sorted(config["runs"]) == sorted(f"subsets1b_{arm}_n{size}" for arm in ("dr", "plain") for size in sizes)
    for name, run in config["runs"].items():
        assert run["subset_size"] in sizes and name.endswith(f"_n{run['subset_size']}")
        # 30,000 steps x 8,192 at every size: only the unique data differs
        assert (run["seen_samples"], run["global_batch_size"], run["model"]) == (245_760_000, 8192, "ViT-B-16")
