"""The three shipped paper runs, stated hyperparameter by hyperparameter from docs/reference.md §1-2.

The expected values are written out here, not computed from the configs, so a config
edit that drifts from Apple's run scripts fails a test that names the run and the key.
"""
import json
import re

import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss
from open_clip_train.scheduler import cosine_lr
from torchvision import transforms as T

from mobileclip_repro.config import captioner_sets, load_config, resolve_run
from mobileclip_repro.hub import expand_shard_spec
from mobileclip_repro.train.loss import DRClipLoss
from mobileclip_repro.models import create_model_and_transforms
from mobileclip_repro.replay import ReplayTransform
from mobileclip_repro.teachers import ReinforceConfig
from mobileclip_repro.train.train import build_loss, weight_decay_groups

# docs/reference.md §1, first table: what the three run scripts have in common. Their
# --accum-freq 1 and --zeroshot-frequency 1 have no key here: the trainer never accumulates
# gradients, and zero-shot evaluation is the evaluate stage, after every checkpoint.
SHARED = {
    "model": "ViT-B-16", "lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.2,
    "warmup_steps": 1000, "schedule": "cosine", "precision": "amp", "grad_clip_norm": 1.0, "seed": 0,
    "workers": 4, "local_loss": True, "gather_with_grad": True, "grad_checkpointing": True,
    "ddp_static_graph": True, "dataset_resampled": True,
}
# Apple's DR loss: every member of the ensemble, the synthetic caption's term included (the
# ablation knobs' defaults, which no paper run changes).
ALL_TEACHERS_ALL_CAPTIONS = {"teachers": "all", "synthetic_captions": True, "online": False}
EXPECTED = {
    # §1 row datacompdr1b ("s13b"): 16 x 8, 65,536 (512/GPU), 200,000 steps, 13.107B seen, 100 checkpoints
    "datacompdr1b_s13b": {
        **SHARED, "data": "dr", "nodes": 16, "gpus_per_node": 8, "world_size": 128,
        "global_batch_size": 65_536, "per_gpu_batch_size": 512, "total_steps": 200_000,
        "seen_samples": 13_107_200_000, "num_checkpoints": 100, "samples_per_checkpoint": 131_072_000,
        "steps_per_checkpoint": 2_000, "dr": True, "reinforcement_config": "configs/reinforce/datacompdr1b.json",
        "distill": {"logit_scale": 100, "loss_weights": [0.25, 0.75], "teacher_dimension": [768, 768],
                    "average_after_softmax": True, **ALL_TEACHERS_ALL_CAPTIONS},
        "resume": "latest", "save_most_recent": False,
    },
    # §1 row datacompdr12m ("s30m"): 4 x 8, 8,192 (256/GPU), 30,000 steps, 245.76M seen, 20 checkpoints
    "datacompdr12m_s30m": {
        **SHARED, "data": "dr", "nodes": 4, "gpus_per_node": 8, "world_size": 32,
        "global_batch_size": 8_192, "per_gpu_batch_size": 256, "total_steps": 30_000,
        "seen_samples": 245_760_000, "num_checkpoints": 20, "samples_per_checkpoint": 12_288_000,
        "steps_per_checkpoint": 1_500, "dr": True, "reinforcement_config": "configs/reinforce/datacompdr12m.json",
        "distill": {"logit_scale": 100, "loss_weights": [0.0, 1.0], "teacher_dimension": [768, 768],
                    "average_after_softmax": True, **ALL_TEACHERS_ALL_CAPTIONS},
        "resume": "none", "save_most_recent": True,
    },
    # §1 row datacomp12m (baseline, no DR): 1 x 8, 8,192 (1,024/GPU), 30,000 steps, 245.76M, 20 checkpoints.
    # §1: Apple's run_datacomp12m.sh passes --save-most-recent, no --resume.
    "datacomp12m_s30m": {
        **SHARED, "data": "plain", "nodes": 1, "gpus_per_node": 8, "world_size": 8,
        "global_batch_size": 8_192, "per_gpu_batch_size": 1_024, "total_steps": 30_000,
        "seen_samples": 245_760_000, "num_checkpoints": 20, "samples_per_checkpoint": 12_288_000,
        "steps_per_checkpoint": 1_500, "dr": False, "reinforcement_config": None,
        "resume": "none", "save_most_recent": True,
    },
    # §9, MobileCLIP2's run_dfndr12m.sh: MobileCLIP-B, 4 x 8, 8,192, 30k steps, 20 checkpoints,
    # 20 workers, per-teacher logit scales 70 / 60, loss weights 0 / 1, datacompdr12m.json augmentations,
    # every synthetic-caption set (default regex), save most recent.
    "dfndr12m_mobileclip_b": {
        **SHARED, "model": "MobileCLIP-B", "workers": 20, "data": "dr", "nodes": 4, "gpus_per_node": 8,
        "world_size": 32, "global_batch_size": 8_192, "per_gpu_batch_size": 256, "total_steps": 30_000,
        "seen_samples": 245_760_000, "num_checkpoints": 20, "dr": True,
        "reinforcement_config": "configs/reinforce/datacompdr12m.json", "syn_caption_regex": "^syn_text.*$",
        "distill": {"logit_scale": [70.0, 60.0], "loss_weights": [0.0, 1.0], "teacher_dimension": [768, 768],
                    "average_after_softmax": True, **ALL_TEACHERS_ALL_CAPTIONS},
        "save_most_recent": True,
    },
    # §9, run_dfndr2b.sh: 16 x 8, 65,536, 200k steps, 100 checkpoints, datacompdr1b.json augmentations,
    # the syn_text_dfn_mscoco38k captions only, scales 70 / 60, weights 0 / 1.
    "dfndr2b_mobileclip_b": {
        **SHARED, "model": "MobileCLIP-B", "data": "dr", "nodes": 16, "gpus_per_node": 8, "world_size": 128,
        "global_batch_size": 65_536, "per_gpu_batch_size": 512, "total_steps": 200_000,
        "seen_samples": 13_107_200_000, "num_checkpoints": 100, "dr": True,
        "reinforcement_config": "configs/reinforce/datacompdr1b.json",
        "syn_caption_regex": "^syn_text_dfn_mscoco38k$",
        "distill": {"logit_scale": [70.0, 60.0], "loss_weights": [0.0, 1.0], "teacher_dimension": [768, 768],
                    "average_after_softmax": True, **ALL_TEACHERS_ALL_CAPTIONS},
        "save_most_recent": True,
    },
}
CONFIG_OF = {"datacompdr1b_s13b": "datacompdr1b", "datacompdr12m_s30m": "datacompdr12m",
             "datacomp12m_s30m": "datacomp12m", "dfndr12m_mobileclip_b": "dfndr12m",
             "dfndr2b_mobileclip_b": "dfndr2b"}
