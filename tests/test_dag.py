"""The Snakemake DAG: paper configs plan on a laptop and through the SLURM profile, bad
configs fail before any job, the smoke toy config runs end to end for real, and changing a
config value in a finished run reruns exactly the jobs that depend on it."""
import json
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

PAPER_CONFIGS = ["datacompdr1b", "datacompdr12m", "datacomp12m", "dfndr12m", "dfndr2b", "dfndr12m-generate",
                 "ablation-12m", "datacompdr12m-online", "subsets-1b", "s30m-8gpu", "s30m-4gpu",
                 "s30m-dr-vs-datacomp"]


def snakemake(snakemake_cmd, repo_root, *args, timeout=600):
    return subprocess.run([*snakemake_cmd, *args], cwd=repo_root, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_plans(snakemake_cmd, repo_root, name):
    result = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", f"configs/paper/{name}.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train" in result.stdout and "evaluate" in result.stdout


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_plans_through_the_slurm_profile(snakemake_cmd, repo_root, name):
    result = snakemake(snakemake_cmd, repo_root, "--profile", "slurm", "-n", "--configfile",
                       f"configs/paper/{name}.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    # the train job asks SLURM for the run's nodes and GPUs
    config_nodes = {"datacompdr1b": 16, "datacompdr12m": 4, "datacomp12m": 1, "dfndr12m": 4, "dfndr2b": 16,
                    "dfndr12m-generate": 4, "ablation-12m": 4, "datacompdr12m-online": 4, "subsets-1b": 4, "s30m-8gpu": 1,
                    "s30m-4gpu": 1, "s30m-dr-vs-datacomp": 4}[name]  # the comparison: DR on 4 nodes (baseline 1)
    gpus = 4 if name == "s30m-4gpu" else 8
    assert f"nodes={config_nodes}" in result.stdout and f"gres=gpu:{gpus}" in result.stdout
    if name == "s30m-dr-vs-datacomp":  # and its baseline, as Apple's run_datacomp12m.sh, one node
        assert len(re.findall(r"\bnodes=\d+", result.stdout)) == 2 and "nodes=1" in result.stdout


def test_the_datacomp_suite_overlay_plans_all_38_tasks_for_a_paper_config(snakemake_cmd, repo_root):
    result = snakemake(snakemake_cmd, repo_root, "-n", "-p", "--configfile", "configs/paper/datacompdr12m.yaml",
                       "configs/eval/datacomp_suite.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    specs = {command: [json.loads(shlex.split(line.split(f"mobileclip-repro {command} --spec ", 1)[1])[0])
                       for line in result.stdout.splitlines() if f"mobileclip-repro {command} --spec " in line]
             for command in ("fetch-benchmark", "evaluate")}
    fetched = {spec["repo"] for spec in specs["fetch-benchmark"]}
    assert len(fetched) == 38 and {"nlphuji/winogavil", "djghosh/wds_geode_test"} <= fetched
    evaluate = [spec for spec in specs["evaluate"] if spec.get("checkpoint")]
    assert evaluate and all(spec["skip_failed_benchmarks"] for spec in evaluate)
    assert len(json.loads(evaluate[0]["benchmarks_json"])) == 38


@pytest.mark.parametrize("config", ["configs/toy.yaml", "configs/paper/datacompdr1b.yaml", "configs/paper/ablation-12m.yaml"])
def test_snakemake_lint_is_clean_but_for_the_conda_hint(snakemake_cmd, repo_root, config):
    """The environment is the pinned venv (requirements.lock), so rules name no conda env; every other lint is fixed."""
    result = snakemake(snakemake_cmd, repo_root, "--lint", "--configfile", config)
    lints = re.findall(r"^    \* (.+?):?$", result.stdout + result.stderr, flags=re.MULTILINE)
    assert lints, result.stdout[-2000:] + result.stderr[-2000:]
    assert set(lints) == {"Specify a conda environment or container for each rule."}


def test_every_config_sees_the_same_rules(snakemake_cmd, repo_root):
    listed = {config: snakemake(snakemake_cmd, repo_root, "--list-rules", "--configfile", config).stdout.split()
              for config in ("configs/toy.yaml", "configs/paper/datacompdr1b.yaml")}
    assert listed["configs/toy.yaml"] == listed["configs/paper/datacompdr1b.yaml"] and "fetch" in listed["configs/toy.yaml"]


def test_an_invalid_config_fails_before_any_job_naming_the_key(snakemake_cmd, repo_root, tmp_path):
    result = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", "configs/toy.yaml",
                       "--config", "runs={'toy_dr': {'model': 'toy-student', 'seen_samples': 'many', 'global_batch_size': 8}}")
    assert result.returncode != 0
    assert "runs.toy_dr.seen_samples" in result.stdout + result.stderr


