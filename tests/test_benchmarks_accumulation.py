"""benchmarks/accumulation.py: its memory count (saved tensors on the meta device) and its step timing
run on small shapes, so the benchmark cannot rot between runs."""
import importlib.util
import os

import pytest
import torch


@pytest.fixture(scope="module")
def bench(repo_root):
    threads = os.environ.get("OMP_NUM_THREADS")
    spec = importlib.util.spec_from_file_location("accumulation_benchmark", repo_root / "benchmarks" / "accumulation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # sets OMP_NUM_THREADS if unset: put back as it was
    if threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    return module


def test_saved_tensors_counts_each_storage_once_and_leaves_the_parameters_out(bench):
    layer = torch.nn.Linear(8, 16, device="meta")
    saved = bench.SavedTensors({p.untyped_storage()._cdata for p in layer.parameters()})
    x = torch.empty(4, 8, device="meta", requires_grad=True)
    with saved.hooks():
        hidden = layer(x).relu()
        (hidden * hidden).sum()  # saves the relu's output twice more
    assert saved.bytes == 4 * 8 * 4 + 4 * 16 * 4  # the linear's input, the relu's output; not the weight


@pytest.fixture(scope="module")
def meta_student(bench):
    from mobileclip_repro import models

    model = models.create_model_and_transforms("toy-student", device="meta", output_dict=True)[0]
    model = model.to(torch.bfloat16).train()
    return model, {p.untyped_storage()._cdata for p in model.parameters()}


def test_micro_batches_shrink_the_towers_activations_not_the_loss(bench, meta_student):
    model, parameters = meta_student
    accumulated = bench.paper_spec("configs/paper/datacompdr12m.yaml", 8, 4)
    whole = bench.paper_spec("configs/paper/datacompdr12m.yaml", 8, 1)
    assert (accumulated["per_gpu_batch_size"], accumulated["per_gpu_micro_batch_size"]) == (1024, 256)
    assert whole["per_gpu_micro_batch_size"] == 1024 and whole["world_size"] == 8
    for checkpointing in (True, False):
        micro, width = bench.tower_bytes(model, accumulated, 8, checkpointing, parameters)
        assert micro > 0 and width == 64
        assert bench.tower_bytes(model, accumulated, 32, checkpointing, parameters)[0] == pytest.approx(4 * micro,
                                                                                                         rel=0.01)
    on = bench.tower_bytes(model, accumulated, 32, True, parameters)[0]
    assert on < bench.tower_bytes(model, accumulated, 32, False, parameters)[0] / 2  # checkpointing keeps block inputs
    # the loss compares the whole per-GPU batch with every GPU's columns, with or without micro-batches
    loss = bench.loss_bytes(accumulated, 1024, 256, 64)
    assert loss == pytest.approx(bench.loss_bytes(whole, 1024, 1024, 64), rel=0.01)
    assert loss > 12 * 1024 * 8192 * 4  # float32 matrices of 1,024 rows x 8,192 columns
    assert bench.loss_bytes(bench.paper_spec("configs/paper/datacompdr12m.yaml", 4, 8), 2048, 256, 64) == \
        pytest.approx(2 * loss, rel=0.02)  # the gathered columns (8,192 x 64) are the same


def test_the_step_timing_runs_the_trainers_step_and_counts_one_more_forward(bench, repo_root):
    from mobileclip_repro.config import load_config

    config = load_config(str(repo_root / "configs" / "toy.yaml"))
    config["runs"][bench.TOY_RUN]["global_batch_size"] = 32  # 4 micro-batches of 8: a quick step
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = bench.step_timing(config, repeats=1, steps=1)
    finally:
        torch.set_num_threads(threads)
    assert result["rows"] == 32 and result["micro_batch"] == 8
    assert result["spec"]["accum_freq"] == 1
    for name in (1, bench.ACCUM, "caching", "whole", "micro"):
        assert result["per_sample"][name] > 0
    assert 1.2 < result["flop_ratio"] < 1.6 and result["wall_ratio"] > 0
