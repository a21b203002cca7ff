"""The config schema: defaults filled, every mistake named by its key, derived values right."""
import copy
import json

import pytest
import yaml

from mobileclip_repro.config import ConfigError, load_config, resolve_run


@pytest.fixture
def toy(repo_root):
    # a JSON round trip unshares the YAML anchors, so editing one run leaves the other alone
    return json.loads(json.dumps(yaml.safe_load((repo_root / "configs" / "toy.yaml").read_text())))


def test_defaults_come_from_the_schema(toy):
    assert "beta2" not in toy["runs"]["toy_dr"]
    config = load_config(toy)
    run = config["runs"]["toy_dr"]
    assert run["beta1"] == 0.9 and run["beta2"] == 0.95 and run["eps"] == 1e-6
    assert run["weight_decay"] == 0.2 and run["grad_clip_norm"] == 1.0
    assert config["results_dir"] == "results/toy"
    assert config["evaluation"]["benchmarks"][0]["root"] == "results/toy/data/benchmarks/toy_zeroshot"


@pytest.mark.parametrize("path, value, expected", [
    (("runs", "toy_dr", "lr"), "fast", "runs.toy_dr.lr"),
    (("runs", "toy_dr", "precision"), "fp8", "runs.toy_dr.precision"),
    (("runs", "toy_dr", "distill", "loss_weights"), [1.0], "runs.toy_dr.distill.loss_weights"),
    (("data", "toy", "train_samples"), 0, "data.toy.train_samples"),
    (("evaluation", "benchmarks", 0, "task"), "linear_probe", "evaluation.benchmarks.0.task"),
    (("reinforcement", "captioner"), "blip", "reinforcement.captioner"),
])
def test_a_wrong_value_is_named_by_its_key(toy, path, value, expected):
    target = toy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=rf"'{expected}'"):
        load_config(toy)


def test_an_unknown_key_is_named(toy):
    toy["runs"]["toy_plain"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match=r"runs\.toy_plain.*'learning_rate' was unexpected"):
        load_config(toy)


def test_a_missing_required_key_is_named(toy):
    del toy["runs"]["toy_dr"]["seen_samples"]
    with pytest.raises(ConfigError, match=r"runs\.toy_dr.*'seen_samples' is a required property"):
        load_config(toy)


def test_seen_samples_must_split_into_whole_batches_per_checkpoint(toy):
    toy["runs"]["toy_dr"]["seen_samples"] = 1000
    with pytest.raises(ConfigError, match=r"runs\.toy_dr\.seen_samples"):
        load_config(toy)


def test_global_batch_must_divide_over_processes(toy):
    toy["runs"]["toy_dr"].update(nodes=3, gpus_per_node=8)
    with pytest.raises(ConfigError, match=r"runs\.toy_dr\.global_batch_size"):
        load_config(toy)


def test_resolved_run_has_the_run_script_arithmetic(repo_root):
    config = load_config(repo_root / "configs" / "paper" / "datacompdr1b.yaml")
    run = resolve_run(config, "datacompdr1b_s13b")
    assert run["world_size"] == 128 and run["per_gpu_batch_size"] == 512
    assert run["total_steps"] == 200_000 and run["steps_per_checkpoint"] == 2_000
    assert run["samples_per_checkpoint"] == 131_072_000
    assert run["dr"] and run["reinforcement_config"] == "configs/reinforce/datacompdr1b.json"


def test_loading_does_not_mutate_the_callers_dict(toy):
    before = copy.deepcopy(toy)
    load_config(toy)
    assert toy == before