def test_a_results_dir_with_spaces_quotes_and_semicolons_reaches_every_command_as_one_word(
        snakemake_cmd, repo_root, tmp_path):
    """Configs are shared between people: no value of one may run a command of its own."""
    results = f"{tmp_path}/x y'\"q;touch {tmp_path}/PWNED;"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results_dir": results}))
    planned = snakemake(snakemake_cmd, repo_root, "-n", "-p", "--configfile", "configs/toy-smoke.yaml", str(overlay))
    assert planned.returncode == 0, planned.stderr[-3000:]
    commands = [command for command in re.findall(r"^Shell command: (.*)$", planned.stdout + planned.stderr,
                                                  flags=re.MULTILINE) if command != "None"]  # rule all
    assert {rule for rule in ("toy-data", "reinforce", "train", "evaluate", "report")
            if any(f" {rule} " in command or f"mobileclip_repro {rule} " in command for command in commands)} == \
        {"toy-data", "reinforce", "train", "evaluate", "report"}
    for command in commands:
        words = list(shlex.shlex(command, posix=True, punctuation_chars=True))
        assert ";" not in words and "touch" not in words, command
        assert any(word.startswith(results) for word in words), command

    ran = snakemake(snakemake_cmd, repo_root, "--cores", "1", "--configfile", "configs/toy-smoke.yaml", str(overlay),
                    "--until", "toy_data")
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-3000:])
    assert (Path(results) / "data" / "manifest.json").is_file()
    assert not (tmp_path / "PWNED").exists() and not (repo_root / "PWNED").exists()


