"""Preemption (issue 10): a run killed with SIGKILL inside a pseudo-epoch and rerun ends with
the weights and optimizer state of a run that was never interrupted, bit for bit; a checkpoint
cut short by a crash is passed over for the one before it; one trainer per run folder; a
torchrun worker dies with its launcher; and the work a preemption can cost the paper's s30m
run is bounded by the resume checkpoints.

Two runs get killed, each in a process of its own: the DR trainer (a fork of this process)
directly, and the plain one as a preempted Snakemake job is, by killing its torchrun launcher
(the worker then has to die with it). Everything else (the uninterrupted runs, the reruns)
trains in this process: the killed runs' own checkpoints are compared with its, so the two
agree across processes too."""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_repro import cli, config, locks, telemetry
from mobileclip_repro.train import train as trainer
from mobileclip_repro.train.train import segment_boundaries

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
# Two pseudo-epochs of 5 steps, a resume checkpoint every 2 steps: resume.pt at steps 2 and 4
# in the first pseudo-epoch, 6 and 8 in the second; the stream restarts at steps 2, 4, 5, 6 and 8.
RUN = {"model": "toy-student", "gpus_per_node": 0, "global_batch_size": BATCH, "seen_samples": 10 * BATCH,
       "num_checkpoints": 2, "checkpoint_spacing": "linear", "workers": 1, "precision": "fp32",
       "grad_checkpointing": False, "warmup_steps": 2, "resume_every_steps": 2,
       "distill": {"teacher_dimension": [64, 64]}}
WAIT_S = 240  # a bound on waiting for a subprocess, only ever reached when the test fails
# Every run here (killed ones, reruns, uninterrupted ones) on one thread: the same thread count
# for all, as the comparison needs, and the fastest on a small CI machine with a DataLoader worker.
THREADS = "1"


@pytest.fixture(scope="module")
def results(tmp_path_factory, write_reinforced_toy) -> Path:
    """A results folder with a tiny toy world and its DataCompDR shards from untrained teachers."""
    return write_reinforced_toy(tmp_path_factory.mktemp("resume"), train_samples=32, samples_per_shard=16)


def run_spec(results: Path, data: str, **overrides) -> dict:
    cfg = config.load_config({"name": "resume", "results_dir": str(results),
                              "runs": {"r": {**RUN, "data": data, **overrides}},
                              "evaluation": {"benchmarks": []}})
    return config.resolve_run(cfg, "r")


