"""benchmarks/gpu_check.py: its --smoke mode runs every part end to end on the CPU and
writes every figure, so the GPU script cannot rot between the runs on a GPU."""
import importlib.util
import json
import math
import subprocess
import sys

import pytest

MODELS = ("toy-student", "toy-teacher")  # the smoke mode's defaults
VIEWS = ("2", "1")
TEACHER_IMAGES = 4
ACCUM_ARMS = {"1x8": (1, 8, 8), "4x8": (4, 32, 8), "1x32": (1, 32, 32)}  # name: (accum_freq, rows, micro-batch)


@pytest.fixture(scope="module")
def gpu_check(repo_root):
    spec = importlib.util.spec_from_file_location("gpu_check", repo_root / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--json", str(out)],
                            cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return json.loads(out.read_text()), result.stdout


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_smoke_run_finishes_every_part_without_errors(smoke):
    payload, stdout = smoke
    assert payload["schema"] == "mobileclip_repro/gpu-check/1" and payload["mode"] == "smoke"
    assert payload["finished"] is True and payload["errors"] == {}
    assert payload["parts"] == ["train", "mfu", "accum", "teachers", "dag"]
    assert payload["environment"]["device"] == "cpu"
    assert "gpu_check (smoke)" in stdout and "GPU-hours to reinforce datacompdr12m" in stdout


def test_training_step_figures(smoke):
    train = smoke[0]["train"]
    assert train["settings"]["batch_size"] == 8 and train["settings"]["precision"] == "amp"
    assert train["settings"]["data"]["embedding_dim"] == 1536  # the paper configs' two 768-D teachers
    assert set(train["runs"]) == set(MODELS)
    for model in MODELS:
        runs = train["runs"][model]
        for data in ("plain", "dr"):
            run = runs[data]
            assert run["model"] == model and run["data"] == data and run["batch_size"] == 8
            for key in ("samples_per_second", "step_seconds", "data_wait_seconds_per_step", "data_loader_share",
                        "compute_only_samples_per_second", "compute_only_step_seconds",
                        "loader_only_samples_per_second"):
                assert positive(run[key]), (model, data, key, run[key])
            assert run["data_loader_share"] < 1
            assert math.isclose(run["samples_per_second"], 8 / run["step_seconds"], rel_tol=1e-9)
            assert run["data_wait_seconds_per_step"] < run["step_seconds"]
            assert run["timed_steps"] == 3 and run["compute_steps"] == 2 and run["warmup_steps"] >= 2
            assert run["skipped_samples"] == {}  # the generated shards are clean: DR join, sha256, replay all pass
            assert run["grad_scaler"] is False  # GradScaler only with amp on CUDA, as in the trainer
        assert positive(runs["dr_over_plain"]) and positive(runs["dr_over_plain_compute_only"])
        online = runs["online"]  # the teachers (random init, the teacher model) inside every step
        assert online["data"] == "online" and online["skipped_samples"] == {} and positive(online["samples_per_second"])
        assert math.isclose(runs["online_over_dr"], runs["dr"]["samples_per_second"] / online["samples_per_second"],
                            rel_tol=1e-9)
        assert positive(runs["online_over_dr_compute_only"])
        assert math.isclose(runs["dr_over_plain"],
                            runs["plain"]["samples_per_second"] / runs["dr"]["samples_per_second"], rel_tol=1e-9)


def test_mfu_figures(smoke):
    payload = smoke[0]
    mfu, runs = payload["mfu"], payload["train"]["runs"][MODELS[0]]
    assert mfu["model"] == MODELS[0]
    assert positive(mfu["peak_tflops"]) and mfu["peak_source"].startswith("measured")  # no datasheet for a CPU
    assert "FlopCounterMode" in mfu["flop_count"]
    for data in ("dr", "plain"):
        assert positive(mfu["flops_per_sample"][data]) and positive(mfu["mfu"][data])
        assert positive(mfu["mfu_compute_only"][data])
        assert mfu["flops_per_sample"][data] == runs[data]["flops_per_sample"]
        assert math.isclose(mfu["mfu"][data], mfu["flops_per_sample"][data] * runs[data]["samples_per_second"]
                            / 1e12 / mfu["peak_tflops"], rel_tol=1e-9)
    # The DR step runs the text encoder over real + synthetic captions: more FLOPs per sample.
    assert mfu["flops_per_sample"]["dr"] > mfu["flops_per_sample"]["plain"]


def test_accumulation_figures(smoke):
    """The first model's DR step through train.train_step: 8 rows, 32 rows in 4 micro-batches of 8, 32 rows."""
    accum = smoke[0]["accum"]
    assert accum["model"] == MODELS[0] and accum["data"] == "dr" and accum["accumulated"] == "4x8"
    assert accum["arms"] == list(ACCUM_ARMS) and set(accum["runs"]) == set(ACCUM_ARMS)
    for name, (accum_freq, rows, micro) in ACCUM_ARMS.items():
        run = accum["runs"][name]
        assert (run["accum_freq"], run["rows_per_step"], run["micro_batch"]) == (accum_freq, rows, micro)
        for key in ("samples_per_second", "step_seconds", "flops_per_sample"):
            assert positive(run[key]), (name, key)
        assert math.isclose(run["samples_per_second"], rows / run["step_seconds"], rel_tol=1e-9)
        assert "max_memory_gib" not in run and "out_of_memory" not in run  # CUDA only
    accumulated = accum["runs"]["4x8"]
    assert set(accum["accumulated_over"]) == {"1x8", "1x32"}
    for name, ratio in accum["accumulated_over"].items():
        other = accum["runs"][name]
        assert math.isclose(ratio["time_per_sample"], other["samples_per_second"] / accumulated["samples_per_second"],
                            rel_tol=1e-9)
        # the caching forward: one more forward per sample, less than twice the forward + backward
        assert 1.2 < ratio["flops_per_sample"] < 1.6
        assert "max_memory" not in ratio


def test_teacher_figures(smoke):
    teachers = smoke[0]["teachers"]
    assert teachers["model"] == "toy-teacher" and teachers["members"] == 2
    assert set(teachers["by_views"]) == set(VIEWS)
    for views, figures in teachers["by_views"].items():
        assert figures["views"] == int(views) and figures["images"] == TEACHER_IMAGES
        assert figures["report"]["written"] == TEACHER_IMAGES and figures["report"]["skipped"] == {}
        for key in ("images_per_second", "teacher_only_images_per_second", "teacher_share"):
            assert positive(figures[key]), (views, key)
        assert figures["teacher_share"] <= 1
        assert figures["teacher_only_images_per_second"] >= figures["images_per_second"]
    hours = teachers["gpu_hours"]
    assert set(hours) == {"datacompdr12m", "datacompdr1b"}
    for name, images, views in (("datacompdr12m", 12_800_000, 2), ("datacompdr1b", 1_280_000_000, 1)):
        assert hours[name]["images"] == images and hours[name]["views_measured"] == views
        assert positive(hours[name]["gpu_hours"])
        assert math.isclose(hours[name]["gpu_hours"],
                            images / teachers["by_views"][str(views)]["images_per_second"] / 3600, rel_tol=1e-9)


def test_dag_plan_with_the_gpu_overlay(smoke):
    dag = smoke[0]["dag"]
    assert dag["mode"] == "dry-run" and dag["ok"] is True and dag["returncode"] == 0
    assert dag["jobs"] > 0 and dag["checks"] and all(dag["checks"].values())
    overlay = dag["overlay"]
    assert overlay["evaluation"] == {"device": "auto"}
    assert {run["gpus_per_node"] for section in ("runs", "teachers") for run in overlay[section].values()} == {1}
    assert set(overlay["runs"]) == {"smoke_dr", "smoke_plain"}
    assert set(overlay["teachers"]) == {"teacher_a.pt", "teacher_b.pt"}


def test_the_table_has_every_figure(smoke):
    table = smoke[0]["table"]
    for row in table:
        assert set(row) == {"part", "figure", "value", "unit", "target", "met"}
        assert positive(row["value"]), row
    parts = [row["part"] for row in table]
    # per model: 3 x (samples/s, loader share, compute only, loader only) for plain, DR and online, and the
    # DR/plain and online/DR ratios, each also compute only
    assert parts.count("1 train") == len(MODELS) * 16
    assert parts.count("2 MFU") == 6 and parts.count("4 teachers") == 2 * len(VIEWS) + 2
    # per arm samples/s and FLOPs (peak memory on CUDA only), the accumulated arm's time and FLOP ratios over the two others
    assert parts.count("3 accum") == 2 * len(ACCUM_ARMS) + 2 * 2
    assert parts.count("5 DAG") == 1
    targets = [row for row in table if row["target"] is not None]
    assert len(targets) == len(MODELS) + 2 + len(VIEWS)
    assert all(isinstance(row["met"], bool) for row in targets)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA GeForce GTX 1080", None)])
def test_peak_by_device_name(gpu_check, name, peak):
    assert gpu_check.peak_tflops_for(name) == peak


def test_bad_part_lists_are_refused(repo_root):
    for parts in ("mfu", "train,fast"):
        result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--parts", parts],
                                cwd=repo_root, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--parts" in result.stderr


def test_dag_output_checks_need_the_tables_and_the_gpu(gpu_check, tmp_path):
    """The checks of a real (CUDA) DAG run, on a made-up results tree."""
    config = {"runs": {"smoke_dr": {}, "smoke_plain": {}}, "teachers": {"teacher_a.pt": {}}}
    report = tmp_path / "report"
    report.mkdir()
    (report / "results.md").write_text("| run |\n")
    (report / "results.csv").write_text("run,epoch\nsmoke_dr,1\nsmoke_plain,1\n")
    for where in ("runs/smoke_dr/manifest.json", "runs/smoke_plain/manifest.json", "teachers/teacher_a/manifest.json",
                  "data/datacompdr/00000000.tar.manifest.json"):
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / where).write_text(json.dumps({"device": "cuda:0"}))
    assert all(gpu_check.check_dag_outputs(tmp_path, config, "cuda").values())
    # a job that ran on the CPU, a run missing from the table, an empty table: each fails a check
    (tmp_path / "teachers/teacher_a/manifest.json").write_text(json.dumps({"device": "cpu"}))
    assert not all(gpu_check.check_dag_outputs(tmp_path, config, "cuda").values())
    assert not all(gpu_check.check_dag_outputs(tmp_path, config, "cpu").values())  # cuda manifests
    (tmp_path / "teachers/teacher_a/manifest.json").write_text(json.dumps({"device": "cuda"}))
    (report / "results.csv").write_text("run,epoch\nsmoke_dr,1\n")
    assert not all(gpu_check.check_dag_outputs(tmp_path, config, "cuda").values())
    (report / "results.csv").write_text("run,epoch\nsmoke_dr,1\nsmoke_plain,1\n")
    (report / "results.md").write_text("")
    assert not all(gpu_check.check_dag_outputs(tmp_path, config, "cuda").values())