@pytest.fixture(scope="module")
def smoke_run(snakemake_cmd, repo_root, tmp_path_factory):
    """The smoke toy DAG, run once for the tests below: (its results folder, the snakemake result)."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    result = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", "configs/toy-smoke.yaml",
                       "--config", f"results_dir={results}", timeout=1500)
    return results, result


def test_smoke_toy_dag_runs_end_to_end(snakemake_cmd, repo_root, smoke_run):
    results, result = smoke_run
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])

    # every stage left its real artefacts
    assert sorted(p.name for p in (results / "data" / "datacompdr").glob("*.tar")) == \
        sorted(p.name for p in (results / "data" / "datacomp").glob("*.tar"))
    for run in ("smoke_dr", "smoke_plain"):
        for seed in (0, 1):  # seeds: [0, 1]: one training job each
            manifest = json.loads((results / "runs" / run / f"seed_{seed}" / "manifest.json").read_text())
            assert manifest["seed"] == seed
            # log-spaced checkpoints: each pseudo-epoch as long as all before it
            assert [e["seen_samples"] for e in manifest["epochs"]] == [192, 384, 768]
            assert all(count == 0 for count in manifest["skipped_samples"].values())
    # telemetry: every train job (students and teachers) has metrics.jsonl and TensorBoard event files
    jobs = [results / "runs" / run / f"seed_{seed}" for run in ("smoke_dr", "smoke_plain") for seed in (0, 1)]
    jobs += sorted(path.parent for path in (results / "teachers").glob("*/manifest.json"))
    assert len(jobs) == 6
    for job in jobs:
        assert (job / "metrics.jsonl").stat().st_size > 0
        assert list((job / "tensorboard").glob("events.out.tfevents.*")), job
    assert "## Training" in (results / "report" / "results.md").read_text()
    assert "<h2>Training</h2>" in (results / "report" / "report.html").read_text()
    table = pd.read_csv(results / "report" / "results_long.csv")
    zeroshot = table[(table["benchmark"] == "toy_zeroshot") & table["is_main"]]
    assert sorted(zip(zeroshot["run"], zeroshot["seed"], zeroshot["seen_samples"])) == [
        (run, seed, seen) for run in ("smoke_dr", "smoke_plain") for seed in (0, 1) for seen in (192, 384, 768)]
    assert zeroshot["value"].between(0, 1).all()
    summary = pd.read_csv(results / "report" / "results.csv")
    assert (summary["seeds"] == 2).all() and len(summary) == 6
    assert (summary["toy_zeroshot/acc1 min"] <= summary["toy_zeroshot/acc1"]).all()
    # the multiplier for the one (DR, non-DR) pair, per benchmark, over both seed pairs
    efficiency = json.loads((results / "report" / "efficiency.json").read_text())
    assert [e["benchmark"] for e in efficiency] == ["toy_zeroshot", "toy_retrieval"]
    assert all(e["dr_run"] == "smoke_dr" and e["plain_run"] == "smoke_plain" and len(e["per_seed"]) == 2
               and e["multiplier"] > 0 for e in efficiency)
    assert "DR (smoke_dr)" in (results / "report" / "results.md").read_text()
    # the teachers and their ensemble, evaluated on the same sets
    teachers = pd.read_csv(results / "report" / "teachers.csv")
    assert sorted(teachers["teacher"]) == ["ensemble", "teacher_a", "teacher_b"]
    for name in ("results.csv", "results.md", "efficiency.json", "learning_efficiency.png",
                 "learning_efficiency.pdf", "report.html", "cost.csv", "learning_efficiency_compute.png",
                 "training_curves.png", "training_curves.pdf"):
        assert (results / "report" / name).stat().st_size > 0
    # the compute ledger: a benchmark TSV for every job but the report itself, FLOPs for every job running a model
    cost = pd.read_csv(results / "report" / "cost.csv")
    assert sorted(cost["rule"].value_counts().items()) == [
        ("evaluate", 2), ("evaluate_teachers", 1), ("reinforce", 1), ("toy_data", 1), ("train", 4),
        ("train_teacher", 2)]
    assert (cost["wall_s"] > 0).all()
    models = cost[cost["rule"].isin(["train", "train_teacher", "evaluate", "evaluate_teachers", "reinforce"])]
    assert (models["flops"] > 0).all() and (models["samples"] > 0).all()
    train = cost[cost["rule"] == "train"]
    assert sorted(train["samples"]) == [768] * 4
    dr, plain = (train[train["run"] == run]["flops_per_sample"].iloc[0] for run in ("smoke_dr", "smoke_plain"))
    assert 1.0 < dr / plain < 2.0, "a DR step adds the synthetic caption's text forward, nothing else"
    assert all("compute_multiplier" in e and e["compute_multiplier_with_reinforcement"] is not None
               for e in efficiency)
    assert "## Cost" in (results / "report" / "results.md").read_text()
    assert "<h2>Cost</h2>" in (results / "report" / "report.html").read_text()

    # a second invocation finds nothing to do: every output is up to date
    again = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", "configs/toy-smoke.yaml",
                      "--config", f"results_dir={results}")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_snakemakes_report_packages_the_figures_and_tables_with_provenance(snakemake_cmd, repo_root, smoke_run,
                                                                         tmp_path):
    results, finished = smoke_run
    assert finished.returncode == 0, "the smoke DAG failed; see test_smoke_toy_dag_runs_end_to_end"
    archive = tmp_path / "report.zip"
    made = snakemake(snakemake_cmd, repo_root, "--report", str(archive), "--configfile", "configs/toy-smoke.yaml",
                     "--config", f"results_dir={results}")
    assert made.returncode == 0, made.stderr[-3000:]
    with zipfile.ZipFile(archive) as report:
        names = report.namelist()
    for item in ("results.csv", "results_per_seed.csv", "results_long.csv", "results.md", "efficiency.json",
                 "learning_efficiency.png", "learning_efficiency_compute.png", "training_curves.png", "cost.csv",
                 "teachers.csv", "report.html"):
        assert any(name.endswith(item) for name in names), (item, names)


# -- rerun triggers: a changed config value reruns exactly what depends on it ------------------

DR_CHAIN = {"reinforce": 1, "train": 2, "evaluate": 1, "report": 1}
STUDENT_EVALUATIONS = {"evaluate": 2, "evaluate_teachers": 1, "report": 1}
EVERYTHING = {"toy_data": 1, "train_teacher": 2, "reinforce": 1, "train": 4, "evaluate": 2,
              "evaluate_teachers": 1, "report": 1}

RERUNS = {  # config overlay -> the jobs `snakemake -n` plans on the finished smoke run
    "data.toy.seed": ({"data": {"toy": {"seed": 5}}}, EVERYTHING),
    "data.toy.alt_text_mix": ({"data": {"toy": {"alt_text_mix": {"full": 1.0, "partial": 0.0, "wrong": 0.0,
                                                                 "uninformative": 0.0}}}}, EVERYTHING),
    "teachers.<teacher>.seed": ({"teachers": {"teacher_b.pt": {"seed": 7}}},
                                {"train_teacher": 1, "evaluate_teachers": 1, **DR_CHAIN}),
    "reinforcement.seed": ({"reinforcement": {"seed": 3}}, DR_CHAIN),
    "reinforcement.num_syn_captions": ({"reinforcement": {"num_syn_captions": 4}}, DR_CHAIN),
    "reinforcement.dtype": ({"reinforcement": {"dtype": "bf16"}}, DR_CHAIN),
    "reinforcement.batch_size": ({"reinforcement": {"batch_size": 32}}, DR_CHAIN),
    "runs.<dr run>.lr": ({"runs": {"smoke_dr": {"lr": 1.0e-4}}}, {"train": 2, "evaluate": 1, "report": 1}),
    "runs.<plain run>.warmup_steps": ({"runs": {"smoke_plain": {"warmup_steps": 2}}}, {"train": 2, "evaluate": 1, "report": 1}),
    "evaluation.batch_size": ({"evaluation": {"batch_size": 50}}, STUDENT_EVALUATIONS),
    "evaluation.num_workers": ({"evaluation": {"num_workers": 1}}, STUDENT_EVALUATIONS),
    "evaluation.device": ({"evaluation": {"device": "cpu"}}, STUDENT_EVALUATIONS),
    "report.title": ({"report": {"title": "another title"}}, {"report": 1}),
    "report.paper_reference": ({"report": {"paper_reference": True}}, {"report": 1}),
    "report.efficiency_pairs": ({"report": {"efficiency_pairs": [["smoke_dr", "smoke_plain"]]}},
                                {"report": 1}),
    # a job's size is its rule's resources, not the experiment: nothing reruns
    "runs.<dr run>.slurm": ({"runs": {"smoke_dr": {"slurm": {"runtime": 30, "mem_mb_per_node": 4000}}}}, {}),
    "teachers.<teacher>.slurm": ({"teachers": {"teacher_a.pt": {"slurm": {"cpus_per_gpu": 1}}}}, {}),
}


def _reversed_mappings(value):
    if isinstance(value, dict):
        return {key: _reversed_mappings(value[key]) for key in reversed(list(value))}
    return [_reversed_mappings(item) for item in value] if isinstance(value, list) else value


def _reordered_evaluation(config: dict) -> dict:
    evaluation = config["evaluation"]
    evaluation["benchmarks"] = [dict(reversed(list(b.items()))) for b in evaluation["benchmarks"]]
    config["evaluation"] = dict(reversed(list(evaluation.items())))
    return config


# The same experiment written otherwise: a whole config file each (an overlay cannot reorder).
# None of these is a change: `snakemake -n` on the finished smoke run plans nothing.
SAME_EXPERIMENT = {
    "every mapping in reverse key order, anchors expanded": lambda text: yaml.safe_dump(
        _reversed_mappings(yaml.safe_load(text)), sort_keys=False),
    "evaluation and its benchmarks' keys reordered": lambda text: yaml.safe_dump(
        _reordered_evaluation(yaml.safe_load(text)), sort_keys=False),
    "the default lr written out, as 1e-3 in one run and 1.0e-3 in the other": lambda text: text.replace(
        "  smoke_dr: &student\n", "  smoke_dr: &student\n    lr: 1e-3\n").replace(
        "    data: plain\n", "    data: plain\n    lr: 1.0e-3\n"),
}


def planned_jobs(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run, as {rule: count} without the target rule `all`;
    empty when nothing is to be done."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.MULTILINE)
            if rule != "all"}


@pytest.fixture(scope="module")
def planned_reruns(snakemake_cmd, repo_root, smoke_run, tmp_path_factory):
    """`snakemake -n` on the finished smoke run with each overlay, started together (each
    spends most of its ~7 s importing Snakemake): {key: (returncode, output)}."""
    results, finished = smoke_run
    assert finished.returncode == 0, "the smoke DAG failed; see test_smoke_toy_dag_runs_end_to_end"
    running = {}
    for key, (overlay, _) in RERUNS.items():
        overlay_file = tmp_path_factory.mktemp("overlay") / "overlay.yaml"
        overlay_file.write_text(yaml.safe_dump({**overlay, "results_dir": str(results)}))
        running[key] = subprocess.Popen([*snakemake_cmd, "-n", "--configfile", "configs/toy-smoke.yaml",
                                         str(overlay_file)], cwd=repo_root, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    smoke_config = (repo_root / "configs" / "toy-smoke.yaml").read_text()
    for key, rewrite in SAME_EXPERIMENT.items():
        config_file = tmp_path_factory.mktemp("same") / "config.yaml"
        config_file.write_text(f"results_dir: {json.dumps(str(results))}\n" + rewrite(smoke_config))
        running[key] = subprocess.Popen([*snakemake_cmd, "-n", "--configfile", str(config_file)], cwd=repo_root,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {key: process.communicate(timeout=600)[0] for key, process in running.items()}
    return {key: (running[key].returncode, output) for key, output in outputs.items()}


@pytest.mark.parametrize("key", RERUNS)
def test_a_changed_config_value_reruns_exactly_the_jobs_that_depend_on_it(planned_reruns, key):
    returncode, output = planned_reruns[key]
    assert returncode == 0, output[-3000:]
    assert planned_jobs(output) == RERUNS[key][1]


@pytest.mark.parametrize("key", SAME_EXPERIMENT)
def test_the_same_values_written_otherwise_rerun_nothing(planned_reruns, key):
    returncode, output = planned_reruns[key]
    assert returncode == 0, output[-3000:]
    assert planned_jobs(output) == {}, output[-3000:]


def test_a_subsets_axis_trains_each_run_per_size_on_the_same_data_and_reinforcement(snakemake_cmd, repo_root,
                                                                                   smoke_run, tmp_path):
    """data.subsets on the smoke world, 150 and 600 samples (the whole world): one run per size
    and arm, reusing the finished run's toy data, teachers and reinforcement; the report gets
    the data-efficiency records and figure."""
    results, finished = smoke_run
    assert finished.returncode == 0, "the smoke DAG failed; see test_smoke_toy_dag_runs_end_to_end"
    subset_results = tmp_path / "results"
    students = {results: {"runs", "report", "logs"}, results / "eval": {"smoke_dr", "smoke_plain"}}
    shutil.copytree(results, subset_results,
                    ignore=lambda folder, names: [name for name in names if name in students.get(Path(folder), ())])
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results_dir": str(subset_results), "data": {"subsets": [150, 600]},
                                       "runs": {"smoke_dr": {"seeds": [0]}, "smoke_plain": {"seeds": [0]}}}))
    planned = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", "configs/toy-smoke.yaml", str(overlay))
    assert planned.returncode == 0, planned.stderr[-3000:]
    # one ranking, then per size and arm a train and an evaluate job; nothing upstream again
    assert planned_jobs(planned.stdout) == {"select_subsets": 1, "train": 4, "evaluate": 4, "report": 1}
    ran = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", "configs/toy-smoke.yaml", str(overlay),
                    timeout=900)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-5000:])

    ranking = json.loads((subset_results / "data" / "subsets" / "seed_0.json").read_text())
    assert len(ranking["uids"]) == 600 and ranking["unranked"] == 0
    for run in ("smoke_dr", "smoke_plain"):
        for size in (150, 600):
            manifest = json.loads((subset_results / "runs" / f"{run}_n{size}" / "seed_0" / "manifest.json").read_text())
            assert manifest["subset_size"] == size
            assert [e["seen_samples"] for e in manifest["epochs"]] == [192, 384, 768]  # the run's own budget
            log = (subset_results / "logs" / "train" / f"{run}_n{size}_seed_0.log").read_text()
            assert f"training on a subset of {size} unique samples" in log
    efficiency = json.loads((subset_results / "report" / "efficiency.json").read_text())
    data_records = [e for e in efficiency if e["kind"] == "data"]
    assert sorted((e["dr_subset_size"], e["benchmark"]) for e in data_records) == [
        (size, benchmark) for size in (150, 600) for benchmark in ("toy_retrieval", "toy_zeroshot")]
    assert all(e["plain_sizes"] == [150, 600] and e["multiplier"] > 0 and len(e["per_seed"]) == 1
               for e in data_records)
    # sample multipliers pair the two arms at the same size
    assert sorted((e["dr_run"], e["plain_run"]) for e in efficiency if e["kind"] == "samples") == [
        (f"smoke_dr_n{size}", f"smoke_plain_n{size}") for size in (150, 150, 600, 600)]
    assert (subset_results / "report" / "data_efficiency.png").stat().st_size > 0
    assert "## Data efficiency" in (subset_results / "report" / "results.md").read_text()


def _uids_in(shard_folder: Path) -> set[str]:
    import tarfile

    uids = set()
    for shard in shard_folder.glob("*.tar"):
        with tarfile.open(shard) as archive:
            uids |= {json.loads(archive.extractfile(m).read())["uid"] for m in archive if m.name.endswith(".json")}
    return uids


def test_local_data_is_a_tracked_input_a_removed_shard_reruns_what_depends_on_it(snakemake_cmd, repo_root,
                                                                                  smoke_run, tmp_path):
    """data.source: local. The DAG lists the folder (the local_data job); a shard removed from it
    reruns the listing, the subset selection, training and what follows, and the subset a run logs
    is the one it trains on."""
    results, finished = smoke_run
    assert finished.returncode == 0, "the smoke DAG failed; see test_smoke_toy_dag_runs_end_to_end"
    local = tmp_path / "local"
    shutil.copytree(results / "data" / "datacomp", local)  # 3 shards of 200 samples
    smoke = yaml.safe_load((repo_root / "configs" / "toy-smoke.yaml").read_text())
    plain = {**smoke["runs"]["smoke_plain"], "seeds": [0], "seen_samples": 384, "num_checkpoints": 1}
    config = {"name": "local", "results_dir": str(tmp_path / "results"),
              "data": {"source": "local", "datacomp_dir": str(local), "subsets": [150]},
              "runs": {"plain": plain},
              "evaluation": {"teachers": False, "benchmarks": [
                  {"name": "toy_zeroshot", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification",
                   "root": str(results / "data" / "benchmarks" / "toy_zeroshot")}]}}
    config_file = tmp_path / "local.yaml"
    config_file.write_text(yaml.safe_dump(config))
    ran = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", str(config_file), timeout=900)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-5000:])
    listing = json.loads((tmp_path / "results" / "data" / "local.json").read_text())
    assert listing["totals"]["shards"] == 3 and all(len(e["sha256"]) == 64 for e in listing["shard_files"])

    (local / "00000001.tar").unlink()
    planned = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", str(config_file))
    assert planned_jobs(planned.stdout) == {"local_data": 1, "select_subsets": 1, "train": 1, "evaluate": 1,
                                            "report": 1}, planned.stdout[-3000:]
    ran = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", str(config_file), timeout=900)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-5000:])
    ranking = json.loads((tmp_path / "results" / "data" / "subsets" / "seed_0.json").read_text())
    assert ranking["samples"] == 400
    assert set(ranking["uids"][:150]) <= _uids_in(local)  # every sample of the subset is still there
    log = (tmp_path / "results" / "logs" / "train" / "plain_n150_seed_0.log").read_text()
    assert "training on a subset of 150 unique samples" in log
    assert "TRAINING FROM STEP 0" in log  # other data: the old checkpoints are set aside, not resumed


# Near the end of this module: it retrains part of the finished smoke run that the tests above read.
def test_a_changed_lr_retrains_the_run_and_its_records_carry_the_new_lr(snakemake_cmd, repo_root, smoke_run,
                                                                        tmp_path):
    results, finished = smoke_run
    assert finished.returncode == 0, "the smoke DAG failed; see test_smoke_toy_dag_runs_end_to_end"
    run = results / "runs" / "smoke_plain" / "seed_0"
    before = torch.load(run / "checkpoints" / "epoch_3.pt", weights_only=True)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results_dir": str(results), "runs": {"smoke_plain": {"lr": 0.02}}}))
    result = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", "configs/toy-smoke.yaml",
                       str(overlay), timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])

    after = torch.load(run / "checkpoints" / "epoch_3.pt", weights_only=True)
    assert after["run"]["lr"] == 0.02
    assert not all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    record = json.loads((results / "eval" / "smoke_plain" / "seed_0" / "epoch_3" / "toy_zeroshot.json").read_text())
    assert record["run_spec"]["lr"] == 0.02
    (kept,) = (run / "superseded").iterdir()
    assert json.loads((kept / "why.json").read_text())["differences"] == {"lr": {"checkpoint": 0.001, "job": 0.02}}
    # the DR run's config did not change: nothing of it was retrained
    assert not (results / "runs" / "smoke_dr" / "seed_0" / "superseded").exists()


def _reported_runs(report: Path) -> dict[str, set[str]]:
    """The runs each of the report's outputs names."""
    efficiency = json.loads((report / "efficiency.json").read_text())
    cost = pd.read_csv(report / "cost.csv")
    return {"results.csv": set(pd.read_csv(report / "results.csv")["run"]),
            "efficiency.json": {e[key] for e in efficiency for key in ("dr_run", "plain_run")},
            "cost.csv": set(cost[cost["rule"].isin(["train", "evaluate"])]["run"])}


