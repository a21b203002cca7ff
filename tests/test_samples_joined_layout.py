"""Apple's joined layout (one tar per shard holding the DataComp and the DataCompDR keys) is a
data option: `join-shards` writes it from split shards, the trainer reads each tar once and
gets exactly the examples the split layout gives, and a sample missing one side is counted."""
import numpy as np
import pytest
import torch
import yaml

from mobileclip_repro import shards
from mobileclip_repro.cli import main
from mobileclip_repro.config import ConfigError, load_config, resolve_run
from mobileclip_repro.train.samples import DRSamples, SkipCounter, paired_shards

from test_samples import EMBEDDING_DIM, REPLAY, _dr_sample, _pair, _write, datacomp  # noqa: F401  (fixture)


def _split_and_joined(root, datacomp_samples):
    """The same 16 samples as two split shards and, through `join-shards`, as two joined ones."""
    for shard in (0, 1):
        part = datacomp_samples[8 * shard: 8 * shard + 8]
        _pair(root, part, [_dr_sample(sample, 8 * shard + i) for i, sample in enumerate(part)], shard=shard)
    assert main(["join-shards", "--datacomp-dir", str(root / "datacomp"), "--dr-dir", str(root / "dr"),
                 "--out-dir", str(root / "joined")]) == 0
    return root / "datacomp", root / "dr", root / "joined"


def _examples(pairs, counter):
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=3, resampled=False, counter=counter,
                        shuffle_buffer=4, passes=1, embedding_dim=EMBEDDING_DIM)
    return list(dataset.examples())


def test_joined_shards_give_the_split_layouts_examples_draw_for_draw(datacomp, tmp_path):
    split_dir, dr_dir, joined_dir = _split_and_joined(tmp_path, datacomp[:16])
    split = _examples(paired_shards(shards.list_shards(split_dir), split_dir, dr_dir), SkipCounter())
    joined_counter = SkipCounter()
    joined = _examples(paired_shards(shards.list_shards(joined_dir), joined_dir, None), joined_counter)
    assert len(joined) == len(split) == 16 and joined_counter.totals() == {}
    for a, b in zip(split, joined):
        assert (a.caption, a.syn_caption, a.aug) == (b.caption, b.syn_caption, b.aug)
        assert torch.equal(a.pixels, b.pixels) and np.array_equal(a.image_emb, b.image_emb)
        assert np.array_equal(a.syn_emb, b.syn_emb)


def test_a_joined_tar_holds_both_sides_of_each_sample_once(datacomp, tmp_path):
    _, _, joined_dir = _split_and_joined(tmp_path, datacomp[:16])
    (sample, *_) = shards.iter_raw_samples(joined_dir / shards.shard_name(0))
    assert {"jpg", "txt", "json", "syn.json", "paug.json", "npz"} <= set(sample)
    datacomp_side, dr_side = shards.split_joined_sample(sample)
    assert "jpg" in datacomp_side and "npz" not in datacomp_side
    assert "npz" in dr_side and "jpg" not in dr_side and dr_side["json"] == datacomp_side["json"]


def test_joined_samples_missing_a_side_are_counted_not_dropped_silently(datacomp, tmp_path):
    with_dr = [{**sample, **{k: v for k, v in _dr_sample(sample, i).items() if k in shards.DR_KEYS}}
               for i, sample in enumerate(datacomp[:6])]
    without_dr = dict(datacomp[6])
    without_image = {k: v for k, v in with_dr[5].items() if k != "jpg"}
    tar = tmp_path / "joined" / shards.shard_name(0)
    _write(tar, [*with_dr[:5], without_image, without_dr])
    counter = SkipCounter()
    examples = _examples([(tar, None)], counter)
    assert len(examples) == 5
    assert counter.totals() == {"no_image": 1, "no_reinforcement": 1}


def test_the_joined_layout_is_local_data_and_the_run_reads_its_tars_for_both_sides(repo_root, tmp_path):
    config = yaml.safe_load((repo_root / "configs" / "paper" / "datacompdr12m.yaml").read_text())
    config["data"] = {"source": "local", "layout": "joined", "datacomp_dir": str(tmp_path / "DataCompDR-12M")}
    # local data must be on disk when the config loads, and so must the benchmark roots it names
    with shards.atomic_tar_writer(tmp_path / "DataCompDR-12M" / shards.shard_name(0), mtime=0):
        pass
    config["evaluation"]["benchmarks"] = []
    spec = resolve_run(load_config({**config, "results_dir": str(tmp_path / "results")}), "datacompdr12m_s30m")
    assert spec["data_layout"] == "joined" and spec["dr_dir"] == spec["datacomp_dir"]
    hub_joined = {**config, "data": {"source": "hub", "layout": "joined"}}
    with pytest.raises(ConfigError, match="'data.layout'"):
        load_config({**hub_joined, "results_dir": str(tmp_path / "results")})
    with pytest.raises(ConfigError, match="'data.datacomp_dir'"):
        load_config({**config, "data": {"source": "local"}, "results_dir": str(tmp_path / "results")})
