"""`snakemake --logger mobileclip-repro` (the Makefile's demo, ablation and study): one line per
finished job (the job, its wall time, jobs done/total, the jobs left and an estimate of their
time), a failed job naming its log, warnings and errors as Snakemake words them, and where the
logs are. Plain `snakemake` (the tests, SLURM) keeps its own output."""
from __future__ import annotations

import re
import subprocess
import textwrap

import pytest

from snakemake_logger_plugin_mobileclip_repro import Progress, duration, job_title, logs_folder

# Three quick jobs (two of one rule, with wildcards) and the target rule; `broken` fails when asked.
WORKFLOW = textwrap.dedent('''
    rule all:
        input: expand("out/{run}_seed_{seed}.txt", run=["toy_dr"], seed=[0, 1]), "out/report.txt"

    rule train:
        output: "out/{run}_seed_{seed}.txt"
        log: "logs/train/{run}_seed_{seed}.log"
        shell: "sleep 1; echo step 1 of 1 > {log}; touch {output}"

    rule report:
        input: expand("out/toy_dr_seed_{seed}.txt", seed=[0, 1])
        output: "out/report.txt"
        log: "logs/report.log"
        shell: "touch {output} 2> {log}"

    rule slow:
        output: "out/slow.txt"
        log: "logs/slow.log"
        shell: "echo epoch 1 step 2/5 > {log}; sleep 4; touch {output}"

    rule broken:
        output: "out/broken.txt"
        log: "logs/broken.log"
        shell: "echo the reason > {log}; exit 3"
    ''')


@pytest.fixture
def workflow_dir(tmp_path):
    (tmp_path / "Snakefile").write_text(WORKFLOW)
    return tmp_path


def run_snakemake(snakemake_cmd, workdir, *args):
    result = subprocess.run([*snakemake_cmd, "--cores", "2", "--directory", str(workdir), "--snakefile",
                             str(workdir / "Snakefile"), *args], cwd=workdir, capture_output=True, text=True,
                            timeout=300)
    return result, (result.stdout + result.stderr).splitlines()


def test_each_finished_job_is_one_line_with_its_time_what_is_left_and_an_estimate(snakemake_cmd, workflow_dir):
    result, lines = run_snakemake(snakemake_cmd, workflow_dir, "--logger", "mobileclip-repro")
    assert result.returncode == 0, "\n".join(lines)
    assert lines[0] == "4 jobs: 2 train, 1 report, 1 all", lines
    assert lines[1] == "logs: logs/ (one per job; training's per-step progress: logs/train/<run>_seed_<seed>.log)"
    finished = [line for line in lines if line.startswith("[")]
    assert len(finished) == 4, lines
    assert re.fullmatch(r"\[1/4\] train toy_dr seed [01] +\d+ s   3 left, about \d+ s", finished[0]), finished
    assert {line.split()[4] for line in finished[:2]} == {"0", "1"}
    assert re.fullmatch(r"\[3/4\] report +\d+ s   1 left, about \d+ s", finished[2]), finished
    assert re.fullmatch(r"\[4/4\] all +0 s   all done in \d+ s", finished[3]), finished
    assert lines[-1].startswith("Complete log(s): ") and ".snakemake/log/" in lines[-1]
    assert len(lines) == 7, lines
    assert not any(line.startswith(("rule ", "localrule ", "    ", "Job stats")) for line in lines), lines


def test_a_failed_job_names_its_log(snakemake_cmd, workflow_dir):
    result, lines = run_snakemake(snakemake_cmd, workflow_dir, "out/broken.txt", "--logger", "mobileclip-repro")
    assert result.returncode != 0
    assert any(re.fullmatch(r"FAILED  broken after \d+ s: see logs/broken\.log", line) for line in lines), lines
    assert len(lines) < 30, lines