def train_command(spec: dict, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mobileclip_repro", "train", "--spec", json.dumps(spec), "--out-dir", str(out_dir)]


def train_here(spec: dict, out_dir: Path) -> None:
    """A trainer in this process, to the end (or to where its checkpoints say it ended)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", THREADS)  # the trainer sets torch's threads from it
        try:
            trainer.train(spec, out_dir)
        finally:
            torch.set_num_threads(threads)


def popen(command: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": THREADS},
                                stdout=stream, stderr=subprocess.STDOUT)


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint (tensors left unread); None while there is none."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def exit_code(process: subprocess.Popen | multiprocessing.Process) -> int | None:
    return process.poll() if isinstance(process, subprocess.Popen) else process.exitcode


def wait_for_resume_checkpoint(out_dir: Path, process, after: int) -> tuple[int, float]:
    """Wait for a ``resume.pt`` past step ``after``: its step, and when it was seen (monotonic s)."""
    path, last, deadline = out_dir / "checkpoints" / "resume.pt", None, time.monotonic() + WAIT_S
    while True:
        assert exit_code(process) is None, (f"the trainer ended (rc {exit_code(process)}) before a resume "
                                            f"checkpoint after step {after}: "
                                            f"{out_dir.with_suffix('.log').read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"no resume checkpoint after step {after} in {WAIT_S} s"
        try:
            version = (path.stat().st_ino, path.stat().st_mtime_ns)
        except FileNotFoundError:
            version = None
        if version is not None and version != last:
            last = version
            step = checkpoint_step(path)
            if step is not None and step > after:
                return step, time.monotonic()
        time.sleep(0.01)


def kill_inside_the_second_pseudo_epoch(spec: dict, out_dir: Path, process, victim: int, rng: random.Random,
                                        while_training=lambda: None) -> None:
    """SIGKILL ``victim`` a random moment, up to one step's time, after the first resume checkpoint
    inside the second pseudo-epoch (the step's time measured on this run, since the first resume
    checkpoint in the first): before the pseudo-epoch's end, with a later resume checkpoint in between."""
    first_step, first_seen = wait_for_resume_checkpoint(out_dir, process, after=0)
    while_training()
    second_step, second_seen = wait_for_resume_checkpoint(out_dir, process, after=spec["checkpoint_steps"][0])
    time.sleep(rng.uniform(0, 1) * (second_seen - first_seen) / (second_step - first_step))
    os.kill(victim, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _parent(pid: int) -> int:
    return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("PPid:"))


def lock_free(out_dir: Path) -> bool:
    """Whether a rerun could take the run folder now (asked from this process, which holds nothing there)."""
    try:
        with trainer.run_folder_lock(out_dir):
            return True
    except trainer.RunFolderBusy:
        return False


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


class _Records(logging.Handler):
    """A logger's records, as "LEVEL message" lines."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def second_trainer(spec: dict, out_dir: Path) -> dict:
    """The CLI's ``train`` on ``out_dir``, in this process (``python -m mobileclip_repro`` exits
    with what ``cli.main`` returns): its exit code and what it logged."""
    records, logger = _Records(), logging.getLogger("mobileclip_repro.train.train")
    logger.addHandler(records)
    try:
        code = cli.main(train_command(spec, out_dir)[3:])
    finally:
        logger.removeHandler(records)
    return {"rc": code, "log": records.lines}


def _train_in_fork(spec: dict, out_dir: Path) -> None:
    """A forked child of this process, training: no interpreter to start, so no imports to pay."""
    handler = logging.FileHandler(out_dir.with_suffix(".log"))
    logging.getLogger("mobileclip_repro").addHandler(handler)
    logging.getLogger("mobileclip_repro").setLevel(logging.INFO)
    os.environ["OMP_NUM_THREADS"] = THREADS
    trainer.train(spec, out_dir)


def start_a_trainer(spec: dict, out_dir: Path) -> multiprocessing.Process:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    process = multiprocessing.get_context("fork").Process(target=_train_in_fork, args=(spec, out_dir))
    process.start()
    return process


def kill_a_trainer(spec: dict, out_dir: Path, process: multiprocessing.Process, rng: random.Random) -> dict:
    try:
        kill_inside_the_second_pseudo_epoch(spec, out_dir, process, process.pid, rng)
        process.join()
        # at once, while the trainer's DataLoader worker has not yet noticed it is an orphan
        return {"lock_free": lock_free(out_dir), "exit_code": process.exitcode}
    finally:
        process.kill()
        process.join()


def start_a_launcher(spec: dict, out_dir: Path) -> subprocess.Popen:
    """The run under torchrun, as the Snakemake rule launches it."""
    return popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                  *train_command(spec, out_dir)[1:]], out_dir.with_suffix(".log"))


def kill_a_launcher(spec: dict, out_dir: Path, launcher: subprocess.Popen, rng: random.Random) -> dict:
    """While torchrun's worker trains, a second trainer on the same folder; then torchrun is
    killed. What each step left behind."""
    seen = {"launcher": launcher.pid, "out_dir": out_dir}

    def while_training():
        seen["worker"] = int((out_dir / ".lock").read_text().split()[1])  # "pid <pid> on <host>"
        seen["worker_parent"] = _parent(seen["worker"])
        seen["second"] = second_trainer(spec, out_dir)
        seen["first_alive_after_second"] = _alive(seen["worker"]) and launcher.poll() is None

    try:
        kill_inside_the_second_pseudo_epoch(spec, out_dir, launcher, launcher.pid, rng, while_training)
        seen["exit_code"] = launcher.wait()
        deadline = time.monotonic() + 10
        while _alive(seen["worker"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["worker_alive"] = _alive(seen["worker"])
        before = _snapshot(out_dir / "checkpoints")
        time.sleep(0.5)
        seen["checkpoints_changed"] = _snapshot(out_dir / "checkpoints") != before
        seen["lock_free"] = lock_free(out_dir)
    finally:
        launcher.kill()
        launcher.wait()
        if "worker" in seen and _alive(seen["worker"]):
            os.kill(seen["worker"], signal.SIGKILL)
    return seen


def assert_same_training_state(path: Path, expected_path: Path) -> None:
    """Weights, optimizer state (moments, step counts, hyperparameters) and step: equal, bit for bit."""
    got, expected = (torch.load(p, map_location="cpu", weights_only=True) for p in (path, expected_path))
    assert (got["step"], got["seen_samples"]) == (expected["step"], expected["seen_samples"])
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    differing = [name for name, tensor in expected["state_dict"].items()
                 if not torch.equal(got["state_dict"][name], tensor)]
    assert not differing, f"{path.name}: weights differ from the uninterrupted run's: {differing[:5]}"
    assert got["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
    assert got["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in expected["optimizer"]["state"].items():
        assert state.keys() == got["optimizer"]["state"][index].keys()
        for key, tensor in state.items():
            assert torch.equal(got["optimizer"]["state"][index][key], tensor), (path.name, index, key)


def assert_ends_like(out_dir: Path, reference: Path, spec: dict) -> None:
    """Every pseudo-epoch checkpoint equals the uninterrupted run's, and so do the manifest's epochs."""
    for epoch in range(1, spec["num_checkpoints"] + 1):
        assert_same_training_state(out_dir / "checkpoints" / f"epoch_{epoch}.pt",
                                   reference / "checkpoints" / f"epoch_{epoch}.pt")
    assert not (out_dir / "checkpoints" / "resume.pt").exists()  # superseded by the last epoch's
    got, expected = (json.loads((d / "manifest.json").read_text()) for d in (out_dir, reference))
    same = ("epoch", "step", "seen_samples", "skipped_samples")
    assert [{k: e[k] for k in same} for e in got["epochs"]] == [{k: e[k] for k in same} for e in expected["epochs"]]
    assert got["skipped_samples"] == expected["skipped_samples"]


@pytest.fixture(scope="module")
def reference(results) -> dict:
    """Per data kind: the folder of a run that was never interrupted."""
    runs = {}
    for data in ("dr", "plain"):
        runs[data] = results / "runs" / f"{data}_uninterrupted"
        train_here(run_spec(results, data), runs[data])
    return runs


@pytest.fixture(scope="module")
def killed(results) -> dict:
    """Per data kind: its spec, the checkpoints a SIGKILL inside the second pseudo-epoch left
    (a copy, ``state``), and what was seen on the way. The DR trainer is a fork of this process;
    the plain one is torchrun's worker, and torchrun gets the SIGKILL. Side by side, a core each."""
    scenarios = {"dr": (start_a_trainer, kill_a_trainer), "plain": (start_a_launcher, kill_a_launcher)}
    specs = {data: run_spec(results, data) for data in scenarios}
    out_dirs = {data: results / "runs" / f"{data}_killed" for data in scenarios}
    # started from this thread alone: a fork copies no other thread's half-held locks
    processes = {data: start(specs[data], out_dirs[data]) for data, (start, _) in scenarios.items()}
    with concurrent.futures.ThreadPoolExecutor(len(scenarios)) as pool:
        seen = {data: pool.submit(kill, specs[data], out_dirs[data], processes[data], random.Random(data))
                for data, (_, kill) in scenarios.items()}
    runs = {}
    for data, future in seen.items():
        runs[data] = {"spec": specs[data], "state": results / "runs" / f"{data}_killed_state", **future.result()}
        shutil.copytree(out_dirs[data] / "checkpoints", runs[data]["state"])
    return runs


