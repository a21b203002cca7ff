"""The ablation ladder (paper Table 2): the run knobs each row needs (synthetic captions without
distillation, one member of the stored ensemble, named reinforcements), the two configs that
express the ladder, and the report's table and chart."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mobileclip_repro import models
from mobileclip_repro.report.ablation import ablation_table, describe_setting, display_ablation, load_paper_ablation
from mobileclip_repro.config import ConfigError, load_config, resolve_run
from mobileclip_repro.train.loss import DRClipLoss
from mobileclip_repro.cli import main
from mobileclip_repro.train.train import _forward, build_loss, distilled_members, teacher_columns

ROWS = ["plain_clip", "synthetic_captions", "distillation_only", "strong_augmentation", "teacher_ensemble"]


# -- the knobs ---------------------------------------------------------------------------------

def test_one_member_is_distilled_from_through_its_slice_of_the_stored_embeddings():
    distill = {"teacher_dimension": [768, 512], "teachers": [1]}
    assert distilled_members(distill) == [1]
    assert teacher_columns(distill) == list(range(768, 1280))
    assert teacher_columns({"teacher_dimension": [768, 512], "teachers": "all"}) is None


def dr_spec(**distill):
    return {"dr": True, "local_loss": False, "gather_with_grad": False,
            "distill": {"loss_weights": [0.0, 1.0], "teacher_dimension": [64, 64], "logit_scale": [70.0, 60.0],
                        "average_after_softmax": True, "synthetic_captions": True, "teachers": "all", **distill}}


def test_the_loss_of_one_member_keeps_that_members_width_and_logit_scale():
    loss = build_loss(dr_spec(teachers=[1]), rank=0, world_size=1)
    assert loss.teacher_dimension == (64,) and loss.member_logit_scales == (60.0,)
    assert build_loss(dr_spec(), rank=0, world_size=1).teacher_dimension == (64, 64)


@pytest.fixture(scope="module")
def student_and_batch():
    torch.manual_seed(0)
    model = models.create_model_and_transforms("toy-student", output_dict=True)[0].eval()
    generator = torch.Generator().manual_seed(1)
    rows = 6
    images = torch.randn(rows, 3, 32, 32, generator=generator)
    context = model.context_length
    texts = torch.randint(1, 50, (rows, context), generator=generator)
    syn_texts = torch.randint(1, 50, (rows, context), generator=generator)
    emb = [torch.nn.functional.normalize(torch.randn(rows, 128, generator=generator), dim=-1) for _ in range(3)]
    return model, (images, texts, emb[0], emb[1], syn_texts, emb[2])


def test_without_synthetic_captions_the_dr_loss_sees_the_ground_truth_caption_only(student_and_batch):
    model, batch = student_and_batch
    spec = dr_spec(loss_weights=[1.0, 0.0], synthetic_captions=False)
    loss_fn = build_loss(spec, 0, 1)
    with torch.no_grad():
        losses = _forward(model, model, loss_fn, batch, spec)
        images, texts, image_emb, text_emb, _, _ = batch
        out = model(images, texts)
        expected = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], image_emb, text_emb)
        with_syn = _forward(model, model, loss_fn, batch, dr_spec(loss_weights=[1.0, 0.0]))
    assert losses["contrastive_loss"] == expected["contrastive_loss"]
    assert losses["distill_loss"] == 0  # weights 1 / 0: "+ synthetic captions" is CLIP without distillation
    assert with_syn["contrastive_loss"] != losses["contrastive_loss"]  # the synthetic term is really gone


def test_distilling_from_one_member_equals_a_one_teacher_loss_on_its_columns(student_and_batch):
    model, batch = student_and_batch
    spec = dr_spec(teachers=[1])
    with torch.no_grad():
        losses = _forward(model, model, build_loss(spec, 0, 1), batch, spec)
        images, texts, image_emb, text_emb, syn_texts, syn_emb = batch
        out = model(images, torch.cat([texts, syn_texts]))
        text_features, syn_features = out["text_features"].chunk(2)
        one_teacher = DRClipLoss(loss_weights=[0.0, 1.0], teacher_dimension=[64], dist_logit_scale=[60.0])
        expected = one_teacher(out["image_features"], text_features, out["logit_scale"], image_emb[:, 64:],
                               text_emb[:, 64:], syn_features, syn_emb[:, 64:])
    assert torch.equal(losses["distill_loss"], expected["distill_loss"])


# -- config ------------------------------------------------------------------------------------

@pytest.fixture
def toy_ablation(repo_root):
    import yaml
    return yaml.safe_load((repo_root / "configs" / "toy-ablation.yaml").read_text())


def test_a_run_trains_on_the_named_reinforcement_in_its_own_folder(toy_ablation, tmp_path):
    config = load_config({**toy_ablation, "results_dir": str(tmp_path)})
    weak = resolve_run(config, "abl_synthetic_captions", seed=0)
    strong = resolve_run(config, "abl_strong_augmentation", seed=0)
    assert (weak["reinforcement"], weak["reinforcement_config"]) == ("weak", "configs/reinforce/toy-weak.json")
    assert weak["dr_dir"] == f"{config['data']['dr_dir']}_weak" and strong["dr_dir"] == config["data"]["dr_dir"]
    assert strong["reinforcement_config"] == "configs/reinforce/toy.json"


@pytest.mark.parametrize("change, key", [
    (lambda c: c["runs"]["abl_synthetic_captions"].update(reinforcement="waek"),
     "runs.abl_synthetic_captions.reinforcement"),
    (lambda c: c["reinforcement"]["variants"]["weak"].update(num_syn_caption=3), "reinforcement.variants.weak"),
    (lambda c: c["reinforcement"]["variants"]["weak"].update(seed="zero"), "reinforcement.variants.weak.seed"),
    (lambda c: c["runs"]["abl_distillation_only"]["distill"].update(teachers=[2]),
     "runs.abl_distillation_only.distill.teachers"),
    (lambda c: c["report"]["ablation"]["rows"][1].update(run="abl_nothing"), "report.ablation.rows.1.run"),
    (lambda c: c["report"]["ablation"]["benchmarks"].update(flickr30k="toy_flickr"),
     "report.ablation.benchmarks.flickr30k"),
])
def test_a_wrong_ablation_setting_is_an_error_naming_the_key(toy_ablation, tmp_path, change, key):
    config = copy.deepcopy(toy_ablation)
    change(config)
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_config({**config, "results_dir": str(tmp_path)})


@pytest.mark.parametrize("name", ["toy-ablation.yaml", "paper/ablation-12m.yaml"])
def test_each_row_is_the_setting_its_label_says(repo_root, tmp_path, name):
    """Flag by flag: the five rows differ only in data, reinforcement and loss, as Table 2's ladder."""
    config = load_config(repo_root / "configs" / name)
    rows = config["report"]["ablation"]["rows"]
    assert [row["paper_row"] for row in rows] == ROWS
    spec = {row["paper_row"]: resolve_run(config, row["run"], seed=0 if name.startswith("toy") else None)
            for row in rows}
    plain, synthetic, distill_only, strong, ensemble = (spec[row] for row in ROWS)
    assert not plain["dr"] and all(spec[row]["dr"] for row in ROWS[1:])
    # + synthetic captions: CLIP loss on real and synthetic captions, no distillation, weak augmentation
    assert synthetic["distill"]["loss_weights"] == [1.0, 0.0] and synthetic["distill"]["synthetic_captions"]
    assert synthetic["reinforcement"] == distill_only["reinforcement"] == "weak"
    weak = json.loads((repo_root / synthetic["reinforcement_config"]).read_text())["reinforce"]["image_augmentation"]
    assert weak["rand_augment"] == {"enable": False} and weak["random_resized_crop"]["scale"] == [0.9, 1.0]
    # distillation only: one teacher, weak augmentation, synthetic captions kept
    assert distill_only["distill"]["loss_weights"] == [0.0, 1.0] and distill_only["distill"]["teachers"] == [0]
    assert distill_only["distill"]["synthetic_captions"]
    # + strong augmentation: the same loss on the stored RandAugment views
    assert strong["reinforcement"] == "default" and strong["distill"] == distill_only["distill"]
    strong_json = json.loads((repo_root / strong["reinforcement_config"]).read_text())["reinforce"]
    assert strong_json["image_augmentation"]["rand_augment"]["enable"] is True
    # + teacher ensemble: every member
    assert ensemble["distill"]["teachers"] == "all" and ensemble["reinforcement"] == "default"
    assert {key: value for key, value in ensemble["distill"].items() if key != "teachers"} == \
        {key: value for key, value in strong["distill"].items() if key != "teachers"}
    # and nothing else differs between rows: same model, budget, schedule, hyperparameters
    shared = ("model", "global_batch_size", "seen_samples", "lr", "warmup_steps", "weight_decay", "precision",
              "nodes", "gpus_per_node", "num_checkpoints")
    assert len({tuple(s[key] for key in shared) for s in spec.values()}) == 1


