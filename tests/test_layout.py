"""layout.Layout: every path the DAG writes, and the names the ledger reads back."""
from pathlib import Path

import pytest

from mobileclip_repro.layout import (Job, Layout, group_job_name, parse_job_benchmark, parse_job_name,
                                     parse_reinforce_manifest, train_job_name)

LAYOUT = Layout("results/x")


def test_every_path_lies_under_the_results_dir_in_its_stage_folder():
    assert LAYOUT.toy_manifest == Path("results/x/data/manifest.json")
    assert LAYOUT.fetch_manifest("00003") == Path("results/x/data/fetch/group_00003.json")
    assert LAYOUT.reinforce_manifest("bf16", "00000") == Path("results/x/data/reinforce/bf16/group_00000.json")
    assert LAYOUT.local_manifest == Path("results/x/data/local.json")
    assert LAYOUT.subsets_file(7) == Path("results/x/data/subsets/seed_7.json")
    assert LAYOUT.benchmark_root("toy_zeroshot") == Path("results/x/data/benchmarks/toy_zeroshot")
    assert LAYOUT.train_manifest("dr", 2) == Path("results/x/runs/dr/seed_2/manifest.json")
    assert LAYOUT.checkpoint("dr", 2, 3) == Path("results/x/runs/dr/seed_2/checkpoints/epoch_3.pt")
    assert LAYOUT.eval_dir("dr", 2, 3) == Path("results/x/eval/dr/seed_2/epoch_3")
    assert LAYOUT.eval_index("dr") == Path("results/x/eval/dr/records.json")
    assert LAYOUT.teacher_weights("teacher_a.pt") == Path("results/x/teachers/teacher_a.pt")
    assert LAYOUT.teacher_manifest("teacher_a.pt") == Path("results/x/teachers/teacher_a/manifest.json")
    assert LAYOUT.teacher_record("toy_zeroshot") == Path("results/x/eval/teachers/ensemble/toy_zeroshot.json")
    assert LAYOUT.teachers_index == Path("results/x/eval/teachers/records.json")
    assert LAYOUT.report_file("results.csv") == Path("results/x/report/results.csv")


def test_a_wildcard_pattern_is_a_path_too_so_a_rules_output_and_its_jobs_path_are_one_line():
    assert LAYOUT.train_manifest("{run}", "{seed}") == Path("results/x/runs/{run}/seed_{seed}/manifest.json")
    assert LAYOUT.log("reinforce", group_job_name("{group}", "{reinforcement}")) == Path(
        "results/x/logs/reinforce/{reinforcement}/group_{group}.log")


@pytest.mark.parametrize("rule, name, log", [
    ("toy_data", "all", "toy_data.log"), ("fetch", "group_00001", "fetch/group_00001.log"),
    ("train_teacher", "teacher_a.pt", "teachers/teacher_a.pt.log"), ("train", "dr_seed_0", "train/dr_seed_0.log"),
    ("reinforce", "default_group_00000", "reinforce/default/group_00000.log"), ("evaluate", "dr", "eval/dr.log"),
    ("evaluate_teachers", "all", "eval/teachers.log"), ("fetch_benchmark", "imagenet", "fetch_benchmark/imagenet.log"),
    ("report", "all", "report.log")])
def test_each_jobs_log_keeps_its_place(rule, name, log):
    assert LAYOUT.log(rule, name) == Path("results/x/logs") / log


@pytest.mark.parametrize("rule, name, job", [
    ("train", train_job_name("dr_seed_n100", 12), Job("train", "dr_seed_n100_seed_12", run="dr_seed_n100", seed=12)),
    ("fetch", group_job_name("00004"), Job("fetch", "group_00004", group="00004")),
    ("reinforce", group_job_name("00002", "my_group_x"),
     Job("reinforce", "my_group_x_group_00002", reinforcement="my_group_x", group="00002")),
    ("evaluate", "plain_seed_x", Job("evaluate", "plain_seed_x", run="plain_seed_x")),
    ("train_teacher", "teacher_seed_1.pt", Job("train_teacher", "teacher_seed_1.pt")),
    ("report", "all", Job("report", "all")),
])
def test_a_job_name_parses_back_to_what_built_it_whatever_the_run_is_called(rule, name, job):
    assert parse_job_name(rule, name) == job
    assert parse_job_benchmark(LAYOUT.job_benchmark(rule, name), LAYOUT.benchmarks_dir) == job


def test_a_reinforce_manifest_names_its_reinforcement_and_group():
    assert parse_reinforce_manifest(LAYOUT.reinforce_manifest("v_group_1", "00012")) == ("v_group_1", "00012")
    with pytest.raises(ValueError, match="not a reinforce group manifest"):
        parse_reinforce_manifest(LAYOUT.fetch_manifest("00001").with_name("other.json"))