def folder_from(state: Path, out_dir: Path) -> Path:
    shutil.copytree(state, out_dir / "checkpoints")
    return out_dir


@pytest.mark.parametrize("data", ["dr", "plain"])
def test_a_run_killed_inside_a_pseudo_epoch_ends_as_if_never_interrupted(killed, reference, tmp_path, caplog,
                                                                         data):
    run = killed[data]
    spec = run["spec"]
    assert run["exit_code"] == -signal.SIGKILL
    assert run["lock_free"]  # at once: nothing of the killed run holds the folder
    resumed_at = checkpoint_step(run["state"] / "resume.pt")
    # the kill came inside the second pseudo-epoch, after the resume checkpoint there
    assert resumed_at is not None, f"the kill came too late: {sorted(p.name for p in run['state'].iterdir())}"
    assert spec["checkpoint_steps"][0] < resumed_at < spec["checkpoint_steps"][1]
    out_dir = folder_from(run["state"], tmp_path / "run")
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        train_here(spec, out_dir)
    assert f"resuming from {out_dir / 'checkpoints' / 'resume.pt'}" in caplog.text
    assert f"resumed at step {resumed_at} " in caplog.text
    assert_ends_like(out_dir, reference[data], spec)
    assert json.loads((out_dir / "manifest.json").read_text())["attempts"] == 2