def test_a_quiet_stretch_names_the_running_jobs_and_their_last_step(snakemake_cmd, workflow_dir):
    result, lines = run_snakemake(snakemake_cmd, workflow_dir, "out/slow.txt", "--logger", "mobileclip-repro",
                                  "--logger-mobileclip-repro-quiet-seconds", "1")
    assert result.returncode == 0
    running = [line for line in lines if "running:" in line]
    assert running and all(re.fullmatch(r" +running: slow for \d+ s \(step 2/5\)", line) for line in running), lines
    assert 2 <= len(running) <= 4, "one a quiet second, not one a record"


def test_plain_snakemake_keeps_its_own_output(snakemake_cmd, workflow_dir):
    result, lines = run_snakemake(snakemake_cmd, workflow_dir)
    assert result.returncode == 0
    text = "\n".join(lines)
    assert "rule train:" in text and "Job stats:" in text and "4 of 4 steps (100%) done" in text
    assert not any(re.match(r"\[\d+/\d+\] ", line) for line in lines)


def test_a_dry_run_prints_the_plan_in_one_line(snakemake_cmd, workflow_dir):
    result, lines = run_snakemake(snakemake_cmd, workflow_dir, "--logger", "mobileclip-repro", "-n")
    assert result.returncode == 0
    assert lines[0] == "4 jobs: 2 train, 1 report, 1 all" and lines[-1].startswith("This was a dry-run"), lines
    assert not (workflow_dir / "out").exists()


def test_the_toy_dag_plans_through_the_plugin(snakemake_cmd, repo_root, tmp_path):
    result = subprocess.run([*snakemake_cmd, "-n", "--logger", "mobileclip-repro", "--configfile",
                             "configs/toy.yaml", "--config", f"results_dir={tmp_path / 'results'}"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\d+ jobs: 1 toy_data, .*\d+ train\b", result.stdout + result.stderr, re.M)


# -- the bookkeeping, without Snakemake ---------------------------------------------------------------

def test_a_job_is_named_by_its_rule_and_wildcards():
    assert job_title("train", {"run": "toy_dr", "seed": "0"}) == "train toy_dr seed 0"
    assert job_title("reinforce", {"reinforcement": "default", "group": "00000"}) == "reinforce default group 00000"
    assert job_title("report", {}) == "report"


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (0.4, 42, 92, 3600 + 300)] == ["0 s", "42 s", "1 min 32 s", "1 h 05 min"]


def test_the_logs_folder_is_read_off_a_jobs_log_path():
    assert logs_folder("results/toy/logs/train/toy_dr_seed_0.log") == "results/toy/logs/"
    assert logs_folder("elsewhere/x.log") is None


def test_the_estimate_is_each_rules_mean_time_over_the_parallelism_seen():
    progress = Progress()
    progress.plan({"toy_data": 1, "train": 4, "report": 1, "all": 1, "total": 7})
    progress.start(1, "toy_data", {}, ["r/logs/toy_data.log"], when=0.0)
    assert progress.finish(1, when=10.0).endswith("6 left, about 50 s")  # 4 x 10 (train: the mean so far) + 10 (report)
    for jobid in (2, 3):  # two trains at once, 30 s each: the rest at 2 at a time
        progress.start(jobid, "train", {"run": "r", "seed": str(jobid)}, [], when=10.0)
    progress.finish(2, when=40.0)
    line = progress.finish(3, when=40.0)
    # left: 2 train x 30 s + 1 report x the mean of all (70/3 s) = 83.3 s of work; 70 s done in 40 s
    assert line.startswith("[3/7] train r seed 3") and line.endswith("4 left, about 48 s"), line
    # a train 20 s into its 30: 10 s of it left, its 20 s done
    progress.start(4, "train", {"run": "r", "seed": "4"}, [], when=40.0)
    progress.start(5, "report", {}, [], when=40.0)
    progress.finish(5, when=50.0)  # report: 10 s
    progress.start(6, "train", {"run": "r", "seed": "6"}, [], when=50.0)
    line = progress.finish(4, when=70.0)
    # left: train 6 (30 - 20 running) + all (0) = 10 s of work; done 70 + 30 + 10 + 20 = 130 s in 70 s
    assert line.startswith("[5/7] train r seed 4") and line.endswith("2 left, about 5 s"), line