# After the lr test: it renames and removes runs of the finished smoke run (a copy would lose
# Snakemake's records of the jobs, which its rerun triggers read).
def test_the_report_shows_exactly_the_configs_runs_after_one_is_renamed_and_one_removed(snakemake_cmd, repo_root,
                                                                                        smoke_run, tmp_path):
    """A run's folders stay on disk when it leaves the config; the report never shows it."""
    results, finished = smoke_run
    assert finished.returncode == 0, "the smoke DAG failed; see test_smoke_toy_dag_runs_end_to_end"
    results = results
    config = yaml.safe_load((repo_root / "configs" / "toy-smoke.yaml").read_text())
    config["results_dir"] = str(results)
    # smoke_plain renamed smoke_baseline (one seed, to keep the test short)
    config["runs"]["smoke_baseline"] = {**config["runs"].pop("smoke_plain"), "seeds": [0]}
    config_file = tmp_path / "renamed.yaml"
    config_file.write_text(yaml.safe_dump(config))
    planned = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", str(config_file))
    assert planned_jobs(planned.stdout) == {"train": 1, "evaluate": 1, "report": 1}, planned.stdout[-3000:]
    ran = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", str(config_file), timeout=900)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-5000:])
    report = results / "report"
    assert _reported_runs(report) == {"results.csv": {"smoke_dr", "smoke_baseline"},
                                      "efficiency.json": {"smoke_dr", "smoke_baseline"},
                                      "cost.csv": {"smoke_dr", "smoke_baseline"}}
    for name in ("results.md", "report.html", "results_long.csv"):
        assert "smoke_plain" not in (report / name).read_text(), name

    # and then removed: only the report reruns, and it shows the DR run alone
    del config["runs"]["smoke_baseline"]
    config_file.write_text(yaml.safe_dump(config))
    planned = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", str(config_file))
    assert planned_jobs(planned.stdout) == {"report": 1}, planned.stdout[-3000:]
    ran = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", str(config_file), timeout=900)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-5000:])
    assert _reported_runs(report) == {"results.csv": {"smoke_dr"}, "efficiency.json": set(), "cost.csv": {"smoke_dr"}}
    for name in ("results.md", "report.html", "results_long.csv"):
        text = (report / name).read_text()
        assert "smoke_plain" not in text and "smoke_baseline" not in text, name
