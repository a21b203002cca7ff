"""The Snakemake DAG: paper configs plan on a laptop and through the SLURM profile, bad
configs fail before any job, and the smoke toy config runs end to end for real."""
import json
import subprocess

import pandas as pd
import pytest

PAPER_CONFIGS = ["datacompdr1b", "datacompdr12m", "datacomp12m"]


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
    config_nodes = {"datacompdr1b": 16, "datacompdr12m": 4, "datacomp12m": 1}[name]
    assert f"nodes={config_nodes}" in result.stdout and "gres=gpu:8" in result.stdout


def test_an_invalid_config_fails_before_any_job_naming_the_key(snakemake_cmd, repo_root, tmp_path):
    result = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", "configs/toy.yaml",
                       "--config", "runs={'toy_dr': {'model': 'toy-student', 'seen_samples': 'many', 'global_batch_size': 8}}")
    assert result.returncode != 0
    assert "runs.toy_dr.seen_samples" in result.stdout + result.stderr


def test_smoke_toy_dag_runs_end_to_end(snakemake_cmd, repo_root, tmp_path):
    results = tmp_path / "results"
    result = snakemake(snakemake_cmd, repo_root, "--cores", "2", "--configfile", "configs/toy-smoke.yaml",
                       "--config", f"results_dir={results}", timeout=1500)
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
                 "learning_efficiency.pdf", "report.html"):
        assert (results / "report" / name).stat().st_size > 0

    # a second invocation finds nothing to do: every output is up to date
    again = snakemake(snakemake_cmd, repo_root, "-n", "--configfile", "configs/toy-smoke.yaml",
                      "--config", f"results_dir={results}")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
