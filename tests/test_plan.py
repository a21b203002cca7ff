"""`plan` (issue 32): a config sized before anything runs. Its numbers are checked against hand
counts for a three-shard hub config and the toy world, the paper's seed configs give their
headline sizes, and a job asking for more time than the cluster allows is flagged.

Parameter counts are handed in (``count_parameters``) and the GPU-hour projection is a stub,
so these tests import no torch, except the last, which runs the real thing on the toy config."""
from __future__ import annotations

import json
import math
import re

import pytest

from mobileclip_repro import cli, config, plan

DATACOMP_12M_PER_SHARD = 12_784_978 / 1_024  # mlfoundations/DataComp-12M's card: samples / shards
VIT_B_16_PARAMETERS = 149_620_737  # open_clip ViT-B-16, counted on the meta device (last test)


def parameters_of(counts: dict[str, int]):
    return lambda model: counts[model]


def three_shard_config(tmp_path, **run_overrides) -> dict:
    """DataComp-12M's first three shards in fetch groups of two, Apple's DataCompDR-12M for one
    DR run of two seeds on one node of eight GPUs, two checkpoints each, one benchmark."""
    run = {"model": "ViT-B-16", "data": "dr", "nodes": 1, "gpus_per_node": 8, "global_batch_size": 8,
           "seen_samples": 80, "num_checkpoints": 2, "warmup_steps": 0, "seeds": [0, 1],
           "slurm": {"runtime": 600}, **run_overrides}
    return config.load_config({
        "name": "three", "results_dir": str(tmp_path / "results"),
        "data": {"source": "hub", "hub": {"datacomp_repo": "mlfoundations/DataComp-12M",
                                          "dr_repo": "apple/DataCompDR-12M",
                                          "shards": "{00000000..00000002}", "group_size": 2}},
        "reinforcement": {"generate": False, "config": "configs/reinforce/datacompdr12m.json"},
        "runs": {"dr": run},
        "evaluation": {"benchmarks": [{"name": "in1k", "dataset": "imagenet1k", "task": "zeroshot_classification",
                                       "root": str(tmp_path / "imagenet")}]}})


