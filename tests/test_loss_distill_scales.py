"""Per-teacher distillation logit scales (docs/reference.md §9: MobileCLIP2's ``70. 60.``).

``distill.logit_scale`` is one number, every teacher's scale as in v1, or a list with one
scale per teacher, which needs each teacher's own softmax (``average_after_softmax``). A list
of the wrong length, or one without that, is a config error naming the key; a run with
``[70, 60]`` trains with the loss Apple's v2 code computes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mobileclip_repro.config import REPO_ROOT, ConfigError, load_config, resolve_run
from mobileclip_repro.train.loss import case_inputs, load_loss_cases
from mobileclip_repro.train.train import build_loss

LOSS_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference" / "dr_loss"
# docs/reference.md §9's dfndr12m flags, at a batch the test can resolve: MobileCLIP-B student,
# two 768-D ViT-L-14 teachers, weights 0/1, average after softmax, scales 70 and 60.
DFNDR12M = {
    "name": "dfndr12m_scales",
    "data": {"source": "hub"},
    "reinforcement": {"generate": False, "config": "configs/reinforce/datacompdr12m.json"},
    "runs": {"dfndr12m": {
        "model": "MobileCLIP-B", "data": "dr", "gpus_per_node": 0, "global_batch_size": 8, "seen_samples": 8,
        "warmup_steps": 1,  # the default 1000 is longer than this one-step run
        "local_loss": True, "gather_with_grad": True,
        "distill": {"logit_scale": [70.0, 60.0], "loss_weights": [0.0, 1.0], "teacher_dimension": [768, 768],
                    "average_after_softmax": True}}},
}


def _config(tmp_path: Path, **distill) -> dict:
    config = copy.deepcopy(DFNDR12M)
    config["results_dir"] = str(tmp_path / "results")
    config["runs"]["dfndr12m"]["distill"].update(distill)
    return config


def _loss(tmp_path: Path, **distill):
    spec = resolve_run(load_config(_config(tmp_path, **distill)), "dfndr12m")
    return build_loss(spec, rank=0, world_size=1)


def _v2_fixture_case() -> dict:
    [case] = [c for c in load_loss_cases(LOSS_FIXTURES) if c["config"]["dist_logit_scale"] == [70.0, 60.0]]
    return case


def test_a_run_with_scales_70_and_60_trains_with_apples_v2_loss(tmp_path):
    loss = _loss(tmp_path)
    assert loss.member_logit_scales == (70.0, 60.0)

    case = _v2_fixture_case()  # computed with Apple's v2 code, same flags
    with torch.no_grad():
        out = loss(**case_inputs(LOSS_FIXTURES, case, torch.float64))
    expected = case["expected"]["float64"]
    assert float(out["distill_loss"]) == pytest.approx(expected["distill_loss"], rel=1e-10)
    assert float(out["contrastive_loss"]) == expected["contrastive_loss"] == 0.0


def test_one_number_is_every_teachers_scale_as_in_v1(tmp_path):
    loss = _loss(tmp_path, logit_scale=100)
    assert loss.member_logit_scales == (100, 100)
    case = _v2_fixture_case()
    with torch.no_grad():
        out = loss(**case_inputs(LOSS_FIXTURES, case, torch.float64))
    assert float(out["distill_loss"]) != pytest.approx(case["expected"]["float64"]["distill_loss"], rel=1e-3), \
        "the scales matter: 100/100 is not 70/60"
    # without average after softmax the one number scales the concatenated teachers' logits
    assert _loss(tmp_path, logit_scale=100, average_after_softmax=False).member_logit_scales == 100


def test_three_teachers_take_three_scales(tmp_path):
    reinforce = json.loads((REPO_ROOT / "configs" / "reinforce" / "datacompdr12m.json").read_text())
    reinforce.update(model_name="ViT-L-14,ViT-L-14,ViT-L-14", pretrained="openai,datacomp_xl_s13b_b90k,dfn2b")
    (tmp_path / "three.json").write_text(json.dumps(reinforce))
    config = _config(tmp_path, logit_scale=[70, 60, 50], teacher_dimension=[768, 768, 768])
    config["reinforcement"]["config"] = str(tmp_path / "three.json")
    spec = resolve_run(load_config(config), "dfndr12m")
    assert build_loss(spec, rank=0, world_size=1).member_logit_scales == (70, 60, 50)


@pytest.mark.parametrize("scales", [[70.0], [70.0, 60.0, 50.0]])
def test_a_list_of_another_length_than_the_teachers_is_refused(tmp_path, scales):
    with pytest.raises(ConfigError, match=rf"config key 'runs\.dfndr12m\.distill\.logit_scale': .*"
                                          rf"{len(scales)} scales for 2 teachers"):
        load_config(_config(tmp_path, logit_scale=scales))


def test_a_list_without_average_after_softmax_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'runs\.dfndr12m\.distill\.logit_scale': .*"
                                          r"average_after_softmax: true"):
        load_config(_config(tmp_path, average_after_softmax=False))


@pytest.mark.parametrize("value", [[70.0, 0], [70.0, -60.0], [], [70.0, "60"], 0, -1, "70", True])
def test_scales_must_be_positive_numbers(tmp_path, value):
    with pytest.raises(ConfigError, match=r"config key 'runs\.dfndr12m\.distill\.logit_scale"):
        load_config(_config(tmp_path, logit_scale=value))


def test_the_checks_hold_for_a_teacher_run_too(tmp_path):
    config = _config(tmp_path)
    config["teachers"] = {"teacher.pt": {**copy.deepcopy(config["runs"]["dfndr12m"]), "data": "teacher"}}
    config["teachers"]["teacher.pt"]["distill"]["logit_scale"] = [70.0]
    with pytest.raises(ConfigError, match=r"'teachers\.teacher\.pt\.distill\.logit_scale'"):
        load_config(config)