DR_RUNS = ["datacompdr1b_s13b", "datacompdr12m_s30m", "dfndr12m_mobileclip_b", "dfndr2b_mobileclip_b"]
# §1 data column: shard ids {00..64}/{00000000..00000999} + 65/{00000000..00000535}; 1,024 for the 12M sets
SHARD_IDS_1B = [f"{d:02d}/{s:08d}" for d in range(65) for s in range(1000)] + [f"65/{s:08d}" for s in range(536)]
SHARD_IDS_12M = [f"{s:08d}" for s in range(1024)]
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def reinforce_json(num_samples):  # docs/reference.md §2: Apple's JSON, key for key
    return {"model_name": "ViT-L-14,ViT-L-14", "num_samples": num_samples,
            "pretrained": "openai,datacomp_xl_s13b_b90k",
            "reinforce": {"image_augmentation": {
                "normalize": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
                "rand_augment": {"enable": True, "p": 1.0},
                "random_resized_crop": {"interpolation": "bicubic", "size": 224},
                "to_rgb": {"enable": True}, "to_tensor": {"enable": True}}}}


@pytest.fixture(scope="module")
def configs(repo_root):
    return {name: load_config(repo_root / "configs" / "paper" / f"{name}.yaml") for name in set(CONFIG_OF.values())}


def spec_of(configs, run):
    return resolve_run(configs[CONFIG_OF[run]], run)


@pytest.fixture(scope="module")
def student():
    model, train_transform, _ = create_model_and_transforms("ViT-B-16", output_dict=True)
    return model, train_transform


@pytest.mark.parametrize("run", EXPECTED)
def test_each_paper_run_resolves_to_its_run_script_flag_by_flag(configs, run):
    spec = spec_of(configs, run)
    assert {key: spec.get(key) for key in EXPECTED[run]} == EXPECTED[run]


def test_the_baseline_is_plain_clip_with_no_reinforcement(configs):
    spec = spec_of(configs, "datacomp12m_s30m")
    assert spec["data"] == "plain" and not spec["dr"] and spec["dr_dir"] is None
    assert "reinforcement_config" not in spec


@pytest.mark.parametrize("config, shard_ids, count", [("datacompdr1b", SHARD_IDS_1B, 65_536),
                                                      ("datacompdr12m", SHARD_IDS_12M, 1_024),
                                                      ("datacomp12m", SHARD_IDS_12M, 1_024),
                                                      ("dfndr12m", SHARD_IDS_12M, 1_024)])
def test_the_hub_shards_expand_to_the_run_scripts_shard_ids(configs, config, shard_ids, count):
    expanded = expand_shard_spec(configs[config]["data"]["hub"]["shards"])
    assert len(expanded) == count and expanded == shard_ids


