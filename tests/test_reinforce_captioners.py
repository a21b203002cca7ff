"""Reinforcement with several captioners (docs/reference.md §9): each writes its own
``syn_text_<suffix>`` set with its teacher embeddings in ``syn_text_<suffix>_emb``, and the
trainer draws from the sets its ``syn_caption_regex`` selects.

Two captioners of different kinds (the toy world's oracle and a tiny CoCa) make the sets
tell apart by their text alone: a regex selecting one set must never yield the other's
captions.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_repro import cli, config, preflight, shards, toyworld
from mobileclip_repro.train import train as trainer
from mobileclip_repro.models import create_model_and_transforms, get_tokenizer
from mobileclip_repro.train.samples import SkipCounter
from mobileclip_repro.seeding import seed_from
from mobileclip_repro.teachers import TeacherEnsemble

REPO = Path(__file__).resolve().parents[1]
NUM_SYN = 3
CAPTIONERS = {"oracle": "world", "toycoca": {"coca": {"model_name": "toy-coca", "pretrained": "toy_coca.pt"}}}
SETS = ["syn_text_oracle", "syn_text_toycoca"]
TEACHERS = ("teacher_a.pt", "teacher_b.pt")


@pytest.fixture(scope="module")
def world(tmp_path_factory, write_toy_teachers) -> dict:
    root = tmp_path_factory.mktemp("reinforce_v2")
    toyworld.generate(root / "data", train_samples=8, teacher_samples=1, benchmark_samples=1, samples_per_shard=4)
    teachers = write_toy_teachers(root / "teachers", TEACHERS)
    torch.manual_seed(0)
    coca, _, _ = create_model_and_transforms("toy-coca")
    # open_clip leaves a fresh CoCa's decoder projection uninitialized (real runs load weights)
    torch.nn.init.normal_(coca.text_decoder.text_projection, std=coca.text_decoder.width ** -0.5)
    torch.save({"state_dict": coca.state_dict()}, teachers / "toy_coca.pt")
    return {"root": root, "datacomp": root / "data" / "datacomp", "teachers": teachers}


def _reinforce(world: dict, out_dir: Path, captioner, *extra: str) -> None:
    assert cli.main(["reinforce", "--datacomp-dir", str(world["datacomp"]), "--out-dir", str(out_dir),
                     "--reinforce-config", str(REPO / "configs" / "reinforce" / "toy.json"),
                     "--pretrained-root", str(world["teachers"]), "--captioner-json", json.dumps(captioner),
                     "--num-syn-captions", str(NUM_SYN), "--seed", "0", "--device", "cpu", *extra]) == 0


def _samples(directory: Path) -> list[dict]:
    return [s for tar in shards.list_shards(directory) for s in shards.iter_raw_samples(tar)]


@pytest.fixture(scope="module")
def reinforced(world) -> Path:
    """The two captioners' DataCompDR shards, where a config with these settings expects them."""
    out_dir = world["root"] / "data" / "datacompdr"
    # a worker process makes CoCa's input beside the replay (the oracle needs none)
    _reinforce(world, out_dir, CAPTIONERS, "--batch-size", "8", "--workers", "1")
    return out_dir


def test_each_captioner_writes_its_own_set_and_embeddings(world, reinforced):
    ensemble = TeacherEnsemble(["toy-teacher"] * 2, list(TEACHERS), pretrained_root=world["teachers"])
    datacomp = {s["__key__"]: s for s in _samples(world["datacomp"])}
    samples = _samples(reinforced)
    assert [s["__key__"] for s in samples] == sorted(datacomp)
    for sample in samples:
        syn_json = json.loads(sample["syn.json"])
        assert list(syn_json) == SETS and all(len(syn_json[key]) == NUM_SYN for key in SETS)
        arrays = shards.decode_payload(sample)
        assert sorted(arrays) == sorted(["image_emb", "text_emb", *(key + "_emb" for key in SETS)])
        truth = datacomp[sample["__key__"]]["txt"].decode()
        np.testing.assert_allclose(arrays["text_emb"], ensemble.encode_texts([truth]).numpy(), atol=1e-5)
        for key in SETS:
            np.testing.assert_allclose(arrays[key + "_emb"], ensemble.encode_texts(syn_json[key]).numpy(), atol=1e-5)
        # the oracle describes the scene, with a seed of its own set
        meta = json.loads(datacomp[sample["__key__"]]["json"])
        assert syn_json["syn_text_oracle"] == toyworld.WorldCaptioner()(
            meta, NUM_SYN, seed_from("captions", 0, sample["__key__"], "syn_text_oracle"))
    every = [json.loads(s["syn.json"]) for s in samples]
    assert not {t for s in every for t in s["syn_text_oracle"]} & {t for s in every for t in s["syn_text_toycoca"]}
    manifest = json.loads((reinforced / "00000000.tar.manifest.json").read_text())
    assert manifest["captioner"] == CAPTIONERS


