"""The compute ledger (issue 20): FLOPs counted by torch's FlopCounterMode on real steps, checked
against a hand count of the toy student's matrix products; a run's training FLOPs are its steps
times the FLOPs of one step; each job's benchmark TSV and FLOPs meet in one cost table."""
from __future__ import annotations

import json

import pytest
import torch

from mobileclip_repro import config, flops
from mobileclip_repro.report import cost
from mobileclip_repro.train import train as trainer
from mobileclip_repro.models import create_model_and_transforms

BATCH = 4


def toy_student_forward_flops(batch: int, captions: int) -> int:
    """Multiply-adds x 2 of the toy student (model_configs/toy-student.json) on ``batch`` images
    and ``captions`` captions, written out from its shapes."""
    width, mlp, embed = 64, 4 * 64, 64
    patches, patch_pixels = (32 // 8) ** 2, 3 * 8 * 8
    tokens_image, tokens_text, head_width = patches + 1, 16, 32

    def layer(tokens, heads):
        qkv = tokens * width * 3 * width
        attention = 2 * heads * tokens * tokens * head_width  # scores and the weighted sum
        return 2 * (qkv + attention + tokens * width * width + 2 * tokens * width * mlp)

    image = 2 * patches * patch_pixels * width + 2 * layer(tokens_image, width // head_width) + 2 * width * embed
    text = 2 * layer(tokens_text, 2) + 2 * width * embed
    logits = 2 * (2 * batch * captions * embed)  # image @ text.T and text @ image.T
    patch_embedding = 2 * patches * patch_pixels * width  # its backward has no input gradient
    return batch * image + captions * text + logits, batch * patch_embedding


def test_one_toy_step_counts_what_a_hand_count_of_its_matrix_products_gives():
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms("toy-student", output_dict=True)
    spec = {"dr": False, "grad_clip_norm": 1.0, "local_loss": True, "gather_with_grad": True}
    loss_fn = trainer.build_loss(spec, rank=0, world_size=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = [torch.randn(BATCH, 3, 32, 32), torch.randint(0, 49408, (BATCH, 16))]
    _, counted = flops.count_flops(trainer.train_step, trainer.Run(spec, model, optimizer, loss_fn), batch, 0)

    forward, input_gradient_not_needed = toy_student_forward_flops(BATCH, BATCH)
    by_hand = 3 * forward - input_gradient_not_needed  # backward: twice the forward's products
    assert counted == pytest.approx(by_hand, rel=0.05), (counted, by_hand)


def test_per_item_flops_counts_once_and_scales_by_batch():
    layer = torch.nn.Linear(8, 4, bias=False)
    metered = flops.PerItemFlops(layer)
    with torch.no_grad():
        metered(torch.randn(3, 8))
        metered(torch.randn(5, 8))
    assert metered.per_item == 2 * 8 * 4 and metered.items == 8 and metered.total == 8 * 2 * 8 * 4


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, write_reinforced_toy):
    results = write_reinforced_toy(tmp_path_factory.mktemp("cost"), train_samples=32, samples_per_shard=16)
    cfg = config.load_config({"name": "cost", "results_dir": str(results), "evaluation": {"benchmarks": []},
                              "runs": {"r": {"model": "toy-student", "data": "plain", "gpus_per_node": 0,
                                             "global_batch_size": 8, "seen_samples": 32, "num_checkpoints": 2,
                                             "workers": 0, "precision": "fp32", "grad_checkpointing": False,
                                             "warmup_steps": 1}}})
    spec = config.resolve_run(cfg, "r")
    out_dir = results / "runs" / "r" / "seed_0"
    return spec, trainer.train(spec, out_dir, device_name="cpu"), results


def test_a_runs_training_flops_are_its_steps_times_one_steps(finished_run):
    spec, manifest, _ = finished_run
    flops = manifest["flops"]
    assert flops["steps"] == spec["total_steps"] == 4 and flops["seen_samples"] == 32
    assert flops["total"] == flops["per_step"] * 4 and flops["per_seen_sample"] == flops["per_step"] / 8
    forward, no_input_gradient = toy_student_forward_flops(8, 8)
    assert flops["per_step"] == pytest.approx(3 * forward - no_input_gradient, rel=0.05)


def test_the_cost_table_joins_a_jobs_benchmark_tsv_with_its_flops(finished_run, tmp_path):
    spec, manifest, results = finished_run
    benchmarks = tmp_path / "benchmarks"
    (benchmarks / "train").mkdir(parents=True)
    (benchmarks / "train" / "r_seed_0.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "12.5\t0:00:12\t812.3\t900\t800\t805\t1.0\t2.0\t95.0\t11.9\n")
    (benchmarks / "train" / "gone_seed_0.tsv").write_text("s\tcpu_time\n1.0\t1.0\n")  # a run no longer in the config
    run_manifests = [results / "runs" / "r" / "seed_0" / "manifest.json"]
    table = cost.cost_table([benchmarks / "train" / "r_seed_0.tsv"], benchmarks, cost.train_ledger(run_manifests))
    [row] = table.to_dict("records")
    assert (row["stage"], row["rule"], row["run"], row["seed"]) == ("train", "train", "r", 0)
    assert (row["wall_s"], row["cpu_s"], row["max_rss_mb"]) == (12.5, 11.9, 812.3)
    assert row["flops"] == manifest["flops"]["total"] and row["samples"] == 32


def test_a_reinforcement_costs_what_its_shards_cost_even_when_a_rerun_kept_them(tmp_path):
    """A reinforce job rerun over finished shards counts 0 FLOPs of its own; the reinforcement's one-time
    cost is still what its shards cost (``totals.shards_flops``), and a manifest from before shards
    recorded it falls back to its job's FLOPs."""
    benchmarks = tmp_path / "benchmarks"
    (benchmarks / "reinforce").mkdir(parents=True)
    tsvs = []
    for name in ("default_group_00000", "default_group_00001"):
        tsvs.append(benchmarks / "reinforce" / f"{name}.tsv")
        tsvs[-1].write_text("s\tcpu_time\n2.0\t1.5\n")
    manifests = tmp_path / "data" / "reinforce" / "default"
    manifests.mkdir(parents=True)
    (manifests / "group_00000.json").write_text(json.dumps(
        {"totals": {"written": 8, "shards_reinforced": 0, "flops": {"total": 0}, "shards_flops": 5_000}}))
    (manifests / "group_00001.json").write_text(json.dumps(
        {"totals": {"written": 8, "shards_reinforced": 2, "flops": {"total": 700}}}))  # older: no shards_flops
    listed = sorted(manifests.glob("*.json"))
    table = cost.cost_table(tsvs, benchmarks, cost.reinforce_ledger(listed))
    assert sorted(table["flops"]) == [0, 700]  # each job's own work, as its row of cost.csv says
    assert cost.reinforcement_flops(table, listed) == {"default": 5_000 + 700}


def test_the_projection_counts_the_students_and_teachers_shapes_on_the_meta_device(repo_root):
    projection = flops.paper_projection(config.load_config(repo_root / "configs" / "toy.yaml"))
    [run] = [run for name, run in projection["runs"].items() if name == "toy_dr"]
    per_sample = run["flops_per_sample"]
    assert per_sample["plain"] < per_sample["DR"] < per_sample["online"], \
        "DR adds a caption forward; online adds the teachers"
    forward, no_input_gradient = toy_student_forward_flops(1, 1)
    assert per_sample["plain"] == pytest.approx(3 * forward - no_input_gradient, rel=0.05)
    assert projection["reinforcement_flops_per_image"]["captioner"] == 0  # the toy's oracle captions
    assert "toy_dr (toy-student): training GFLOPs per seen sample" in flops.describe_projection(projection)


def test_the_paper_student_costs_what_vit_b_16_costs(repo_root, monkeypatch):
    """ViT-B/16 at 224 px: 17.6 GMACs an image (35.1 GFLOPs) and 3.0 GMACs a 77-token caption."""
    monkeypatch.setattr(flops, "CAPTION_TOKENS", 3)  # the captioner's loop is not what this checks
    projection = flops.paper_projection(config.load_config(repo_root / "configs" / "paper" / "datacompdr12m.yaml"))
    run = projection["runs"]["datacompdr12m_s30m"]
    assert run["flops_per_sample"]["plain"] == pytest.approx(3 * (35.13e9 + 5.96e9), rel=0.01)
    assert run["ratios"]["DR/plain"] == pytest.approx(1.145, abs=0.01)  # text: ~15% of a plain step
    teachers = run["flops_per_sample"]["online"] - run["flops_per_sample"]["DR"]
    assert teachers == pytest.approx(2 * (162.0e9 + 2 * 13.3e9), rel=0.01)  # two ViT-L-14, image + 2 captions
