"""One DAG per results_dir (issue 31, part 6): Snakemake locks per working directory, so a DAG
started from another checkout on the same results folder would delete the first one's outputs
and overwrite its logs. The main Snakemake process holds <results_dir>/.dag.lock while its jobs
run; a second DAG is refused before it touches the folder, with a message naming the holder; a
dead holder is no obstacle; dry runs and a job's own Snakemake process neither take nor mind it.

The first DAG is played by a helper process holding the lock through the same function the
workflow calls, so the tests take seconds, not a toy DAG's minutes."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mobileclip_repro import locks

SMOKE = "configs/toy-smoke.yaml"
TINY_WORLD = {"train_samples": 8, "teacher_samples": 8, "benchmark_samples": 4, "samples_per_shard": 8}
HOLD = ("import os, sys; from mobileclip_repro import locks\n"
        "os.chdir(sys.argv[2]); locks.hold_dag_lock(sys.argv[1])\n"
        "print('held', flush=True); sys.stdin.read()\n")


@pytest.fixture(scope="module")
def second_checkout(repo_root, tmp_path_factory) -> Path:
    """A copy of the workflow in a working directory of its own, as another clone would be: its
    own .snakemake, so Snakemake's lock does not see a DAG started from the repository."""
    checkout = tmp_path_factory.mktemp("second_checkout")
    shutil.copy(repo_root / "Snakefile", checkout)
    for folder in ("workflow", "configs", "profiles"):
        shutil.copytree(repo_root / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return checkout.resolve()


@pytest.fixture
def experiment(tmp_path) -> tuple[Path, Path]:
    """(results folder, config overlay): the smoke config in a tiny toy world writing there."""
    results = (tmp_path / "results").resolve()
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results_dir": str(results), "data": {"toy": TINY_WORLD}}))
    return results, overlay


@pytest.fixture
def first_dag():
    """``hold(results, working_dir)``: a process standing for a DAG started from ``working_dir``,
    holding the results folder's lock until the test ends (or kills it)."""
    holders = []

    def hold(results: Path, working_dir: Path) -> subprocess.Popen:
        working_dir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(results), str(working_dir)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in holders:
        process.kill()
        process.wait()


def snakemake(snakemake_cmd, checkout, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*snakemake_cmd, *args], cwd=checkout, capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file's bytes and every entry's mtime under ``root``: any write, deletion or new file shows."""
    return {str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None, path.stat().st_mtime_ns)
            for path in [root, *root.rglob("*")]}


def holder_note(pid: int, working_dir: Path) -> str:
    return f"pid {pid} on {socket.gethostname()}, working directory {working_dir}, started "


def test_a_held_results_dir_is_refused_naming_the_holder_until_the_holder_dies(first_dag, tmp_path):
    results, first_checkout = tmp_path / "results", (tmp_path / "first_checkout").resolve()
    first = first_dag(results, first_checkout)

    with pytest.raises(locks.ResultsBusy) as refused:
        locks.hold_dag_lock(results)
    assert holder_note(first.pid, first_checkout) in str(refused.value)
    assert "Wait for that DAG to end, or stop it" in str(refused.value)

    first.send_signal(signal.SIGKILL)  # dies without releasing anything
    first.wait()
    locks.hold_dag_lock(results)
    locks.release_dag_lock(results)  # before reading: closing a second handle would drop the lock anyway
    assert (results / locks.DAG_LOCK_FILE).read_text().startswith(holder_note(os.getpid(), Path.cwd()))


def test_a_second_dag_from_another_checkout_is_refused_before_it_touches_the_results_dir(
        snakemake_cmd, second_checkout, experiment, first_dag, tmp_path):
    results, overlay = experiment
    # what a first DAG has written: a rerun of toy_data would delete its output and reopen its log
    (results / "data").mkdir(parents=True)
    (results / "data" / "manifest.json").write_text("{}\n")
    (results / "logs").mkdir()
    (results / "logs" / "toy_data.log").write_text("the first DAG's log\n")
    first_checkout = (tmp_path / "first_checkout").resolve()
    first = first_dag(results, first_checkout)
    before = snapshot(results)

    second = snakemake(snakemake_cmd, second_checkout, "--cores", "1", "--configfile", SMOKE, str(overlay),
                       "--until", "toy_data", "--forcerun", "toy_data")

    assert second.returncode != 0, second.stdout[-3000:]
    assert f"{results} is in use by another Snakemake DAG: {holder_note(first.pid, first_checkout)}" in second.stderr
    assert "then rerun" in second.stderr
    assert snapshot(results) == before
    # and Snakemake's own lock of the refused checkout is gone: a rerun needs no --unlock
    assert not list((second_checkout / ".snakemake" / "locks").glob("*"))


def test_a_dry_run_neither_takes_nor_minds_the_lock(snakemake_cmd, second_checkout, experiment, first_dag, tmp_path):
    results, overlay = experiment
    planned = snakemake(snakemake_cmd, second_checkout, "-n", "--configfile", SMOKE, str(overlay))
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert not (results / locks.DAG_LOCK_FILE).exists()

    first_dag(results, tmp_path / "first_checkout")
    planned_while_busy = snakemake(snakemake_cmd, second_checkout, "-n", "--configfile", SMOKE, str(overlay))
    assert planned_while_busy.returncode == 0, planned_while_busy.stderr[-3000:]


def test_a_real_run_holds_the_lock_in_its_main_process_and_lets_go_at_the_end(snakemake_cmd, second_checkout,
                                                                              experiment):
    results, overlay = experiment
    run = subprocess.Popen([*snakemake_cmd, "--cores", "1", "--configfile", SMOKE, str(overlay),
                            "--until", "toy_data"], cwd=second_checkout, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output[-3000:]
    assert (results / "data" / "manifest.json").is_file()

    assert (results / locks.DAG_LOCK_FILE).read_text().startswith(holder_note(run.pid, second_checkout))
    locks.hold_dag_lock(results)  # free again now that the run is over
    locks.release_dag_lock(results)


def test_a_jobs_own_snakemake_process_runs_under_its_main_process_lock(snakemake_cmd, second_checkout, experiment,
                                                                       first_dag):
    """A SLURM job re-runs Snakemake on the workflow for its one job (--mode remote, with the
    arguments Snakemake spawns it with), while its main process holds the lock."""
    results, overlay = experiment
    first_dag(results, second_checkout)  # the main process
    job = snakemake(snakemake_cmd, second_checkout, "--snakefile", "Snakefile", "--target-jobs", "toy_data:",
                    "--force", "--no-hooks", "--nolock", "--ignore-incomplete", "--mode", "remote",
                    "--cores", "1", "--configfiles", SMOKE, str(overlay))
    assert job.returncode == 0, job.stderr[-3000:]
    assert (results / "data" / "manifest.json").is_file()