def _spec(world: dict, regex: str | None) -> dict:
    run = {"model": "toy-student", "data": "dr", "gpus_per_node": 0, "global_batch_size": 4, "seen_samples": 8,
           "warmup_steps": 1, "workers": 0, "distill": {"teacher_dimension": [64, 64]}}
    if regex is not None:
        run["syn_caption_regex"] = regex
    loaded = config.load_config({"name": "v2", "results_dir": str(world["root"]),
                                 "reinforcement": {"captioner": CAPTIONERS, "num_syn_captions": NUM_SYN},
                                 "runs": {"dr": run}})
    return config.resolve_run(loaded, "dr")


def _drawn(spec: dict, passes: int = 6) -> list:
    """The trainer's dataset for ``spec``: examples over a few passes of its shards."""
    model, _, _ = create_model_and_transforms(spec["model"])
    dataset = trainer.build_dataset(spec, model, None, get_tokenizer(spec["model"]), SkipCounter(), spec["seed"])
    dataset.passes = passes
    return list(dataset.examples())


@pytest.mark.parametrize("regex, drawn", [(None, SETS), ("^syn_text_toycoca$", ["syn_text_toycoca"]),
                                          ("^syn_text_oracle", ["syn_text_oracle"])])
def test_the_trainer_draws_from_the_sets_its_regex_selects(world, reinforced, regex, drawn):
    stored = {s["__key__"]: json.loads(s["syn.json"]) for s in _samples(reinforced)}
    arrays = {s["__key__"]: shards.decode_payload(s) for s in _samples(reinforced)}
    examples = _drawn(_spec(world, regex))

    assert len(examples) == 6 * len(stored)
    assert sorted({e.syn_key for e in examples}) == sorted(drawn)
    for example in examples:
        [key] = [k for k, a in arrays.items() if np.array_equal(a["text_emb"][0], example.caption_emb)]
        # the caption is one of the selected set's, never another set's, with its own embedding row
        assert example.syn_caption == stored[key][example.syn_key][example.syn]
        assert not any(example.syn_caption in stored[key][other] for other in SETS if other not in drawn)
        np.testing.assert_array_equal(example.syn_emb, arrays[key][example.syn_key + "_emb"][example.syn])


def test_captioners_of_one_kind_draw_apart_and_bf16_stores_every_set(world, tmp_path):
    _reinforce(world, tmp_path, {"a": "world", "b": "world"}, "--dtype", "bf16", "--shards", "00000000.tar")
    samples = _samples(tmp_path)
    assert samples and all("pth.gz" in s and "npz" not in s for s in samples)
    records = [shards.decode_reinforcement(s) for s in samples]
    assert all(list(r.syn_sets) == ["syn_text_a", "syn_text_b"] and len(r.text_emb) == 1 for r in records)
    assert any(r.syn_sets["syn_text_a"] != r.syn_sets["syn_text_b"] for r in records), "a seed per set"
    ensemble = TeacherEnsemble(["toy-teacher"] * 2, list(TEACHERS), pretrained_root=world["teachers"])
    for record in records:
        for key in ("syn_text_a", "syn_text_b"):
            np.testing.assert_allclose(record.syn_embs[key], ensemble.encode_texts(record.syn_sets[key]).numpy(),
                                       atol=1e-2)  # bf16


@pytest.mark.parametrize("captioner, message", [
    ({"a b": "world"}, "letters, digits"),
    ({}, "mapping suffix"),
    ({"a": "blip"}, "captioner spec must be"),
])
def test_a_captioner_mapping_the_reinforcement_cannot_use_is_refused(world, tmp_path, captioner, message):
    with pytest.raises(ValueError, match=message):
        _reinforce(world, tmp_path, captioner, "--shards", "00000000.tar")


@pytest.mark.parametrize("captioner, key", [
    ({"coca": "world"}, "reinforcement.captioner.coca"),  # "coca" is the one-CoCa form, not a suffix
    ({"a": {"coca": {"model_name": "toy-coca"}}}, "reinforcement.captioner.a.coca"),
    ({"a": "world", "b": {"coca": {"model_name": "coca-nope", "pretrained": "x.pt"}}},
     "reinforcement.captioner.b.coca.model_name"),
])
def test_a_captioner_mapping_the_config_cannot_use_is_refused_when_it_loads(tmp_path, captioner, key):
    with pytest.raises(config.ConfigError, match=rf"config key '{key}'"):
        preflight.load_experiment({"name": "v2", "results_dir": str(tmp_path), "reinforcement": {"captioner": captioner},
                                   "runs": {"dr": {"model": "toy-student", "data": "dr", "global_batch_size": 4,
                                                   "seen_samples": 8, "warmup_steps": 1,
                                                   "distill": {"teacher_dimension": [64, 64]}}}})