def test_the_paper_ablation_generates_its_weak_reinforcement_with_the_paper_teachers(repo_root):
    config = load_config(repo_root / "configs" / "paper" / "ablation-12m.yaml")
    weak = config["reinforcement"]["variants"]["weak"]
    assert weak["generate"] is True and config["reinforcement"]["generate"] is False
    teachers = json.loads((repo_root / weak["config"]).read_text())
    assert (teachers["model_name"], teachers["pretrained"]) == ("ViT-L-14,ViT-L-14", "openai,datacomp_xl_s13b_b90k")
    assert teachers["num_samples"] == 30


# -- report ------------------------------------------------------------------------------------

def record(run, seed, seen, benchmark, value, spec):
    task = "zeroshot_classification" if benchmark == "toy_zeroshot" else "zeroshot_retrieval"
    metric = "acc1" if task == "zeroshot_classification" else "mean_recall@1"
    return {"schema": "mobileclip_repro/eval-record/1", "run": run, "seed": seed, "epoch": 1, "seen_samples": seen,
            "dr": spec.get("dr", False), "model": "toy-student", "benchmark": benchmark, "dataset": f"wds/{benchmark}",
            "task": task, "metrics": {metric: value}, "main_metric": value, "main_metric_name": metric,
            "num_samples": 100, "run_spec": spec, "role": "student"}


