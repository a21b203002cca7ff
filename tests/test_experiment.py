"""experiment.Experiment: a config resolved once into the jobs the DAG runs and the paths they write.

The rule files read these answers (workflow/rules/common.smk) and `plan` sizes the same selection,
so each case here is what the DAG plans for that kind of config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobileclip_repro import config as config_module
from mobileclip_repro.experiment import Experiment, canonical, spec_json
from mobileclip_repro.layout import Layout


@pytest.fixture
def in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # configs name reinforcement JSONs relative to the checkout
    return repo_root


def load(path: str, tmp_path: Path, **overrides) -> Experiment:
    raw = config_module.read_yaml(path)
    raw.update(results_dir=str(tmp_path / "results"), **overrides)
    return Experiment(config_module.load_config(raw))


def test_the_toy_world_trains_its_teachers_reinforces_once_and_evaluates_every_run(in_repo, tmp_path):
    experiment = load("configs/toy-smoke.yaml", tmp_path)
    layout = Layout(tmp_path / "results")
    assert experiment.layout == layout
    assert list(experiment.specs) == [("smoke_dr", 0), ("smoke_dr", 1), ("smoke_plain", 0), ("smoke_plain", 1)]
    assert experiment.spec("smoke_dr", "1")["seed"] == 1, "a wildcard's seed is a string"
    assert experiment.group_ids == ["00000"] and experiment.hub_groups == []
    assert experiment.data_inputs() == [layout.toy_manifest]
    assert experiment.generated_reinforcements() == ["default"]
    assert experiment.teachers_evaluated()
    assert experiment.trained_teachers() == ["teacher_a.pt", "teacher_b.pt"]
    assert experiment.training_data("smoke_dr", 0) == {
        "data": [layout.toy_manifest], "reinforced": [layout.reinforce_manifest("default", "00000")]}
    assert experiment.training_data("smoke_plain", 1) == {"data": [layout.toy_manifest], "reinforced": []}
    assert experiment.generated_benchmark_roots() == [str(layout.benchmark_root("toy_zeroshot")),
                                                      str(layout.benchmark_root("toy_retrieval"))]
    assert experiment.run_checkpoints("smoke_plain")[-1] == (layout.checkpoint("smoke_plain", 1, 3),
                                                             layout.eval_dir("smoke_plain", 1, 3))
    assert experiment.eval_indexes() == [layout.eval_index("smoke_dr"), layout.eval_index("smoke_plain"),
                                         layout.teachers_index]
    assert experiment.upstream_jobs() == [
        ("toy_data", "all"), ("train_teacher", "teacher_a.pt"), ("train_teacher", "teacher_b.pt"),
        ("reinforce", "default_group_00000"), ("train", "smoke_dr_seed_0"), ("train", "smoke_dr_seed_1"),
        ("train", "smoke_plain_seed_0"), ("train", "smoke_plain_seed_1"), ("evaluate", "smoke_dr"),
        ("evaluate", "smoke_plain"), ("evaluate_teachers", "all")]
    assert [path.name for path in experiment.report_outputs()] == [
        "results.csv", "results_per_seed.csv", "results_long.csv", "results.md", "efficiency.json",
        "learning_efficiency.png", "learning_efficiency.pdf", "report.html", "cost.csv",
        "learning_efficiency_compute.png", "learning_efficiency_compute.pdf", "training_curves.png",
        "training_curves.pdf", "teachers.csv"]


def test_a_hub_config_fetches_each_group_and_trains_on_every_groups_manifest(in_repo, tmp_path):
    experiment = Experiment(config_module.load_config({
        "name": "three", "results_dir": str(tmp_path / "results"),
        "data": {"source": "hub", "hub": {"datacomp_repo": "mlfoundations/DataComp-12M",
                                          "dr_repo": "apple/DataCompDR-12M",
                                          "shards": "{00000000..00000002}", "group_size": 2}},
        "reinforcement": {"generate": False, "config": "configs/reinforce/datacompdr12m.json"},
        "runs": {"dr": {"model": "ViT-B-16", "data": "dr", "nodes": 1, "gpus_per_node": 8, "global_batch_size": 8,
                        "seen_samples": 80, "num_checkpoints": 2, "warmup_steps": 0}},
        "evaluation": {"benchmarks": [
            {"name": "in1k", "dataset": "imagenet1k", "task": "zeroshot_classification", "root": "/sets/in1k"},
            {"name": "cars", "dataset": "wds/cars", "task": "zeroshot_classification",
             "hub_repo": "clip-benchmark/wds_cars"}]}}))
    layout = experiment.layout
    assert experiment.is_hub and experiment.group_ids == ["00000", "00001"]
    assert experiment.fetches_dr_tars()
    assert experiment.data_inputs() == [layout.fetch_manifest("00000"), layout.fetch_manifest("00001")]
    assert experiment.generated_reinforcements() == [] and experiment.trained_teachers() == []
    assert experiment.training_data("dr", 0)["reinforced"] == [], "Apple's DR shards come with the fetch"
    assert list(experiment.hub_benchmarks) == ["cars"]
    assert experiment.benchmark_inputs() == {"benchmarks": [], "fetched": [layout.fetched_benchmark("cars")]}
    assert experiment.upstream_jobs() == [("fetch", "group_00000"), ("fetch", "group_00001"),
                                          ("fetch_benchmark", "cars"), ("train", "dr_seed_0"), ("evaluate", "dr"),
                                          ("evaluate_teachers", "all")], "Apple's teachers, by their pretrained tags"


def test_local_data_is_listed_once_with_the_dr_folder_only_where_a_run_reads_shards_found_there(in_repo, tmp_path):
    def local(generate: bool) -> Experiment:
        return Experiment(config_module.load_config({
            "name": "local", "results_dir": str(tmp_path / "results"),
            "data": {"source": "local", "datacomp_dir": str(tmp_path / "dc"), "dr_dir": str(tmp_path / "dr")},
            "reinforcement": {"generate": generate, "config": "configs/reinforce/toy.json"},
            "teachers": {} if not generate else {"t.pt": {"model": "toy-teacher", "data": "teacher",
                                                          "gpus_per_node": 0, "global_batch_size": 8,
                                                          "seen_samples": 16, "num_checkpoints": 1, "warmup_steps": 0}},
            "runs": {"dr": {"model": "toy-student", "data": "dr", "gpus_per_node": 0, "global_batch_size": 8,
                            "seen_samples": 16, "num_checkpoints": 1, "warmup_steps": 0,
                            "distill": {"teacher_dimension": [64, 64]}}},
            "evaluation": {"benchmarks": [{"name": "z", "dataset": "wds/z", "task": "zeroshot_classification",
                                           "root": str(tmp_path / "z")}]}}))

    given = local(generate=False)
    assert given.data_inputs() == [given.layout.local_manifest]
    assert given.local_data_folders() == [str(tmp_path / "dc"), str(tmp_path / "dr")]
    assert given.upstream_jobs()[0] == ("local_data", "all")
    assert local(generate=True).local_data_folders() == [str(tmp_path / "dc")], "the DAG makes the DR shards"


def test_a_subsets_axis_adds_the_selection_job_its_file_and_the_data_efficiency_figure(in_repo, tmp_path):
    experiment = load("configs/toy-study.yaml", tmp_path)
    assert experiment.subset_sizes == [250, 1000, 4000] and experiment.has_subsets
    subsets = experiment.layout.subsets_file(experiment.data["subset_seed"])
    assert experiment.training_data("toy_dr_n250", 0)["subsets"] == str(subsets)
    assert ("select_subsets", "all") in experiment.upstream_jobs()
    assert [path.name for path in experiment.data_efficiency_outputs()] == ["data_efficiency.png",
                                                                           "data_efficiency.pdf"]


def test_each_reinforcement_variant_a_run_reads_is_its_own_job_in_its_own_folder(in_repo, tmp_path):
    experiment = load("configs/toy-ablation.yaml", tmp_path)
    assert list(experiment.reinforcements) == ["default", "weak"]
    assert experiment.reinforcements["weak"]["config"] == "configs/reinforce/toy-weak.json"
    assert experiment.generated_reinforcements() == ["default", "weak"]
    assert experiment.reinforcement_dr_dir("weak") == experiment.reinforcement_dr_dir("default") + "_weak"
    assert experiment.training_data("abl_synthetic_captions", 0)["reinforced"] == [
        experiment.layout.reinforce_manifest("weak", "00000")]
    assert [path.name for path in experiment.ablation_outputs()] == ["ablation.csv", "ablation.md", "ablation.png",
                                                                      "ablation.pdf"]


def test_a_spec_is_the_same_word_whatever_order_its_values_were_written_in():
    assert spec_json({"b": 1, "a": {"d": [2, {"f": 0, "e": 1}], "c": None}}) == spec_json(
        {"a": {"c": None, "d": [2, {"e": 1, "f": 0}]}, "b": 1})
    assert list(canonical({"b": 1, "a": 2})) == ["a", "b"]
    assert json.loads(spec_json({"x": [3, 1]})) == {"x": [3, 1]}, "lists keep their order"


def job_specs(experiment: Experiment) -> dict[tuple, str]:
    """Every job's --spec (train's is its run spec), keyed by (rule, job)."""
    specs = {("train", run, seed): spec_json(experiment.train_spec(run, seed)) for run, seed in experiment.specs}
    specs.update({("train_teacher", name): spec_json(experiment.teacher_train_spec(name))
                  for name in experiment.teacher_specs})
    specs[("toy_data",)] = spec_json(experiment.toy_data_spec())
    specs.update({("reinforce", name): spec_json(experiment.reinforce_spec(name, "00000"))
                  for name in experiment.generated_reinforcements()})
    specs.update({("evaluate", run): spec_json(experiment.evaluate_spec(run)) for run in experiment.runs})
    specs[("evaluate_teachers",)] = spec_json(experiment.evaluate_teachers_spec())
    specs[("report",)] = spec_json(experiment.report_spec())
    return specs


# The report's spec holds the config's digest (printed on the page): any change to the experiment is
# a change to its report; a run's resources (slurm) are no change to any job.
@pytest.mark.parametrize("overlay, changed", [
    ({"data": {"toy": {"seed": 5}}}, {("toy_data",), ("report",)}),
    ({"reinforcement": {"num_syn_captions": 4}}, {("reinforce", "default"), ("report",)}),
    ({"evaluation": {"batch_size": 50}}, {("evaluate", "smoke_dr"), ("evaluate", "smoke_plain"), ("evaluate_teachers",),
                                         ("report",)}),
    ({"report": {"title": "another"}}, {("report",)}),
    ({"runs": {"smoke_dr": {"slurm": {"runtime": 30}}}, "teachers": {"teacher_a.pt": {"slurm": {"resubmits": 2}}}},
     set()),
])
def test_a_changed_value_changes_exactly_the_specs_of_the_jobs_that_use_it(in_repo, tmp_path, overlay, changed):
    before = job_specs(load("configs/toy-smoke.yaml", tmp_path))
    def merged(base: dict, values: dict) -> dict:
        return {**base, **{key: merged(base.get(key) or {}, value) if isinstance(value, dict) else value
                           for key, value in values.items()}}

    raw = merged(config_module.read_yaml("configs/toy-smoke.yaml"), overlay)
    after = job_specs(Experiment(config_module.load_config({**raw, "results_dir": str(tmp_path / "results")})))
    assert {job for job in before if before[job] != after[job]} == changed


@pytest.mark.parametrize("overlay", [{"data": {"hub": {"dr_revision": "a" * 40}}}, {"data": {"dr_dir": "elsewhere"}}])
def test_a_hub_dag_that_reinforces_itself_does_not_refetch_over_the_dr_repos_settings(in_repo, tmp_path, overlay):
    """The fetch job of a DAG that generates its reinforcement never reads the DataCompDR repo: its
    revision and folder are no part of the fetch spec (a change would refetch and retrain everything)."""
    def fetch_spec(values: dict) -> str:
        raw = config_module.read_yaml("configs/paper/dfndr12m-generate.yaml")
        for section, settings in values.items():
            for key, value in settings.items():
                if isinstance(value, dict):
                    raw[section][key] = {**raw[section].get(key, {}), **value}
                else:
                    raw[section][key] = value
        experiment = Experiment(config_module.load_config({**raw, "results_dir": str(tmp_path / "results")}))
        assert not experiment.fetches_dr_tars()
        return spec_json(experiment.fetch_spec("00000"))

    assert fetch_spec(overlay) == fetch_spec({})


def parsed(command: str, spec: dict, *extra: str):
    """``spec`` as the command's parser reads it (cli.main's --spec expansion), with the rule's other options."""
    import argparse
    import importlib

    from mobileclip_repro import cli

    module_name, prefix, _ = cli.COMMANDS[command]
    parser = argparse.ArgumentParser()
    getattr(importlib.import_module(module_name), f"{prefix}_arguments")(parser)
    return parser.parse_args(cli.expand_spec_options(parser, ["--spec", spec_json(spec), *extra]))