def test_a_three_shard_hub_config_plans_what_a_hand_count_gives(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # the reinforcement JSON's path is relative to the checkout
    result = plan.plan(three_shard_config(tmp_path), cluster_max_runtime_h=2, gpu_hours=False,
                       count_parameters=parameters_of({"ViT-B-16": 1_000_000}))

    samples = 3 * DATACOMP_12M_PER_SHARD
    assert result["data"]["shards"] == 3 and result["data"]["samples"] == round(samples) == 37_456

    # One DataCompDR-12M sample in its tar: a 512-byte header per member, contents in 512-byte blocks.
    npz = 512 + 512 * math.ceil(((30 + 1 + 5) * 1536 * 4 + 520) / 512)  # 30 augmentations, 1 + 5 captions
    paug = 512 + 512 * math.ceil(30 * 45 / 512)
    syn = 512 + 512  # 5 captions x ~60 bytes: one block
    url_and_json = 2 * (512 + 512)
    dr_sample = npz + paug + syn + url_and_json
    assert dr_sample == 222_720 + 2_048 + 1_024 + 2_048 == 227_840
    download = {row["item"]: row for row in result["download"]}
    assert download["DataCompDR tars"]["units"] == 3
    assert download["DataCompDR tars"]["bytes"] == pytest.approx(3 * DATACOMP_12M_PER_SHARD * 227_840)
    assert download["DataComp metadata tars"]["bytes"] == pytest.approx(samples * 3 * 1_024)
    image_bytes = 37_456 * 0.9e12 / 12.8e6
    assert download["images (by URL, at most)"]["bytes"] == pytest.approx(image_bytes)
    assert result["download_bytes"] == pytest.approx(samples * (227_840 + 3_072) + image_bytes, rel=1e-9)

    disk = {(row["stage"], row["item"]): row["bytes"] for row in result["disk"]}
    assert disk[("data", "DataComp shards with images")] == pytest.approx(image_bytes)
    assert disk[("data", "DataCompDR tars")] == pytest.approx(samples * 227_840)
    assert not [stage for stage, _ in disk if stage == "reinforcement"], "a published reinforcement is fetched"
    # 1M parameters x (fp32 weights + AdamW's two moments) x 2 checkpoints x 2 seeds
    assert disk[("checkpoints", "run dr (ViT-B-16, 2 seed(s))")] == 1_000_000 * 12 * 2 * 2
    # (2 seeds x 2 checkpoints) x 1 benchmark + the teacher ensemble's record, 4 kB each
    assert disk[("eval", "evaluation records")] == 5 * 4_000

    jobs = {row["rule"]: row for row in result["jobs"]}
    assert [row["rule"] for row in result["jobs"]] == ["fetch", "train", "train", "evaluate", "evaluate_teachers",
                                                      "report"]
    assert jobs["fetch"]["count"] == 2 and jobs["fetch"]["runtime_min"] == 12 * 60  # groups of 2: 2 jobs
    assert jobs["evaluate"]["runtime_min"] == 30 + 10 * 4
    assert [(row["job"], row["nodes"], row["gpus_per_node"], row["runtime_min"]) for row in result["jobs"]
            if row["rule"] == "train"] == [("dr seed 0", 1, 8, 600), ("dr seed 1", 1, 8, 600)]
    assert result["over_limit"] == ["fetch group_00000..group_00001", "train dr seed 0", "train dr seed 1"]


def test_the_toy_world_plans_what_a_hand_count_gives(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    counts = {"toy-student": 1_000, "toy-teacher": 5_000}
    result = plan.plan(config.load_config(repo_root / "configs" / "toy.yaml"), gpu_hours=False,
                       count_parameters=parameters_of(counts))

    # configs/toy.yaml: 4,000 training samples in shards of 1,000; 12,000 teacher samples; two
    # 500-sample benchmark sets; nothing to download
    assert (result["data"]["shards"], result["data"]["samples"]) == (4, 4_000)
    assert result["download"] == [] and result["download_bytes"] == 0

    disk = {(row["stage"], row["item"]): row["bytes"] for row in result["disk"]}
    assert disk[("data", "toy world: training, teacher and benchmark shards")] == (4_000 + 12_000 + 2 * 500) * 9_170
    # configs/reinforce/toy.json: 5 augmentations; 5 captions; two 64-d teachers
    toy_dr_sample = (512 + 512 * math.ceil(((5 + 1 + 5) * 128 * 4 + 520) / 512)) + 4 * (512 + 512)
    assert toy_dr_sample == 11_264  # a reinforced toy shard measures 11,274 bytes a sample with its end record
    assert disk[("reinforcement", "DataCompDR shards written (default)")] == 4_000 * 11_264
    # teachers: one checkpoint (12 B a parameter) and the exported weights (4 B) each
    assert disk[("checkpoints", "teacher teacher_a.pt (toy-teacher)")] == 5_000 * (12 + 4)
    # students: 6 checkpoints x 3 seeds, for each of toy_dr and toy_plain
    assert disk[("checkpoints", "run toy_dr (toy-student, 3 seed(s))")] == 1_000 * 12 * 6 * 3
    assert disk[("eval", "evaluation records")] == (2 * 3 * 6 * 2 + 2) * 4_000

    jobs = [(row["rule"], row["count"], row["runtime_min"]) for row in result["jobs"]]
    # CPU-trained teachers and students: 2 h each (launch.run_limits)
    assert jobs == [("toy_data", 1, 60), ("train_teacher", 1, 120), ("train_teacher", 1, 120), ("reinforce", 1, 60),
                    *[("train", 1, 2 * 60)] * 6, ("evaluate", 1, 30 + 10 * 18), ("evaluate", 1, 30 + 10 * 18),
                    ("evaluate_teachers", 1, 120), ("report", 1, 60)]
    assert all(row["over_limit"] is None for row in result["jobs"]), "no limit given, nothing flagged"
    # the toy world asks a cluster for no GPU, at most 32 GB and 4 h a job
    assert all(row["gpus_per_node"] == 0 and row["mem_mb_per_node"] <= 32_000 and row["runtime_min"] <= 4 * 60
               for row in result["jobs"]), result["jobs"]


@pytest.mark.parametrize("name, shards, groups, dr_tar_tb, total_tb", [
    ("datacompdr1b", 65_536, 64, (130, 136), (220, 227)),  # 2.03 GB x 65,536; + 90 TB of images, 0.3 TB parquet
    ("datacompdr12m", 1_024, 1, (2.8, 3.0), (3.7, 3.9)),
    ("datacomp12m", 1_024, 1, (2.8, 3.0), (3.7, 3.9)),  # fetch takes the DataCompDR tars here too
])
def test_the_seed_configs_plan_their_headline_sizes(repo_root, monkeypatch, name, shards, groups, dr_tar_tb,
                                                    total_tb):
    monkeypatch.chdir(repo_root)
    cfg = config.load_config(repo_root / "configs" / "paper" / f"{name}.yaml")
    result = plan.plan(cfg, cluster_max_runtime_h=12, gpu_hours=False,
                       count_parameters=parameters_of({"ViT-B-16": VIT_B_16_PARAMETERS}))
    download = {row["item"]: row for row in result["download"]}
    assert result["data"]["shards"] == download["DataCompDR tars"]["units"] == shards
    assert result["data"]["groups"] == groups
    assert dr_tar_tb[0] < download["DataCompDR tars"]["bytes"] / 1e12 < dr_tar_tb[1]
    assert total_tb[0] < result["download_bytes"] / 1e12 < total_tb[1]
    text = plan.describe_plan(result)
    assert f"{shards:,} shards" in text and "OVER" in text  # the 24 h train job, against 12 h


def test_datacompdr1b_needs_130_tb_of_reinforcement_and_scans_the_parquet_set_per_group(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    result = plan.plan(config.load_config(repo_root / "configs" / "paper" / "datacompdr1b.yaml"), gpu_hours=False,
                       count_parameters=parameters_of({"ViT-B-16": VIT_B_16_PARAMETERS}))
    assert result["data"]["samples"] == 1_280_000_000
    download = {row["item"]: row for row in result["download"]}
    assert download["DataCompDR tars"]["bytes"] == 65_536 * 2.03e9
    assert download["DataComp parquet metadata (whole set, once)"]["bytes"] == 300e9
    assert any("each of the 64 fetch groups reads the whole mlfoundations/datacomp_1b parquet set" in note
               for note in result["notes"])
    # DataCompDR-1B's layout (10 augmentations) reproduces the listed tar size at 19,531 samples a shard
    assert plan.dr_sample_bytes(10, 5, 1536) * 1.28e9 / 65_536 == pytest.approx(2.03e9, rel=0.01)
    checkpoints = {row["item"]: row["bytes"] for row in result["disk"] if row["stage"] == "checkpoints"}
    assert checkpoints["run datacompdr1b_s13b (ViT-B-16, 1 seed(s))"] == VIT_B_16_PARAMETERS * 12 * 100


def test_the_baseline_is_told_it_downloads_reinforcement_it_never_reads(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    result = plan.plan(config.load_config(repo_root / "configs" / "paper" / "datacomp12m.yaml"), gpu_hours=False,
                       count_parameters=parameters_of({"ViT-B-16": VIT_B_16_PARAMETERS}))
    assert any("no run of this config reads them" in note for note in result["notes"])


def test_a_job_asking_for_more_than_the_cluster_limit_is_flagged(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    counts = parameters_of({"ViT-B-16": 1})
    cfg = three_shard_config(tmp_path, slurm={"runtime": 11 * 60}, resume="none")
    at_limit = plan.plan(cfg, cluster_max_runtime_h=12, gpu_hours=False, count_parameters=counts)
    assert at_limit["over_limit"] == [], "12 h asked of a 12 h limit fits"
    under = plan.plan(cfg, cluster_max_runtime_h=11.5, gpu_hours=False, count_parameters=counts)
    assert under["over_limit"] == ["fetch group_00000..group_00001"]
    tight = plan.plan(cfg, cluster_max_runtime_h=10, gpu_hours=False, count_parameters=counts)
    assert tight["over_limit"] == ["fetch group_00000..group_00001", "train dr seed 0", "train dr seed 1"]
    train_note = next(note for note in tight["notes"] if note.startswith("train dr seed 0"))
    assert "11 h, over the cluster's 10 h limit" in train_note and "set resume: latest" in train_note
    table = plan.describe_plan(tight)
    assert len(re.findall(r"\bOVER\b", table)) == 3


def test_gpu_hours_are_the_cost_projections_per_seed_with_the_wall_time_on_the_jobs_gpus(tmp_path, repo_root,
                                                                                          monkeypatch):
    monkeypatch.chdir(repo_root)
    projection = {"mfu": 0.4, "reinforcement_flops_per_image": {"total": 1e12},
                  "runs": {"dr": {"run_gpu_hours": {"A100": {"plain": 40.0, "DR": 80.0, "online": 800.0},
                                                    "H100/H200": {"plain": 16.0, "DR": 32.0, "online": 320.0}}}}}
    result = plan.plan(three_shard_config(tmp_path), projection=projection,
                       count_parameters=parameters_of({"ViT-B-16": 1}))
    rows = result["gpu_hours"]["rows"]
    assert [(row["what"], row["arm"], row["A100 GPU-h"], row["A100 wall h"]) for row in rows] == [
        ("train dr seed 0", "DR", 80.0, 10.0), ("train dr seed 1", "DR", 80.0, 10.0)]  # 8 GPUs each
    assert result["gpu_hours"]["total"] == {"A100": 160.0, "H100/H200": 64.0}
    assert all(row["fits_requested"] for row in rows), "10 h on 8 GPUs fits the 10 h asked for"
    slow = plan.plan(three_shard_config(tmp_path, slurm={"runtime": 300}), projection=projection,
                     count_parameters=parameters_of({"ViT-B-16": 1}))
    assert any(note.startswith("train dr seed 0: projected 10.0 h on its 8 GPU(s), more than the 5 h")
               for note in slow["notes"])


def test_the_rules_size_their_jobs_with_the_functions_plan_uses(repo_root):
    """Every resource a rule sets comes from launch (the functions plan.job_rows calls), so the two
    cannot drift; a rule that sets none takes the profile's defaults, as plan does."""
    rules = {}
    for path in (repo_root / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", path.read_text()):
            match = re.match(r"rule (\w+):", block)
            if match:
                rules[match.group(1)] = block

    def resource(rule, name):
        found = re.search(rf"^\s+{name}=(.+),$", rules[rule], re.MULTILINE)
        return found and found.group(1).strip()

    for name in ("runtime", "mem_mb"):
        assert resource("fetch", name) == f'FETCH_RESOURCES["{name}"]'
        assert resource("reinforce", name) == f'reinforce_resource("{name}")'
        assert resource("evaluate", name) == f'evaluate_resource("{name}")'
        assert resource("evaluate_teachers", name) == f'evaluate_teachers_resource("{name}")'
        assert resource("train", name) == f'train_resource("{name}")'  # launch.slurm_resources
        assert resource("train_teacher", name) == f'teacher_resource("{name}")'
    for rule in ("toy_data", "local_data", "select_subsets", "fetch_benchmark", "report"):
        assert resource(rule, "runtime") is None, f"{rule} now sets its own runtime: size it in launch, plan it"


def test_the_cli_prints_the_plan_as_json(repo_root, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(plan, "counted_parameters", parameters_of({"toy-student": 1_000, "toy-teacher": 5_000}))
    assert cli.main(["plan", "configs/toy.yaml", "--json", "--no-gpu-hours", "--cluster-max-runtime", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"] == "toy" and printed["data"]["shards"] == 4 and printed["gpu_hours"] is None
    assert "evaluate toy_dr" in printed["over_limit"] and "toy_data all" not in printed["over_limit"]


def test_the_real_projection_and_parameter_count_fill_the_toy_plan(repo_root, monkeypatch):
    """The one test that imports torch: flops.paper_projection and the meta-device parameter count."""
    monkeypatch.chdir(repo_root)
    from mobileclip_repro import flops

    projections = []
    real_projection = flops.paper_projection
    monkeypatch.setattr(flops, "paper_projection", lambda *args: projections.append(real_projection(*args)) or
                        projections[-1])  # seen, not replaced: the plan's own call is the one checked
    result = plan.plan(config.load_config(repo_root / "configs" / "toy.yaml"))
    [projection] = projections
    [row] = [row for row in result["gpu_hours"]["rows"] if row["what"] == "train toy_dr seed 0"]
    assert row["A100 GPU-h"] == projection["runs"]["toy_dr"]["run_gpu_hours"]["A100"]["DR"]
    assert plan.counted_parameters("ViT-B-16") == VIT_B_16_PARAMETERS
    [reinforce] = [row for row in result["gpu_hours"]["rows"] if row["arm"] == "reinforcement"]
    per_image = projection["reinforcement_flops_per_image"]["total"]
    assert reinforce["A100 GPU-h"] == pytest.approx(4_000 * per_image / (312e12 * 0.4) / 3600)
