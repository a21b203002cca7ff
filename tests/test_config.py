"""The config schema: defaults filled, every mistake named by its key, derived values right."""
import copy
import json
import re

import pytest
import yaml

from mobileclip_repro.config import ConfigError, checkpoint_steps, load_config, resolve_run, run_dir, run_seeds


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


@pytest.mark.parametrize("written, value", [("2e-3", 0.002), ("2.0e-3", 0.002), ("0.002", 0.002), ("1E-2", 0.01),
                                            ("5.e-4", 0.0005)])
def test_a_number_reads_the_same_however_it_is_written(repo_root, tmp_path, written, value):
    """PyYAML (YAML 1.1) leaves `2e-3` a string; YAML 1.2, JSON and Python read a float, and so does the schema."""
    text = (repo_root / "configs" / "toy.yaml").read_text().replace("lr: 2.0e-3 ", f"lr: {written} ")
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml")
    assert config["runs"]["toy_dr"]["lr"] == value and isinstance(config["runs"]["toy_dr"]["lr"], float)


@pytest.mark.parametrize("written, message", [("2e-3x", "'2e-3x' is not of type 'number'"),
                                              ("1e999", "not a finite number")])
def test_a_string_that_is_no_finite_number_is_still_refused_naming_the_key(repo_root, tmp_path, written, message):
    text = (repo_root / "configs" / "toy.yaml").read_text().replace("lr: 2.0e-3 ", f"lr: {written} ")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"'runs.toy_(dr|plain).lr': .*{re.escape(message)}"):  # one anchor, two runs
        load_config(tmp_path / "c.yaml")


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


def test_log_spaced_checkpoints_double_and_end_at_the_budget(toy):
    toy["runs"]["toy_dr"].update(seen_samples=128 * 96, num_checkpoints=6, checkpoint_spacing="log")
    run = resolve_run(load_config(toy), "toy_dr", seed=toy["runs"]["toy_dr"].get("seeds", [0])[0])
    assert run["checkpoint_steps"] == [3, 6, 12, 24, 48, 96]
    assert "steps_per_checkpoint" not in run  # pseudo-epochs of unequal length


def test_linear_checkpoints_are_equal_pseudo_epochs():
    assert checkpoint_steps(30_000, 20, "linear") == [1_500 * k for k in range(1, 21)]


def test_too_many_log_spaced_checkpoints_for_the_steps_is_an_error(toy):
    toy["runs"]["toy_dr"].update(seen_samples=128 * 8, num_checkpoints=6, checkpoint_spacing="log")
    with pytest.raises(ConfigError, match=r"runs\.toy_dr\.num_checkpoints"):
        load_config(toy)


def test_a_run_with_seeds_is_one_job_per_seed(toy):
    toy["runs"]["toy_dr"].pop("seed", None)
    toy["runs"]["toy_dr"]["seeds"] = [3, 5]
    config = load_config(toy)
    assert run_seeds(config["runs"]["toy_dr"]) == [3, 5]
    assert resolve_run(config, "toy_dr", seed=5)["seed"] == 5
    assert run_dir(config, "toy_dr", seed=5).as_posix() == "results/toy/runs/toy_dr/seed_5"
    with pytest.raises(ConfigError, match=r"runs\.toy_dr\.seeds.*say which seed"):
        resolve_run(config, "toy_dr")
    with pytest.raises(ConfigError, match=r"runs\.toy_dr\.seeds.*no seed 4"):
        resolve_run(config, "toy_dr", seed=4)


def test_a_single_seed_is_still_accepted(toy):
    toy["runs"]["toy_plain"].pop("seeds", None)
    toy["runs"]["toy_plain"]["seed"] = 7
    config = load_config(toy)
    assert run_seeds(config["runs"]["toy_plain"]) == [7]
    assert resolve_run(config, "toy_plain")["seed"] == 7


def test_seed_and_seeds_together_is_an_error(toy):
    toy["runs"]["toy_dr"].update(seed=1, seeds=[1, 2])
    with pytest.raises(ConfigError, match=r"runs\.toy_dr\.seeds.*either 'seed' or 'seeds'"):
        load_config(toy)


def test_efficiency_pairs_must_name_a_dr_and_a_non_dr_run(toy):
    toy["report"]["efficiency_pairs"] = [["toy_plain", "toy_dr"]]
    with pytest.raises(ConfigError, match=r"report\.efficiency_pairs\.0.*'toy_plain' is not a DR run"):
        load_config(toy)