def test_each_jobs_spec_is_read_by_its_command_as_the_options_the_rule_passed_before(in_repo, tmp_path):
    toy = load("configs/toy-smoke.yaml", tmp_path)
    args = parsed("toy-data", toy.toy_data_spec(), "--workers", "2")
    assert (args.out_dir, args.seed, args.train_samples, args.alt_wrong, args.workers) == (
        str(toy.layout.data_root), 0, 600, 0.10, 2)
    args = parsed("reinforce", toy.reinforce_spec("default", "00000"), "--manifest", "m.json")
    assert (args.captioner_json, args.num_syn_captions, args.replace_other_settings, args.shard_spec) == (
        '"world"', 5, True, None), "toy data: every shard, no group"
    args = parsed("evaluate", toy.evaluate_spec("smoke_dr"), "--index", "i.json")
    assert len(args.checkpoint) == len(args.out_dir) == 6 and args.force and not args.skip_failed_benchmarks
    assert json.loads(args.benchmarks_json) == toy.benchmarks
    args = parsed("evaluate", toy.evaluate_teachers_spec(), "--index", "i.json")
    assert args.teachers == "configs/reinforce/toy.json" and args.checkpoint is None and not args.force
    args = parsed("report", toy.report_spec(), "--records", "r.json")
    assert args.paper_reference is None and args.teacher_manifests == [toy.layout.teacher_manifest("teacher_a.pt"),
                                                                       toy.layout.teacher_manifest("teacher_b.pt")]