LADDER = {  # run -> (final zero-shot per seed, final retrieval per seed)
    "r0": ((0.10, 0.12), (0.20, 0.22)), "r1": ((0.15, 0.17), (0.30, 0.28)), "r2": ((0.20, 0.20), (0.25, 0.27)),
    "r3": ((0.30, 0.26), (0.35, 0.33)), "r4": ((0.33, 0.35), (0.40, 0.40)),
}
SETTINGS = {"benchmarks": {"imagenet_val": "toy_zeroshot", "flickr30k": "toy_retrieval"},
            "rows": [{"run": run, "label": f"row {n}", "paper_row": ROWS[n]} for n, run in enumerate(LADDER)]}


def ladder_records():
    records = []
    for n, (run, (zeroshot, retrieval)) in enumerate(LADDER.items()):
        spec = {"dr": n > 0, "reinforcement": "weak" if n in (1, 2) else "default",
                "distill": {"loss_weights": [1.0, 0.0] if n == 1 else [0.0, 1.0], "teacher_dimension": [64, 64],
                            "teachers": [0] if n in (2, 3) else "all", "synthetic_captions": True}}
        for seed in (0, 1):
            for benchmark, values in (("toy_zeroshot", zeroshot), ("toy_retrieval", retrieval)):
                records.append(record(run, seed, 1000, benchmark, values[seed] / 2, spec))  # an earlier checkpoint
                records.append(record(run, seed, 4000, benchmark, values[seed], spec))
    return records


def test_the_table_gives_each_rows_final_mean_spread_and_step_beside_the_papers():
    table = ablation_table(ladder_records(), SETTINGS).set_index("run")
    assert table.loc["r0", "toy_zeroshot"] == pytest.approx(11.0)  # mean of the last checkpoint over seeds
    assert (table.loc["r3", "toy_zeroshot min"], table.loc["r3", "toy_zeroshot max"]) == (pytest.approx(26), pytest.approx(30))
    assert np.isnan(table.loc["r0", "toy_zeroshot Δ"])
    assert table.loc["r2", "toy_retrieval Δ"] == pytest.approx(26.0 - 29.0)  # a step down, as the paper's Flickr
    paper = load_paper_ablation()["rows"]
    assert table.loc["r1", "paper imagenet_val"] == paper["synthetic_captions"]["imagenet_val"] == 51.9
    assert table.loc["r4", "paper flickr30k Δ"] == pytest.approx(72.0 - 70.5)
    assert (table["seeds"] == 2).all()


def test_the_setting_column_says_what_each_row_trains_with():
    table = ablation_table(ladder_records(), SETTINGS)
    assert table.loc[0, "setting"].startswith("alt-text only")
    assert "CLIP 1 / distillation 0" in table.loc[1, "setting"] and "'weak'" in table.loc[1, "setting"]
    assert "teacher 1 of 2" in table.loc[2, "setting"] and "teachers: all 2" in table.loc[4, "setting"]
    assert describe_setting({"dr": True, "distill": {"loss_weights": [0, 1], "teacher_dimension": [8, 8],
                                                     "synthetic_captions": False}}).count("no synthetic") == 1


def test_the_report_writes_the_ablation_table_and_chart(tmp_path):
    directory = tmp_path / "evaluations"
    directory.mkdir()
    for n, item in enumerate(ladder_records()):
        (directory / f"{n}.json").write_text(json.dumps(item))
    out = tmp_path / "report"
    assert main(["report", "--records-dir", str(directory), "--out-dir", str(out),
                 "--ablation-json", json.dumps(SETTINGS)]) == 0
    table = pd.read_csv(out / "ablation.csv")
    assert list(table["run"]) == list(LADDER)
    for name in ("ablation.png", "ablation.pdf"):
        assert (out / name).stat().st_size > 0
    markdown = (out / "ablation.md").read_text()
    assert "| row 2 |" in markdown and "+5.0" in markdown  # r1's zero-shot step: 11.0 -> 16.0
    assert "Ablation ladder" in (out / "results.md").read_text() and "Ablation ladder" in (out / "report.html").read_text()
    shown = display_ablation(ablation_table(ladder_records(), SETTINGS), SETTINGS["benchmarks"])
    assert shown.loc[3, "toy_zeroshot"] == "28.0 (26.0–30.0)"