# docs/reference.md §9, "DFNDR on the hub": Apple's DFNDR repos, and the pool their uids come from.
# DFN-2B (and DFN-2B12M, which DFNDR-12M reinforces) is a subset of DataComp-12B, the 12.8B
# CommonPool, whose parquet metadata is mlfoundations/datacomp_xlarge; DataComp-12M and
# DataComp-1B are other subsets of that pool and would leave nearly every sample without a caption.
DFNDR_HUB = {"dfndr12m": "apple/DFNDR-12M", "dfndr2b": "apple/DFNDR-2B"}
DFN_CAPTION_POOL = "mlfoundations/datacomp_xlarge"


@pytest.mark.parametrize("config, dr_repo", DFNDR_HUB.items())
def test_the_dfndr_configs_fetch_apples_repos_joined_with_datacomp_12b(configs, config, dr_repo):
    hub = configs[config]["data"]["hub"]
    assert configs[config]["data"]["source"] == "hub" and not configs[config]["reinforcement"]["generate"]
    assert hub["dr_repo"] == dr_repo
    assert hub["datacomp_repo"] == DFN_CAPTION_POOL
    # the join guard is on: a pool that lacks the shards' uids fails the fetch instead of
    # writing nearly empty shards
    assert 0 < hub["min_join_rate"] <= 1
    assert expand_shard_spec(hub["shards"])  # a shard range is set (2B's is unverified, §9)


def test_expand_shard_spec_multiplies_groups_leftmost_slowest_and_keeps_the_padding():
    assert expand_shard_spec("{0..1}/{008..010}") == ["0/008", "0/009", "0/010", "1/008", "1/009", "1/010"]
    assert expand_shard_spec("shard-{9..10}") == ["shard-9", "shard-10"]  # unpadded bounds stay unpadded


def test_expand_shard_spec_concatenates_a_list_of_specs():
    assert expand_shard_spec(["{00..01}/x", "65/{00000000..00000001}"]) == ["00/x", "01/x", "65/00000000",
                                                                            "65/00000001"]


@pytest.mark.parametrize("bad", ["{00..0a}", "{5..2}", "{00..01", "a}", "{0,1}", ""])
def test_a_malformed_shard_spec_raises_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(f"malformed shard spec {bad!r}")):
        expand_shard_spec(["{00..01}", bad])


@pytest.mark.parametrize("run, num_samples", [("datacompdr1b_s13b", 10), ("datacompdr12m_s30m", 30)])
def test_the_reinforcement_configs_are_apples_verbatim(configs, repo_root, run, num_samples):
    path = repo_root / spec_of(configs, run)["reinforcement_config"]
    assert json.loads(path.read_text()) == reinforce_json(num_samples)
    parsed = ReinforceConfig.load(path)
    assert (parsed.model_names, parsed.pretrained, parsed.num_samples) == (
        ("ViT-L-14", "ViT-L-14"), ("openai", "datacomp_xl_s13b_b90k"), num_samples)
    assert (parsed.crop_size, parsed.interpolation) == (224, T.InterpolationMode.BICUBIC)
    assert list(parsed.mean) == OPENAI_MEAN and list(parsed.std) == OPENAI_STD


@pytest.mark.parametrize("run", DR_RUNS)
def test_the_teacher_dimensions_are_the_two_teachers_embedding_widths(configs, repo_root, run):
    spec = spec_of(configs, run)
    teachers = ReinforceConfig.load(repo_root / spec["reinforcement_config"]).model_names
    # The loss slices the stored 1536-D embeddings by these widths; a mismatch would mix teachers.
    assert [open_clip.get_model_config(name)["embed_dim"] for name in teachers] == spec["distill"]["teacher_dimension"]


def test_weight_decay_spares_exactly_the_gains_biases_and_logit_scale(student):
    model, _ = student
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    no_decay, decay = weight_decay_groups(model, 0.2)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.2)
    spared, decayed = [names[id(p)] for p in no_decay["params"]], [names[id(p)] for p in decay["params"]]
    assert sorted(spared + decayed) == sorted(names.values())  # a partition: nothing dropped, nothing twice
    assert set(spared) == {n for n, p in model.named_parameters() if p.ndim < 2}
    assert "logit_scale" in spared and "visual.ln_post.bias" in spared
    assert {"visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
            "positional_embedding", "text_projection", "transformer.resblocks.0.attn.in_proj_weight",
            "visual.transformer.resblocks.11.mlp.c_proj.weight"} <= set(decayed)


def test_the_baseline_trains_on_open_clips_default_augmentation(student):
    _, train_transform = student
    crops = [t for t in train_transform.transforms if isinstance(t, T.RandomResizedCrop)]
    assert len(crops) == 1
    assert (list(crops[0].size), crops[0].scale, crops[0].interpolation) == (
        [224, 224], (0.9, 1.0), T.InterpolationMode.BICUBIC)


