"""Online distillation (issue 20): the DR loss on the reinforcement's teachers run during training,
on a fresh augmentation each step. Its teachers see exactly what reinforcement showed them: a
stored augmentation replayed online gives the stored embeddings; a toy online run trains, and
its counted FLOPs per step are the DR step's plus the teachers'."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip_repro import config, shards
from mobileclip_repro.train import train as trainer
from mobileclip_repro.replay import ReplayTransform
from mobileclip_repro.train.samples import assemble_online_example, joined_samples, SkipCounter
from mobileclip_repro.teachers import ReinforceConfig

REPO = Path(__file__).resolve().parents[1]
RUN = {"model": "toy-student", "data": "dr", "gpus_per_node": 0, "global_batch_size": 8, "seen_samples": 32,
       "num_checkpoints": 2, "workers": 0, "precision": "fp32", "grad_checkpointing": False, "warmup_steps": 1,
       "distill": {"teacher_dimension": [64, 64]}}


@pytest.fixture(scope="module")
def results(tmp_path_factory, write_reinforced_toy) -> Path:
    return write_reinforced_toy(tmp_path_factory.mktemp("online"), train_samples=32, samples_per_shard=16)


def run_spec(results: Path, name: str = "r", **distill) -> dict:
    cfg = config.load_config({"name": "online", "results_dir": str(results), "evaluation": {"benchmarks": []},
                              "runs": {name: {**RUN, "distill": {**RUN["distill"], **distill}}}})
    return config.resolve_run(cfg, name)


def test_a_stored_augmentation_replayed_online_gives_the_stored_teacher_embeddings(results, tmp_path, monkeypatch):
    spec = run_spec(results, online=True)
    teachers = trainer.build_run(spec, tmp_path / "run", device_name="cpu").teachers  # the trainer's own
    tar = sorted((results / "data" / "datacomp").glob("*.tar"))[0]
    datacomp, dr = next(joined_samples(tar, results / "data" / "datacompdr" / tar.name, SkipCounter()))
    stored = shards.decode_reinforcement(dr)
    augmentation = 2
    monkeypatch.setattr(ReinforceConfig, "draw_param_aug",
                        lambda self, width, height, generator: stored.param_aug[augmentation])
    student = ReplayTransform.from_open_clip(trainer.models.create_model_and_transforms("toy-student")[0])
    example = assemble_online_example(datacomp, dr, student, teachers.config, random.Random(0))
    texts = torch.zeros(1, 16, dtype=torch.long)
    _, _, image_emb, text_emb, _, syn_emb = teachers.targets(
        [example.pixels[None], texts, example.teacher_view[None], [example.caption], texts, [example.syn_caption]])

    np.testing.assert_allclose(image_emb[0].numpy(), stored.image_emb[augmentation], atol=1e-6)
    np.testing.assert_allclose(text_emb[0].numpy(), stored.text_emb[0], atol=1e-6)
    row = stored.syn_text.index(example.syn_caption)
    np.testing.assert_allclose(syn_emb[0].numpy(), stored.syn_embs[shards.SYN_TEXT][row], atol=1e-6)


def test_a_toy_online_run_trains_and_counts_its_teachers_in_each_step(results, tmp_path):
    online = trainer.train(run_spec(results, "online", online=True), tmp_path / "online", device_name="cpu")
    dr = trainer.train(run_spec(results, "dr"), tmp_path / "dr", device_name="cpu")

    assert (tmp_path / "online" / "checkpoints" / "epoch_2.pt").is_file()
    assert not any(online["skipped_samples"].values())
    teachers_share = online["flops"]["per_step"] - dr["flops"]["per_step"]
    assert teachers_share > 0, "the teachers' forwards are part of an online step"
    # two toy teachers on 8 images and 16 captions, counted on their own
    ensemble = trainer.OnlineTeachers(run_spec(results, online=True), torch.device("cpu"), batch_size=16).ensemble
    from mobileclip_repro.flops import count_flops

    _, image_flops = count_flops(ensemble.encode_images, torch.randn(8, 3, 32, 32))
    _, text_flops = count_flops(ensemble.encode_texts, [f"caption {i}" for i in range(16)])
    assert teachers_share == pytest.approx(image_flops + text_flops, rel=0.02)


def test_online_distillation_is_for_dr_runs_with_every_teacher():
    for run, key in [({**RUN, "data": "plain", "distill": {"online": True}}, "runs.r.distill.online"),
                     ({**RUN, "distill": {"online": True, "teachers": [0], "teacher_dimension": [64, 64]}},
                      "runs.r.distill.online")]:
        with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
            config.load_config({"name": "x", "runs": {"r": run}, "evaluation": {"benchmarks": []}})
