"""MobileCLIP students (docs/reference.md §9): any open_clip architecture trains on DataCompDR,
with its own preprocessing (the one its released weights use) driving the augmentation
replay and the eval transform.

``MobileCLIP-S1`` from random init (nothing downloaded) takes two DR steps on toy shards
whose augmentations were drawn at 32 px and are replayed at its 256 px with mean 0 and
std 1; a checkpoint loaded the way ``evaluate`` loads it is evaluated at 256 px, bilinear,
with the same normalization.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from torchvision import transforms as T

from mobileclip_repro import checkpoints, config, models, shards
from mobileclip_repro.train import train as trainer
from mobileclip_repro.replay import InterpolationMode, ReplayTransform, replay_tensor
from mobileclip_repro.train.samples import SkipCounter

STUDENT = "MobileCLIP-S1"
# The preprocessing of MobileCLIP-S1's released weights (open_clip's pretrained config for
# its one tag), not open_clip's generic defaults (CLIP's mean and std, bicubic).
OWN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear", "resize_mode": "shortest"}
SIZE = 256
BATCH = 2
RUN = {"model": STUDENT, "data": "dr", "gpus_per_node": 0, "global_batch_size": BATCH, "seen_samples": 2 * BATCH,
       "num_checkpoints": 1, "warmup_steps": 1, "precision": "fp32", "workers": 0, "resume_every_steps": 0,
       "grad_checkpointing": True, "distill": {"teacher_dimension": [64, 64]}}


@pytest.fixture(scope="module")
def results(tmp_path_factory, write_reinforced_toy) -> Path:
    """Eight toy-world samples reinforced by untrained toy teachers with the schema's defaults."""
    return write_reinforced_toy(tmp_path_factory.mktemp("mobileclip"), train_samples=8, samples_per_shard=8)


@pytest.fixture(scope="module")
def spec(results) -> dict:
    loaded = config.load_config({"name": "mobileclip", "results_dir": str(results), "runs": {"s1": RUN}})
    return config.resolve_run(loaded, "s1")


@pytest.fixture(scope="module")
def trained(results, spec) -> dict:
    """Two DR training steps of a random-init MobileCLIP-S1 (the trainer, in this process)."""
    threads = torch.get_num_threads()
    try:
        manifest = trainer.train(spec, results / "runs" / "s1", device_name="cpu")
    finally:
        torch.set_num_threads(threads)
    return {"manifest": manifest, "checkpoint": checkpoints.checkpoint_path(results / "runs" / "s1", 1)}


def test_its_own_preprocessing_is_its_released_weights(spec):
    tag = open_clip.get_pretrained_cfg(STUDENT, "datacompdr")
    assert {key: tuple(tag[key]) if isinstance(tag[key], (list, tuple)) else tag[key] for key in OWN} == OWN
    assert models.own_preprocess(STUDENT) == OWN
    # architectures whose tags agree with open_clip's defaults, or disagree, build as they always did
    defaults = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
                "interpolation": "bicubic", "resize_mode": "shortest"}
    assert models.own_preprocess("ViT-B-16") == defaults
    assert models.own_preprocess("ViT-L-14") is None and models.own_preprocess("toy-student") is None


def test_a_mobileclip_student_takes_dr_steps_from_random_init(trained):
    manifest = trained["manifest"]
    assert [(e["epoch"], e["step"], e["seen_samples"]) for e in manifest["epochs"]] == [(1, 2, 2 * BATCH)]
    assert not any(manifest["skipped_samples"].values())
    checkpoint = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["model_name"] == STUDENT and checkpoint["step"] == 2


def test_its_checkpoint_replays_and_evaluates_at_its_own_size_and_normalization(spec, trained):
    # built as `evaluate` builds it: the architecture and the checkpoint file (not a tag)
    model, _, eval_transform = models.create_model_and_transforms(STUDENT, pretrained=str(trained["checkpoint"]))
    preprocess = model.visual.preprocess_cfg
    assert (tuple(preprocess["size"]), preprocess["mean"], preprocess["std"], preprocess["interpolation"],
            preprocess["resize_mode"]) == ((SIZE, SIZE), *OWN.values())

    resize, crop = (step for step in eval_transform.transforms if isinstance(step, (T.Resize, T.CenterCrop)))
    assert (resize.size, resize.interpolation, tuple(crop.size)) == (SIZE, InterpolationMode.BILINEAR, (SIZE, SIZE))
    [normalize] = [step for step in eval_transform.transforms if isinstance(step, T.Normalize)]
    assert (tuple(normalize.mean), tuple(normalize.std)) == (OWN["mean"], OWN["std"])

    # The replay reads the student's train transform, as the reference does: its size and
    # normalization, and its crop's interpolation, which open_clip's training makes bicubic
    # for every model (docs/reference.md §2).
    replay = ReplayTransform.from_open_clip(model)
    assert replay == ReplayTransform((SIZE, SIZE), InterpolationMode.BICUBIC, OWN["mean"], OWN["std"])

    # the trainer's dataset: stored 32 px augmentations come out at 256 px, pixels in [0, 1]
    dataset = trainer.build_dataset(spec, model, None, models.get_tokenizer(STUDENT), SkipCounter(), spec["seed"])
    example = next(iter(dataset.examples()))
    datacomp = {s["__key__"]: s for s in shards.iter_raw_samples(shards.list_shards(spec["datacomp_dir"])[0])}
    dr = {s["__key__"]: shards.decode_reinforcement(s)
          for s in shards.iter_raw_samples(shards.list_shards(spec["dr_dir"])[0])}
    [key] = [k for k, record in dr.items() if (record.image_emb[example.aug] == example.image_emb).all()]
    image = shards.decode_image(datacomp[key]["jpg"])
    assert example.pixels.shape == (3, SIZE, SIZE)
    assert torch.equal(example.pixels, replay_tensor(image, dr[key].param_aug[example.aug], SIZE, "bicubic"))
