"""Training telemetry (issue 23): every train job writes metrics.jsonl and, by default,
TensorBoard event files with the same scalars under open_clip_train's names; the report draws
the training curves and says in words when a run's loss went non-finite or rose."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_repro import config, preflight, telemetry
from mobileclip_repro.train import train as trainer
from mobileclip_repro.report.plots import plot_training_curves

RUN = {"model": "toy-student", "gpus_per_node": 0, "global_batch_size": 8, "seen_samples": 48,
       "num_checkpoints": 2, "checkpoint_spacing": "linear", "workers": 0, "precision": "fp32",
       "grad_checkpointing": False, "warmup_steps": 1, "log_every_steps": 1,
       "distill": {"teacher_dimension": [64, 64]}}


@pytest.fixture(scope="module")
def results(tmp_path_factory, write_reinforced_toy) -> Path:
    return write_reinforced_toy(tmp_path_factory.mktemp("telemetry"), train_samples=32, samples_per_shard=16)


def run_spec(results: Path, **overrides) -> dict:
    """The run as the DAG resolves it: the experiment loaded and checked (``preflight.load_experiment``)."""
    cfg = preflight.load_experiment({"name": "telemetry", "results_dir": str(results),
                                     "runs": {"r": {**RUN, **overrides}}, "evaluation": {"benchmarks": []}})
    return config.resolve_run(cfg, "r")


def train_here(spec: dict, out_dir: Path) -> None:
    threads = torch.get_num_threads()
    try:
        trainer.train(spec, out_dir)
    finally:
        torch.set_num_threads(threads)


def test_tensorboard_is_on_by_default_and_its_scalars_are_the_jsonl_values(results, tmp_path):
    spec = run_spec(results, data="dr")
    assert spec["report_to"] == ["tensorboard"]
    train_here(spec, tmp_path / "run")

    records = telemetry.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, spec["total_steps"] + 1))
    board = telemetry.read_tensorboard_scalars(tmp_path / "run" / "tensorboard")
    expected = {}
    for record in records:
        for name, value in telemetry.scalars(record).items():
            expected.setdefault(name, []).append((record["step"], float(np.float32(value))))
    assert board == expected  # event files keep float32
    # open_clip_train's names, and the DR loss's six terms beside them
    assert {"train/loss", "train/lr", "train/scale", "train/samples_per_second", "train/samples_per_second_per_gpu",
            "train/contrastive_loss", "train/distill_loss"} <= set(board)
    assert {name for name in board if name.startswith("train/loss/")} == {
        f"train/loss/{t}" for t in ("clip_real", "distill_i2t_real", "distill_t2i_real", "clip_syn",
                                    "distill_i2t_syn", "distill_t2i_syn")}


def test_report_to_empty_leaves_metrics_jsonl_only(results, tmp_path):
    train_here(run_spec(results, data="plain", report_to=[]), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_resumed_log_purges_the_steps_a_killed_attempt_logged_past_the_checkpoint(tmp_path):
    spec = {"report_to": ["tensorboard"]}
    first = telemetry.MetricsLog(tmp_path, 0, spec)
    for step in range(1, 7):
        first.write({"step": step, "loss": float(step)})
    first.close()
    resumed = telemetry.MetricsLog(tmp_path, 4, spec)  # the checkpoint was at step 4
    for step in range(5, 9):
        resumed.write({"step": step, "loss": 10.0 * step})
    resumed.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0)]
    assert telemetry.read_tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == expected
    assert [(r["step"], r["loss"]) for r in telemetry.read_metrics(tmp_path / "metrics.jsonl")] == expected


def test_scalar_names_follow_open_clip_train():
    record = {"step": 3, "seen_samples": 24, "epoch": 1, "lr": 1e-3, "logit_scale": 14.2, "loss": 2.5,
              "contrastive_loss": 1.0, "distill_loss": 1.5, "loss/clip_real": 0.5, "samples_per_second": 100.0,
              "data_wait_share": 0.25, "skipped_samples": {"no_image": 2, "bad_json": 1}}
    assert telemetry.scalars(record) == {
        "train/seen_samples": 24.0, "train/epoch": 1.0, "train/lr": 1e-3, "train/scale": 14.2, "train/loss": 2.5,
        "train/contrastive_loss": 1.0, "train/distill_loss": 1.5, "train/loss/clip_real": 0.5,
        "train/samples_per_second": 100.0, "train/data_wait_share": 0.25, "train/skipped_samples": 3.0,
        "train/skipped/no_image": 2.0, "train/skipped/bad_json": 1.0}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_asking_for_wandb_without_it_installed_fails_at_load_naming_the_key(results):
    with pytest.raises(config.ConfigError, match=r"runs\.r\.report_to: wandb requested but not installed"):
        run_spec(results, data="plain", report_to=["tensorboard", "wandb"])


def test_an_unknown_sink_is_refused_naming_the_key(results):
    with pytest.raises(config.ConfigError, match="report_to"):
        run_spec(results, data="plain", report_to=["mlflow"])


def curve(losses: list[float], seen_per_step: int = 8) -> list[dict]:
    return [{"step": i + 1, "seen_samples": (i + 1) * seen_per_step, "loss": loss, "samples_per_second": 50.0,
             "data_wait_share": 0.1} for i, loss in enumerate(losses)]


def test_a_falling_loss_has_no_findings():
    assert telemetry.findings("dr", 0, curve([4.0, 3.5, 3.6, 3.0, 2.8, 2.5, 2.6, 2.2])) == []


def test_a_non_finite_loss_is_named_with_its_first_step():
    problems = telemetry.findings("dr", 1, curve([4.0, 3.5, math.nan, math.inf, 3.0]))
    assert problems == ["dr seed 1: non-finite loss (NaN or inf) from step 3 (2 of 5 log steps)"]


def test_a_loss_that_ends_above_where_it_began_is_diverging():
    problems = telemetry.findings("plain", 0, curve([2.0, 2.1, 2.5, 3.0, 4.0, 6.0, 9.0, 14.0]))
    assert problems == ["plain seed 0: loss diverged, 2.050 over the first quarter of the run and 11.500 over the last"]


def test_the_training_figure_and_section_flag_a_nan_run(tmp_path):
    curves = {"good": {0: curve([4.0, 3.0, 2.5, 2.0]), 1: curve([4.2, 3.1, 2.4, 2.1])},
              "broken": {0: curve([4.0, math.nan, math.nan, math.nan])}}
    paths = plot_training_curves(curves, tmp_path / "training_curves", title="t", flagged={"broken"})
    assert [p.name for p in paths] == ["training_curves.png", "training_curves.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    section = telemetry.training_markdown(curves, "training_curves.png")
    assert "**Problems found in the training curves:**" in section
    assert "- broken seed 0: non-finite loss (NaN or inf) from step 2 (3 of 4 log steps)" in section
    assert "| good | 1 | 4 | 50.0 | 0.100 | 4.2000 | 2.1000 |" in section


def test_training_curves_are_read_beside_the_job_manifests_handed_over_and_no_others(tmp_path):
    manifests = []
    for run, seed in (("dr", 0), ("dr", 1), ("plain", 0), ("removed_from_config", 0)):
        folder = tmp_path / "runs" / run / f"seed_{seed}"
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"run": run, "seed": seed}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve([3.0, 2.0])) + '{"step": 3, "lo')
        manifests.append(folder / "manifest.json")
    curves = telemetry.training_curves(manifests[:3])
    assert {run: sorted(seeds) for run, seeds in curves.items()} == {"dr": [0, 1], "plain": [0]}
    assert [r["step"] for r in curves["dr"][1]] == [1, 2]  # the line a kill cut short is left out