def test_a_hub_fetch_spec_names_its_group_and_a_false_sha256_policy_stays_off(in_repo, tmp_path):
    experiment = Experiment(config_module.load_config({
        "name": "hub", "results_dir": str(tmp_path / "results"),
        "data": {"source": "hub", "hub": {"shards": ["{00000000..00000001}", "00000007"], "group_size": 2,
                                          "sha256": False, "dr_revision": "abc"}},
        "reinforcement": {"generate": False, "config": "configs/reinforce/datacompdr12m.json"},
        "runs": {"plain": {"model": "ViT-B-16", "data": "plain", "nodes": 1, "gpus_per_node": 8,
                           "global_batch_size": 8, "seen_samples": 80, "num_checkpoints": 2, "warmup_steps": 0}},
        "evaluation": {"benchmarks": [{"name": "cars", "dataset": "wds/cars", "task": "zeroshot_classification",
                                       "hub_repo": "clip-benchmark/wds_cars", "revision": "v1"}]}}))
    args = parsed("fetch", experiment.fetch_spec("00001"), "--manifest", "m.json")
    assert json.loads(args.shard_spec) == ["{00000000..00000001}", "00000007"]
    assert (args.group, args.group_size, args.sha256, args.dr_revision, args.datacomp_revision) == (
        "00001", 2, "off", "abc", None)
    assert args.dr_repo == "apple/DataCompDR-12M", "the reinforcement is fetched, not generated"
    args = parsed("fetch-benchmark", experiment.fetch_benchmark_spec("cars"))
    assert (args.repo, args.revision, args.split) == ("clip-benchmark/wds_cars", "v1", "test")