def test_dr_students_replay_at_their_own_size_interpolation_and_normalization(student):
    replay = ReplayTransform.from_open_clip(student[0])
    assert (replay.size, replay.interpolation) == ((224, 224), T.InterpolationMode.BICUBIC)
    assert list(replay.mean) == OPENAI_MEAN and list(replay.std) == OPENAI_STD


@pytest.mark.parametrize("run", EXPECTED)
def test_the_trainer_builds_each_runs_loss(configs, run):
    spec = spec_of(configs, run)
    loss = build_loss(spec, rank=0, world_size=spec["world_size"])
    assert (loss.local_loss, loss.gather_with_grad, loss.world_size) == (True, True, EXPECTED[run]["world_size"])
    if run not in DR_RUNS:
        assert type(loss) is ClipLoss
        return
    distill = EXPECTED[run]["distill"]
    assert isinstance(loss, DRClipLoss)
    assert loss.loss_weights == tuple(distill["loss_weights"]) and loss.teacher_dimension == (768, 768)
    scale = distill["logit_scale"]
    member_scales = tuple(scale) if isinstance(scale, list) else (scale, scale)
    assert loss.member_logit_scales == member_scales and loss.average_after_softmax is True


@pytest.mark.parametrize("run", EXPECTED)
def test_the_schedule_warms_up_over_1000_steps_then_decays_to_zero(configs, run):
    spec = spec_of(configs, run)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    adjust = cosine_lr(optimizer, spec["lr"], spec["warmup_steps"], spec["total_steps"])
    assert adjust(0) == pytest.approx(1e-3 / 1000)  # open_clip's warmup: lr * (step + 1) / warmup
    assert adjust(999) == pytest.approx(1e-3) and optimizer.param_groups[0]["lr"] == adjust(999)
    assert 0 <= adjust(EXPECTED[run]["total_steps"] - 1) < 1e-9


def test_the_dfndr_generation_chain_reinforces_with_apples_v2_teachers_and_captioner(repo_root):
    """configs/paper/dfndr12m-generate.yaml: fetch DataComp-12M -> reinforce with the DFN teachers
    and a MobileCLIP2 CoCa (v2 layout) -> the run_dfndr12m.sh student on the result."""
    config = load_config(repo_root / "configs" / "paper" / "dfndr12m-generate.yaml")
    reinforcement = config["reinforcement"]
    assert reinforcement["generate"] is True
    teachers = ReinforceConfig.load(repo_root / reinforcement["config"])
    assert (teachers.model_names, teachers.pretrained) == (("ViT-L-14", "ViT-L-14"), ("dfn2b", "dfn2b_s39b"))
    # the teacher loader takes QuickGELU from each tag's config: open_clip marks dfn2b (the
    # 2B-sample model) as QuickGELU and not the 39B one
    assert [open_clip.get_pretrained_cfg("ViT-L-14", tag).get("quick_gelu", False) for tag in teachers.pretrained] \
        == [True, False]
    assert teachers.num_samples == 30
    sets, v1_layout = captioner_sets(reinforcement["captioner"])
    assert list(sets) == ["syn_text_dfn_mscoco38k"] and not v1_layout
    spec = resolve_run(config, "dfndr12m_generated_mobileclip_b")
    assert re.match(spec["syn_caption_regex"], "syn_text_dfn_mscoco38k")
    shipped = spec_of({"dfndr12m": load_config(repo_root / "configs" / "paper" / "dfndr12m.yaml")},
                      "dfndr12m_mobileclip_b")
    differs = {key for key in spec if spec[key] != shipped.get(key)}
    # the student is run_dfndr12m.sh's, flag for flag; only its name, reinforcement and data folders differ
    assert differs == {"name", "reinforcement_config", "datacomp_dir", "dr_dir"}


@pytest.mark.parametrize("run", ["datacompdr12m_s30m", "datacomp12m_s30m"])
def test_the_s30m_comparison_trains_each_run_as_its_own_config_does(configs, repo_root, run):
    comparison = load_config(repo_root / "configs" / "paper" / "s30m-dr-vs-datacomp.yaml")
    alone, together = spec_of(configs, run), resolve_run(comparison, run)
    differing = {key for key in alone.keys() | together.keys() if alone.get(key) != together.get(key)}
    # where the data and results lie (under the experiment's results_dir), nothing that trains
    assert differing <= {"experiment", "results_dir", "datacomp_dir", "dr_dir", "resume"}, differing
    assert together["resume"] == "latest"  # exact, so result-neutral; a 24 h job continues when resubmitted
    assert comparison["report"]["efficiency_pairs"] == [["datacompdr12m_s30m", "datacomp12m_s30m"]]