@pytest.mark.parametrize("newest", ["resume.pt", "epoch_2.pt"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(killed, reference, tmp_path, caplog, newest):
    """The newest checkpoint cut to half, as by a crash mid-write (resume.pt inside the second
    pseudo-epoch; or epoch_2.pt, the last one): the run goes on from epoch_1.pt, says so, and
    ends as the uninterrupted run."""
    spec = killed["dr"]["spec"]
    if newest == "resume.pt":
        out_dir = folder_from(killed["dr"]["state"], tmp_path / "run")
    else:
        out_dir = tmp_path / "run"
        (out_dir / "checkpoints").mkdir(parents=True)
        for name in ("epoch_1.pt", "epoch_2.pt"):
            shutil.copy(reference["dr"] / "checkpoints" / name, out_dir / "checkpoints" / name)
    checkpoints = out_dir / "checkpoints"
    path = checkpoints / newest
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        train_here(spec, out_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"checkpoint {path} cannot be loaded") and m.endswith("falling back to an earlier one")
               for m in warnings), warnings
    assert f"resuming from {checkpoints / 'epoch_1.pt'}" in caplog.text
    assert f"resumed at step {spec['checkpoint_steps'][0]} " in caplog.text
    assert_ends_like(out_dir, reference["dr"], spec)


def test_a_second_trainer_on_a_busy_run_folder_fails_at_once(killed):
    run = killed["plain"]
    assert run["second"]["rc"] == 3
    assert run["first_alive_after_second"]  # it did not wait for the first one to end
    (message,) = run["second"]["log"]  # and loaded nothing, trained nothing
    assert message.startswith(f"ERROR {run['out_dir']} is being written by another trainer "
                              f"(pid {run['worker']} on ")
    assert message.endswith("wait for it to end or kill it, then rerun")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_torchrun_worker_dies_with_its_launcher(killed):
    run = killed["plain"]
    assert run["worker_parent"] == run["launcher"]  # the trainer was torchrun's worker, not torchrun
    assert not run["worker_alive"], "the worker outlived its launcher"
    assert not run["checkpoints_changed"]  # nothing writes into the run folder any more


def test_a_preemption_of_the_s30m_paper_run_costs_at_most_500_steps_of_its_30k():
    """The figure for the note: at the default resume_every_steps, a preempted s30m job (30k
    steps, 20 pseudo-epochs of 1,500) that resumes redoes at most the steps since its last
    checkpoint, the largest gap between consecutive restart points: 500 steps (4.1M samples),
    1/60 = 1.67 % of the run. The config itself says ``resume: none`` (Apple's script passes no
    --resume; test_paper_runs pins it), and a job rerun that way starts over from step 0."""
    spec = config.resolve_run(config.load_config(REPO / "configs" / "paper" / "datacompdr12m.yaml"),
                              "datacompdr12m_s30m")
    assert (spec["resume_every_steps"], spec["total_steps"]) == (500, 30_000)
    restart_points = sorted({0} | segment_boundaries(spec))
    most_lost = max(later - earlier for earlier, later in zip(restart_points, restart_points[1:]))
    assert most_lost == 500 and most_lost * spec["global_batch_size"] == 4_096_000
    assert most_lost / spec["total_steps"] == pytest.approx(0.0167, abs=1e-4)
    assert set(spec["checkpoint_steps"]) <= set(restart_points)  # every pseudo-epoch end is one too


def test_a_filesystem_without_locks_warns_and_trains_unguarded(tmp_path, monkeypatch, caplog):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "lockf", no_locks)
    with caplog.at_level(logging.WARNING, "mobileclip_repro.locks"), trainer.run_folder_lock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    assert "cannot lock" in caplog.text and "nothing stops a second trainer on this folder" in caplog.text


# -- a preemption warning (SIGTERM, SIGUSR1): at most one step lost --------------------------------
# Checkpoints only at the two pseudo-epoch ends (steps 5 and 10): a signal in the second one
# lands inside a data segment, so the rerun has to re-read the segment to go on bit for bit.
PREEMPTED = {"resume_every_steps": 0}