def test_a_spec_stands_for_the_options_it_names_and_options_after_it_override_it():
    from mobileclip_repro import cli

    assert cli.spec_options(spec_json({"batch_size": 8, "force": True, "revision": None, "skip": False,
                                       "out_dir": ["a b", "c"], "title": "-dash", "pairs": {"x": 1}})) == [
        "--batch-size=8", "--force", "--out-dir", "a b", "c", '--pairs={"x": 1}', "--title=-dash"]
    args = parsed("fetch-benchmark", {"repo": "r", "root": "/x", "split": "test"}, "--split", "train")
    assert (args.repo, args.split) == ("r", "train")


def test_by_hand_config_and_job_stand_for_the_spec_the_dag_gives_that_job(in_repo, tmp_path):
    from mobileclip_repro import cli

    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"results_dir: {json.dumps(str(tmp_path / 'results'))}\n"
                           + Path("configs/toy-smoke.yaml").read_text())
    experiment = Experiment.load(str(config_file))
    args = parsed("evaluate", {}, "--config", str(config_file), "--job", "evaluate:smoke_plain", "--batch-size", "7")
    assert args.checkpoint == experiment.evaluate_spec("smoke_plain")["checkpoint"]
    assert args.batch_size == 7, "an option after the job's overrides its spec"
    assert parsed("evaluate", {}, "--config", str(config_file), "--job", "evaluate_teachers").teachers == \
        "configs/reinforce/toy.json"
    assert parsed("reinforce", {}, "--config", str(config_file), "--job=reinforce:default_group_00000",
                  "--manifest", "m.json").num_syn_captions == 5
    with pytest.raises(SystemExit, match="no job evaluate:gone .*evaluate:smoke_dr"):
        cli.main(["evaluate", "--config", str(config_file), "--job", "evaluate:gone"])
    with pytest.raises(SystemExit, match="runs the jobs of rule toy_data"):
        cli.main(["toy-data", "--config", str(config_file), "--job", "report"])
