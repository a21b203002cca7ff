"""A run folder resumes only the run it holds (issue 25, item 1): a checkpoint is resumed when
it was made with the job's run spec (every key that changes the result; ``RESULT_NEUTRAL_KEYS``
aside) on the same training data. Anything else -- a changed lr, another world, ``resume:
none``, a folder where no checkpoint loads -- sets the checkpoints aside under
``superseded/<when>/`` (moved with a ``why.json``, never deleted), says so loudly and trains
from step 0."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from mobileclip_repro import config, shards, toyworld
from mobileclip_repro.train import train as trainer

BATCH = 8
RUN = {"model": "toy-student", "data": "plain", "gpus_per_node": 0, "global_batch_size": BATCH,
       "seen_samples": 4 * BATCH, "num_checkpoints": 2, "checkpoint_spacing": "linear", "workers": 0,
       "precision": "fp32", "grad_checkpointing": False, "warmup_steps": 1, "lr": 1e-3,
       "distill": {"teacher_dimension": [64, 64]}}
# A value other than the default for each key that does not change what a run computes
# (``resume`` is one too, but its other value, "none", is the one that does not resume).
NEUTRAL_CHANGES = {"save_most_recent": True, "max_consecutive_skips": 7, "slurm": {"runtime": 60},
                   "ddp_static_graph": False, "log_every_steps": 3, "report_to": [],
                   "wandb_project": "elsewhere"}


@pytest.fixture(scope="module")
def results(tmp_path_factory, write_reinforced_toy) -> Path:
    return write_reinforced_toy(tmp_path_factory.mktemp("spec"), train_samples=32, samples_per_shard=16)


def run_spec(results: Path, **overrides) -> dict:
    cfg = config.load_config({"name": "spec", "results_dir": str(results), "runs": {"r": {**RUN, **overrides}},
                              "evaluation": {"benchmarks": []}})
    return config.resolve_run(cfg, "r")


def train_here(spec: dict, out_dir: Path, data_manifests: list[Path] | None = None) -> dict:
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        try:
            return trainer.train(spec, out_dir, device_name="cpu", data_manifests=data_manifests)
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(results, tmp_path_factory) -> Path:
    """A finished run folder (lr 1e-3), copied afresh by each test that changes it."""
    out_dir = tmp_path_factory.mktemp("finished") / "run"
    train_here(run_spec(results), out_dir)
    return out_dir


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out_dir = tmp_path / "run"
    shutil.copytree(finished, out_dir, copy_function=shutil.copy2)  # mtimes kept: "untouched" is checkable
    return out_dir


def versions(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out_dir / "checkpoints").glob("*.pt"))}


def set_aside_folder(out_dir: Path) -> Path:
    (folder,) = (out_dir / trainer.SET_ASIDE_DIR).iterdir()
    return folder


def test_a_changed_lr_sets_the_old_checkpoints_aside_and_trains_from_step_0(results, finished, tmp_path, caplog):
    out_dir = copy_of(finished, tmp_path)
    before = torch.load(out_dir / "checkpoints" / "epoch_2.pt", weights_only=True)
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        manifest = train_here(run_spec(results, lr=2e-2), out_dir)

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("TRAINING FROM STEP 0" in m and "lr: 0.001 -> 0.02" in m for m in errors), errors
    assert "resumed at step" not in caplog.text
    after = torch.load(out_dir / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert after["run"]["lr"] == 2e-2 and manifest["attempts"] == 1
    assert not all(torch.equal(after["state_dict"][k], before["state_dict"][k]) for k in before["state_dict"])
    # the old run is kept whole, with why
    kept = set_aside_folder(out_dir)
    old = torch.load(kept / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert old["run"]["lr"] == 1e-3 and all(torch.equal(old["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert (kept / "manifest.json").is_file()
    why = json.loads((kept / "why.json").read_text())
    assert why["reason"] == "run spec changed" and why["differences"] == {"lr": {"checkpoint": 1e-3, "job": 2e-2}}
    assert manifest["set_aside"]["set_aside"] == str(kept)


def test_the_keys_that_do_not_change_the_result_are_all_tested_here():
    assert set(trainer.RESULT_NEUTRAL_KEYS) == {*NEUTRAL_CHANGES, "resume"}


@pytest.mark.parametrize("key", list(NEUTRAL_CHANGES))
def test_a_key_that_does_not_change_the_result_resumes_the_finished_run(results, finished, tmp_path, caplog, key):
    out_dir = copy_of(finished, tmp_path)
    untouched = versions(out_dir)
    spec = run_spec(results, **{key: NEUTRAL_CHANGES[key]})
    stored = torch.load(out_dir / "checkpoints" / "epoch_2.pt", weights_only=True, mmap=True)["run"]
    assert stored[key] != spec[key]
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        manifest = train_here(spec, out_dir)

    assert f"resumed at step {spec['total_steps']} " in caplog.text
    assert {k: v for k, v in versions(out_dir).items() if k in untouched} == untouched, "nothing was retrained"
    assert not (out_dir / trainer.SET_ASIDE_DIR).exists() and manifest["attempts"] == 2


@pytest.mark.parametrize("key, value", [("lr", 5e-3), ("seed", 3), ("warmup_steps", 2), ("workers", 1),
                                        ("resume_every_steps", 1), ("weight_decay", 0.1), ("schedule", "const")])
def test_every_key_that_changes_the_result_is_compared(results, finished, key, value):
    stored = torch.load(finished / "checkpoints" / "epoch_2.pt", weights_only=True, mmap=True)["run"]
    changed = run_spec(results, **{key: value})
    assert set(trainer.spec_differences(stored, changed)) == {key}
    assert trainer.spec_differences(stored, run_spec(results)) == {}


def remake_world(results: Path, seed: int) -> None:
    """The toy world of the ``results`` fixture written again, with ``seed`` (0: the same bytes)."""
    toyworld.generate(results / "data", seed=seed, train_samples=32, teacher_samples=1, benchmark_samples=1,
                      samples_per_shard=16, overwrite=True)


def test_the_same_bytes_written_again_are_the_same_data_and_the_run_resumes(results, tmp_path, caplog):
    data = tmp_path / "results"
    shutil.copytree(results / "data", data / "data")
    spec, out_dir, manifests = run_spec(data), tmp_path / "run", [data / "data" / "manifest.json"]
    train_here(spec, out_dir, data_manifests=manifests)
    untouched = versions(out_dir)
    shard = sorted((data / "data" / "datacomp").glob("*.tar"))[0]
    before = (shard.read_bytes(), shard.stat().st_mtime_ns)
    remake_world(data, seed=0)
    assert shard.read_bytes() == before[0] and shard.stat().st_mtime_ns != before[1]
    # a shard no data manifest lists (left over from other data) is not read, nor part of the identity
    shutil.copy(shard, shard.with_name("99999999.tar"))
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        manifest = train_here(spec, out_dir, data_manifests=manifests)

    assert f"resumed at step {spec['total_steps']} " in caplog.text
    assert {k: v for k, v in versions(out_dir).items() if k in untouched} == untouched, "nothing was retrained"
    assert not (out_dir / trainer.SET_ASIDE_DIR).exists() and manifest["attempts"] == 2


def test_other_training_data_under_the_same_spec_sets_the_checkpoints_aside(results, tmp_path):
    data = tmp_path / "results"
    shutil.copytree(results / "data", data / "data")
    spec, out_dir, manifests = run_spec(data), tmp_path / "run", [data / "data" / "manifest.json"]
    train_here(spec, out_dir, data_manifests=manifests)
    remake_world(data, seed=1)  # another world: other bytes, as many shards of about the same size
    train_here(spec, out_dir, data_manifests=manifests)

    why = json.loads((set_aside_folder(out_dir) / "why.json").read_text())
    assert why["reason"] == "run spec changed" and set(why["differences"]) == {"training data"}


def test_a_run_started_by_hand_identifies_its_data_by_content_too(results, tmp_path):
    data = tmp_path / "results"
    shutil.copytree(results / "data", data / "data")
    spec = run_spec(data)
    by_hand = trainer.data_stamp(spec, trainer.training_shards(spec, None))
    listed = trainer.data_stamp(spec, trainer.training_shards(spec, [data / "data" / "manifest.json"]))
    assert by_hand["datacomp_dir"] == listed["datacomp_dir"]
    remake_world(data, seed=1)
    assert trainer.data_stamp(spec, trainer.training_shards(spec, None))["datacomp_dir"] != by_hand["datacomp_dir"]


def test_a_dr_run_with_relative_data_folders_reads_its_listed_shards(results, tmp_path, monkeypatch):
    """The default results_dir is relative (results/<name>); the manifests' paths are absolute once read."""
    from mobileclip_repro.models import create_model_and_transforms, get_tokenizer
    from mobileclip_repro.train.samples import SkipCounter

    shutil.copytree(results / "data", tmp_path / "experiment" / "data")
    monkeypatch.chdir(tmp_path)
    spec = run_spec(Path("experiment"), data="dr")
    assert not Path(spec["datacomp_dir"]).is_absolute()
    model, _, _ = create_model_and_transforms(spec["model"])
    listed = shards.listed_shard_files([Path("experiment/data/manifest.json")])  # the toy world's, by relative path
    by_manifest = {spec["datacomp_dir"]: [listed[path] for path in shards.shards_in(spec["datacomp_dir"], listed)]}
    for files in (trainer.training_shards(spec, None), by_manifest):
        dataset = trainer.build_dataset(spec, model, None, get_tokenizer(spec["model"]), SkipCounter(), 0, files=files)
        dataset.passes = 1
        assert len(list(dataset.examples())) == 32


def test_resume_none_sets_the_checkpoints_aside_rather_than_overwriting_them(results, finished, tmp_path):
    out_dir = copy_of(finished, tmp_path)
    old = versions(out_dir)
    manifest = train_here(run_spec(results, resume="none"), out_dir)

    kept = set_aside_folder(out_dir)
    assert json.loads((kept / "why.json").read_text())["reason"] == "resume: none"
    assert versions(kept) == old and manifest["attempts"] == 1


def test_a_folder_where_no_checkpoint_loads_is_set_aside_and_said_loudly(results, finished, tmp_path, caplog):
    out_dir = copy_of(finished, tmp_path)
    for path in (out_dir / "checkpoints").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, "mobileclip_repro.train.train"):
        manifest = train_here(run_spec(results), out_dir)

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("TRAINING FROM STEP 0" in m and "no checkpoint loads" in m for m in errors), errors
    assert manifest["set_aside"]["reason"] == "no checkpoint loads" and manifest["attempts"] == 1
    assert len(list((set_aside_folder(out_dir) / "checkpoints").glob("*.pt"))) == 2