def torchrun_command(spec: dict, out_dir: Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(processes), *train_command(spec, out_dir)[1:]]


def signal_in_the_second_pseudo_epoch(command: list[str], out_dir: Path, signum: int) -> tuple[int, int]:
    """Start ``command``, send ``signum`` to it as soon as the first pseudo-epoch's checkpoint is
    there: (its exit code, the step of the resume.pt it left)."""
    process = popen(command, out_dir.with_suffix(".log"))
    try:
        deadline = time.monotonic() + WAIT_S
        while checkpoint_step(out_dir / "checkpoints" / "epoch_1.pt") is None:
            assert process.poll() is None, out_dir.with_suffix(".log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.01)
        process.send_signal(signum)
        returncode = process.wait(timeout=WAIT_S)
    finally:
        process.kill()
        process.wait()
    return returncode, checkpoint_step(out_dir / "checkpoints" / "resume.pt")


@pytest.fixture(scope="module")
def preempted_reference(results) -> Path:
    out_dir = results / "runs" / "preempted_uninterrupted"
    train_here(run_spec(results, "dr", **PREEMPTED), out_dir)
    return out_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_costs_at_most_a_step_and_the_rerun_ends_as_if_never_stopped(
        results, preempted_reference, tmp_path, caplog, signum):
    spec = run_spec(results, "dr", **PREEMPTED)
    out_dir = tmp_path / "run"
    returncode, stopped_at = signal_in_the_second_pseudo_epoch(train_command(spec, out_dir), out_dir, signum)

    assert returncode == 128 + signum  # nonzero: Snakemake (and the slurm profile's retries) run it again
    first_end = spec["checkpoint_steps"][0]
    # the signal came as step first_end + 1 began (or while its loader started): that step, or the one after
    assert stopped_at in (first_end + 1, first_end + 2), stopped_at
    log_text = out_dir.with_suffix(".log").read_text()
    assert f"{signal.Signals(signum).name} received: stopping after step {stopped_at}, resume.pt written" in log_text
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        train_here(spec, out_dir)
    assert f"resumed at step {stopped_at} " in caplog.text
    assert_ends_like(out_dir, preempted_reference, spec)


class _Numbers(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(4))


def _slow_to_start(marker: Path):
    """A worker_init_fn that stays in the window between torch's SIGTERM handler and
    ``ignore_preemption_signals`` until the test has signalled it."""
    def init(worker_id: int) -> None:
        marker.write_text(str(os.getpid()))
        while marker.exists():
            time.sleep(0.01)
        trainer.ignore_preemption_signals(worker_id)
    return init


def _iterate_with_sigterm_at_worker_start(tmp_path: Path, hold: bool) -> list[int]:
    marker = tmp_path / "worker_started"
    loader = torch.utils.data.DataLoader(_Numbers(), batch_size=None, num_workers=1,
                                         worker_init_fn=_slow_to_start(marker))
    with trainer.starting_workers() if hold else contextlib.nullcontext():
        batches = iter(loader)
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.01)
    # from another process, as torchrun's killpg and SLURM's signal come (torch's handler lets
    # a SIGTERM from the worker's own trainer end it quietly)
    subprocess.run(["kill", "-TERM", marker.read_text()], check=True)
    marker.unlink()
    return [int(n) for n in batches]


def test_a_sigterm_while_a_dataloader_worker_starts_waits_until_the_worker_ignores_it(tmp_path):
    assert _iterate_with_sigterm_at_worker_start(tmp_path, hold=True) == [0, 1, 2, 3]


def test_without_held_signals_that_sigterm_ends_the_worker_and_the_loader(tmp_path):
    """The window ``starting_workers`` closes: the trainer would fail before writing resume.pt."""
    with pytest.raises(RuntimeError, match="DataLoader worker .* (exited unexpectedly|killed by signal)"):
        _iterate_with_sigterm_at_worker_start(tmp_path, hold=False)


def test_a_signal_held_while_workers_start_reaches_the_trainer_afterwards():
    import threading

    with trainer.PreemptionWarning() as warning:
        with trainer.starting_workers():
            # to this thread, the one whose mask the workers inherit (a process-directed signal may
            # go to any other thread of the test process, which blocks nothing)
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            assert warning.signum is None
        assert warning.signum == signal.SIGUSR1


@pytest.mark.timeout(600)
def test_a_two_process_torchrun_job_stops_on_sigterm_at_one_step_and_resumes_bit_for_bit(results, tmp_path):
    """SIGTERM to torchrun, as SLURM sends it: torchrun passes it to both workers, which agree on
    the step to stop after; the rerun (two processes again) ends as an uninterrupted two-process run."""
    spec = run_spec(results, "plain", **PREEMPTED)
    reference = tmp_path / "reference"
    uninterrupted = popen(torchrun_command(spec, reference, 2), reference.with_suffix(".log"))
    out_dir = tmp_path / "run"
    returncode, stopped_at = signal_in_the_second_pseudo_epoch(torchrun_command(spec, out_dir, 2), out_dir,
                                                               signal.SIGTERM)
    assert uninterrupted.wait(timeout=WAIT_S) == 0, reference.with_suffix(".log").read_text()[-3000:]

    assert returncode != 0
    first_end = spec["checkpoint_steps"][0]
    log_text = out_dir.with_suffix(".log").read_text()
    assert stopped_at in (first_end + 1, first_end + 2), (stopped_at, log_text[-3000:])
    assert log_text.count(f"SIGTERM received: stopping after step {stopped_at}, resume.pt written") == 2, \
        "both ranks stop after the same step"
    rerun = popen(torchrun_command(spec, out_dir, 2), tmp_path / "rerun.log")
    assert rerun.wait(timeout=WAIT_S) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert f"resumed at step {stopped_at} " in (tmp_path / "rerun.log").read_text()
    assert_ends_like(out_dir, reference, spec)


# -- telemetry: metrics.jsonl survives a kill ---------------------------------------------------

def metrics_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_after_a_kill_and_a_rerun_metrics_jsonl_has_every_step_once_in_order(results, tmp_path):
    """A log line each step; SIGKILL after the trainer has logged past its last checkpoint (epoch_1
    at step 5); the rerun drops what it will redo, and its losses are the uninterrupted run's."""
    spec = run_spec(results, "dr", **PREEMPTED, log_every_steps=1)
    reference = tmp_path / "reference"
    train_here(spec, reference)
    out_dir = tmp_path / "run"
    process = popen(train_command(spec, out_dir), out_dir.with_suffix(".log"))
    try:
        deadline = time.monotonic() + WAIT_S
        first_end = spec["checkpoint_steps"][0]
        while not ((out_dir / "metrics.jsonl").is_file() and any(
                '"step": %d,' % (first_end + 2) in line for line in (out_dir / "metrics.jsonl").read_text().splitlines())):
            assert process.poll() is None, out_dir.with_suffix(".log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no metrics past the first checkpoint"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=WAIT_S)
    finally:
        process.kill()
        process.wait()
    logged = [record["step"] for record in metrics_lines(out_dir)]
    assert logged[-1] > first_end + 1, "the kill came after steps the rerun will take again"
    train_here(spec, out_dir)

    got, expected = metrics_lines(out_dir), metrics_lines(reference)
    assert [r["step"] for r in got] == list(range(1, spec["total_steps"] + 1)) == [r["step"] for r in expected]
    # TensorBoard (the default report_to): the killed attempt's events past the resumed step are
    # purged, so its reader sees every step once, with the values of metrics.jsonl
    board = telemetry.read_tensorboard_scalars(out_dir / "tensorboard")
    assert [step for step, _ in board["train/loss"]] == [r["step"] for r in got]
    assert [value for _, value in board["train/loss"]] == [float(np.float32(r["loss"])) for r in got]
    same = ("seen_samples", "epoch", "lr", "logit_scale", "loss", "contrastive_loss", "distill_loss",
            "loss/clip_real", "loss/distill_i2t_real", "loss/distill_t2i_real", "loss/clip_syn",
            "loss/distill_i2t_syn", "loss/distill_t2i_syn")
    assert [{k: r[k] for k in same} for r in got] == [{k: r[k] for k in same} for r in expected]
    first = got[0]
    assert 0 <= first["data_wait_share"] <= 1 and first["samples_per_second"] > 0 and first["skipped_samples"] == {}
    assert math.isclose(first["loss"], first["contrastive_loss"] + first["distill_loss"], rel_tol=1e-6)
    assert math.isclose(first["loss"], sum(first[k] for k in same if k.startswith("loss/")), rel_tol=1e-5)
