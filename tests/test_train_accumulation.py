"""Gradient accumulation (``accum_freq``): fewer GPUs than a recipe, the same optimizer step.

One step over k micro-batches equals one step over the whole batch, for plain CLIP, the DR loss
(contrastive and distillation terms, which compare whole-batch similarity matrices) and online
distillation, in one process and under 2-process DDP with the recipes' local loss and gathers
with gradients; averaging per-micro-batch losses, the naive accumulation, does not. A toy run
logs the same losses at every step with 4 micro-batches as with 1, and a run preempted with
accumulation resumes to the same bytes as one never interrupted."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mobileclip_repro import config, models
from mobileclip_repro.train import train as trainer

ROWS = 16  # rows a process takes per step
TEACHER_DIMS = [64, 64]


def loss_spec(kind: str, accum_freq: int, **overrides) -> dict:
    """What train_step reads of a run spec, for a plain CLIP or a DR run."""
    spec = {"dr": kind != "plain", "local_loss": False, "gather_with_grad": False, "accum_freq": accum_freq,
            "grad_clip_norm": 1.0, "name": "accumulation",
            "distill": {"loss_weights": [0.5, 0.5], "teacher_dimension": TEACHER_DIMS, "logit_scale": [70.0, 60.0],
                        "average_after_softmax": True, "synthetic_captions": True, "teachers": "all"}}
    spec.update(overrides)
    return spec


def make_batch(kind: str, rows: int = ROWS, seed: int = 1) -> list:
    """A batch shaped as the loader gives it to the step: plain (images, texts); DR (images, texts,
    teacher image, caption and synthetic-caption embeddings, synthetic texts); online (images, texts,
    teacher views, captions, synthetic texts, synthetic captions)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(rows, 3, 32, 32, generator=generator)
    texts = torch.randint(1, 200, (rows, 16), generator=generator)
    if kind == "plain":
        return [images, texts]
    syn_texts = torch.randint(1, 200, (rows, 16), generator=generator)
    if kind == "online":
        views = torch.randn(rows, 3, 32, 32, generator=generator)
        return [images, texts, views, [f"caption {i}" for i in range(rows)], syn_texts,
                [f"synthetic {i}" for i in range(rows)]]
    emb = [torch.nn.functional.normalize(torch.randn(rows, sum(TEACHER_DIMS), generator=generator), dim=-1)
           for _ in range(3)]
    return [images, texts, emb[0], emb[1], syn_texts, emb[2]]


class CountingTeachers:
    """Online teachers as the trainer sees them (``targets``): fixed projections of the views and of
    a caption's characters, recording the rows of every call."""

    def __init__(self):
        generator = torch.Generator().manual_seed(7)
        self.image_projection = torch.randn(3 * 32 * 32, sum(TEACHER_DIMS), generator=generator)
        self.calls: list[int] = []

    def _text(self, captions: list[str]) -> torch.Tensor:
        codes = torch.tensor([[float(ord(c)) for c in caption.ljust(12)[:12]] for caption in captions])
        return torch.nn.functional.normalize(codes.repeat(1, 11)[:, :sum(TEACHER_DIMS)], dim=-1)

    def targets(self, batch: list) -> list:
        images, texts, views, captions, syn_texts, syn_captions = batch
        self.calls.append(len(images))
        image_emb = torch.nn.functional.normalize(views.flatten(1) @ self.image_projection, dim=-1)
        return [images, texts, image_emb, self._text(captions), syn_texts, self._text(syn_captions)]


def student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create_model_and_transforms("toy-student", output_dict=True)[0].train()


def step_gradients(kind: str, accum_freq: int, batch: list, model=None, spec: dict | None = None,
                   teachers=None) -> dict[str, torch.Tensor]:
    """The gradients (after clipping) one train_step leaves, with a zero learning rate."""
    model = model or student()
    spec = spec or loss_spec("dr" if kind == "online" else kind, accum_freq)
    run = trainer.Run(spec, model, torch.optim.SGD(model.parameters(), lr=0.0), teachers=teachers)
    trainer.train_step(run, batch, 0)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(got: dict, expected: dict) -> None:
    """Equal within what float32 keeps over reordered sums: relative to each tensor's largest entry."""
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        scale = tensor.abs().max().item() or 1.0
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=2e-5 * scale, msg=name)


@pytest.mark.parametrize("kind", ["plain", "dr"])
def test_four_micro_batches_give_the_gradient_of_the_whole_batch(kind):
    batch = make_batch(kind)
    assert_same_gradients(step_gradients(kind, 4, batch), step_gradients(kind, 1, batch))


def test_the_temperature_gets_its_gradient_once_not_once_per_micro_batch():
    batch = make_batch("dr")
    spec = {**loss_spec("dr", 4), "grad_clip_norm": 0}  # unclipped, so the value itself compares
    whole = step_gradients("dr", 1, batch, spec={**spec, "accum_freq": 1})["logit_scale"]
    accumulated = step_gradients("dr", 4, batch, spec=spec)["logit_scale"]
    assert whole.abs().item() > 1e-4
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-7)


def test_online_teachers_embed_each_micro_batch_once_and_the_gradient_is_the_whole_batchs():
    batch = make_batch("online")
    whole_teachers, accumulating_teachers = CountingTeachers(), CountingTeachers()
    whole = step_gradients("online", 1, batch, teachers=whole_teachers)
    accumulated = step_gradients("online", 4, batch, teachers=accumulating_teachers)
    assert whole_teachers.calls == [ROWS]
    assert accumulating_teachers.calls == [ROWS // 4] * 4  # no second pass for the teachers
    assert_same_gradients(accumulated, whole)


def naive_accumulation_gradients(batch: list, parts: int) -> dict[str, torch.Tensor]:
    """The control: each micro-batch's own loss (its own similarity matrices), averaged."""
    model, spec = student(), loss_spec("dr", 1)
    loss_fn = trainer.build_loss(spec, 0, 1)
    for part in trainer.split_batch(batch, parts):
        (sum(trainer._forward(model, model, loss_fn, part, spec).values()) / parts).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip_norm"])
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_averaging_per_micro_batch_losses_is_not_the_whole_batchs_gradient():
    batch = make_batch("dr")
    whole = step_gradients("dr", 1, batch)
    with pytest.raises(AssertionError):
        assert_same_gradients(naive_accumulation_gradients(batch, 4), whole)


def test_a_random_layer_draws_the_same_in_both_passes_of_a_micro_batch():
    """Dropout in the student: the recomputed micro-batch replays its caching pass's draws, so the
    cached features the loss holds for it are the ones its gradients come from."""
    model = student()
    model.visual.transformer.resblocks[0].mlp.add_module("dropout", torch.nn.Dropout(0.5))
    seen = []
    model.visual.transformer.resblocks[0].mlp.register_forward_hook(lambda module, args, out: seen.append(out.sum()))
    step_gradients("dr", 2, make_batch("dr"), model=model)
    assert len(seen) == 4  # two micro-batches, cached then recomputed
    assert seen[0].item() == seen[2].item() and seen[1].item() == seen[3].item()


def test_a_batch_that_does_not_split_into_micro_batches_is_refused():
    with pytest.raises(ValueError, match="accum_freq"):
        trainer.split_batch(make_batch("dr", rows=10), 4)


# -- config --------------------------------------------------------------------------------------

def load(run: dict) -> dict:
    base = {"model": "toy-student", "gpus_per_node": 8, "global_batch_size": 8192, "seen_samples": 8192 * 10,
            "warmup_steps": 1}
    cfg = config.load_config({"name": "x", "runs": {"r": {**base, **run}}, "evaluation": {"benchmarks": []}})
    return config.resolve_run(cfg, "r")


@pytest.mark.parametrize("gpus, expected", [(8, 4), (4, 8), (32, 1), (1, 32)])
def test_auto_picks_the_fewest_micro_batches_within_the_cap(gpus, expected):
    spec = load({"gpus_per_node": gpus, "accum_freq": "auto", "max_per_gpu_batch": 256})
    assert spec["accum_freq"] == expected and spec["per_gpu_micro_batch_size"] == 8192 // gpus // expected <= 256


def test_accumulation_that_does_not_divide_names_the_key():
    with pytest.raises(config.ConfigError, match=r"'runs\.r\.accum_freq'.*1024 rows"):
        load({"accum_freq": 3})
    with pytest.raises(config.ConfigError, match=r"'runs\.r\.max_per_gpu_batch'.*512 rows"):
        load({"accum_freq": 2, "max_per_gpu_batch": 256})
    with pytest.raises(config.ConfigError, match=r"'runs\.r\.accum_freq'.*max_per_gpu_batch"):
        load({"accum_freq": "auto"})


REPO = Path(__file__).resolve().parents[1]
# what differs between Apple's 32-GPU s30m runs and the same runs on fewer GPUs
PLACEMENT = {"name", "nodes", "gpus_per_node", "world_size", "per_gpu_batch_size", "accum_freq", "max_per_gpu_batch",
             "per_gpu_micro_batch_size", "resume", "results_dir", "datacomp_dir", "dr_dir", "config_name"}


@pytest.mark.parametrize("gpus, accum_freq", [(8, 4), (4, 8)])
def test_the_fewer_gpu_configs_are_apples_s30m_runs_in_micro_batches_of_256(gpus, accum_freq):
    fewer = config.load_config(REPO / "configs" / "paper" / f"s30m-{gpus}gpu.yaml")
    for data, original in (("dr", "datacompdr12m"), ("plain", "datacomp12m")):
        apple = config.load_config(REPO / "configs" / "paper" / f"{original}.yaml")
        expected = config.resolve_run(apple, f"{original}_s30m")
        got = config.resolve_run(fewer, f"{original}_s30m_{gpus}gpu")
        assert (got["world_size"], got["accum_freq"], got["per_gpu_micro_batch_size"]) == (gpus, accum_freq, 256)
        assert got["global_batch_size"] == expected["global_batch_size"] == 8192
        differing = {key for key in set(got) | set(expected) if got.get(key) != expected.get(key)}
        assert differing <= PLACEMENT, {key: (expected.get(key), got.get(key)) for key in differing - PLACEMENT}


def test_a_checkpoint_from_before_accumulation_resumes_as_accum_freq_1():
    spec = load({})
    stored = {k: v for k, v in spec.items() if k not in ("accum_freq", "per_gpu_micro_batch_size")}
    assert trainer.spec_differences(stored, spec) == {}
    assert set(trainer.spec_differences(stored, load({"accum_freq": 2}))) == {"accum_freq", "per_gpu_micro_batch_size"}


# -- DDP: 2 processes on gloo --------------------------------------------------------------------

def _ddp_worker(rank: int, world_size: int, rendezvous: str, kind: str, accum_freq: int, static_graph: bool,
                out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                                         world_size=world_size)
    try:
        model = student()
        model.set_grad_checkpointing(static_graph)  # the recipes: checkpointing under DDP's static graph
        spec = loss_spec(kind, accum_freq, local_loss=True, gather_with_grad=True)
        training_model = torch.nn.parallel.DistributedDataParallel(model, static_graph=static_graph)
        whole = make_batch(kind, rows=ROWS * world_size)
        mine = [column[rank * ROWS:(rank + 1) * ROWS] for column in whole]
        run = trainer.Run(spec, model, torch.optim.SGD(model.parameters(), lr=0.0), training_model=training_model,
                          rank=rank, world_size=world_size)
        for step in range(2):  # the second step checks DDP's state after an accumulated one
            trainer.train_step(run, mine, step)
        if rank == 0:
            torch.save({name: p.grad for name, p in model.named_parameters() if p.grad is not None}, out)
    finally:
        torch.distributed.destroy_process_group()


def ddp_gradients(tmp_path: Path, kind: str, accum_freq: int, static_graph: bool = True) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{kind}_{accum_freq}_{static_graph}.pt"
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / f"rendezvous_{kind}_{accum_freq}_{static_graph}"), kind,
                                          accum_freq, static_graph, str(out)), nprocs=2, start_method="spawn")
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", ["plain", "dr"])
def test_under_ddp_accumulation_gives_the_whole_global_batchs_gradient(tmp_path, kind):
    """Local loss with gathers carrying gradients, as the recipes: 2 ranks x 4 micro-batches equal
    2 ranks x 1, and one process over the 2 x 16 rows."""
    accumulated = ddp_gradients(tmp_path, kind, 4)
    assert_same_gradients(accumulated, ddp_gradients(tmp_path, kind, 1))
    assert_same_gradients(accumulated, step_gradients(kind, 1, make_batch(kind, rows=2 * ROWS)))


def test_accumulation_under_ddp_without_a_static_graph(tmp_path):
    """ddp_static_graph: false (the recipes set it true): the same gradient."""
    assert_same_gradients(ddp_gradients(tmp_path, "dr", 4, static_graph=False),
                          step_gradients("dr", 1, make_batch("dr", rows=2 * ROWS)))


# -- the toy DR run -------------------------------------------------------------------------------

TOY_RUN = {"model": "toy-student", "data": "dr", "gpus_per_node": 0, "global_batch_size": 16, "seen_samples": 16 * 6,
           "num_checkpoints": 2, "workers": 0, "precision": "fp32", "grad_checkpointing": False, "warmup_steps": 2,
           "log_every_steps": 1, "distill": {"teacher_dimension": TEACHER_DIMS}}


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory, write_reinforced_toy) -> Path:
    return write_reinforced_toy(tmp_path_factory.mktemp("accumulation"), train_samples=64, samples_per_shard=16)


def toy_spec(results: Path, **overrides) -> dict:
    cfg = config.load_config({"name": "accumulation", "results_dir": str(results), "evaluation": {"benchmarks": []},
                              "runs": {"r": {**TOY_RUN, **overrides}}})
    return config.resolve_run(cfg, "r")


def train_toy(spec: dict, out_dir: Path) -> dict:
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        try:
            return trainer.train(spec, out_dir, device_name="cpu")
        finally:
            torch.set_num_threads(threads)


def logged(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_runs(toy_results, tmp_path_factory) -> dict[int, Path]:
    folders = {}
    for accum_freq in (1, 4):
        folders[accum_freq] = tmp_path_factory.mktemp(f"accum_{accum_freq}")
        train_toy(toy_spec(toy_results, accum_freq=accum_freq), folders[accum_freq])
    return folders


def test_the_toy_dr_run_logs_the_same_losses_with_four_micro_batches(toy_runs):
    whole, accumulated = logged(toy_runs[1]), logged(toy_runs[4])
    assert [r["step"] for r in accumulated] == [r["step"] for r in whole] == list(range(1, 7))
    for got, expected in zip(accumulated, whole):
        for key in ("loss", "distill_loss", "contrastive_loss", "loss/distill_i2t_syn", "logit_scale"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4), (got["step"], key)
    final = [torch.load(folder / "checkpoints" / "epoch_2.pt", weights_only=True)["state_dict"]
             for folder in (toy_runs[1], toy_runs[4])]
    for name, tensor in final[0].items():
        torch.testing.assert_close(final[1][name], tensor, rtol=1e-3, atol=1e-5, msg=name)


def test_the_manifest_records_the_micro_batches_and_counts_the_second_forward(toy_runs):
    whole, accumulated = (json.loads((toy_runs[k] / "manifest.json").read_text()) for k in (1, 4))
    assert (accumulated["accum_freq"], accumulated["per_gpu_micro_batch_size"]) == (4, 4)
    assert (whole["accum_freq"], whole["per_gpu_micro_batch_size"]) == (1, 16)
    # the caching forward is real work: more FLOPs per step, less than twice the forward + backward
    ratio = accumulated["flops"]["per_step"] / whole["flops"]["per_step"]
    assert 1.2 < ratio < 1.6


def test_a_run_preempted_with_accumulation_resumes_to_the_same_bytes(toy_results, toy_runs, tmp_path, monkeypatch):
    spec = toy_spec(toy_results, accum_freq=4)
    signals = iter([None, signal.SIGTERM])  # after step 2: inside the first pseudo-epoch of 3 steps
    monkeypatch.setattr(trainer.PreemptionWarning, "agreed", lambda self, device, world_size: next(signals, None))
    with pytest.raises(trainer.Preempted):
        train_toy(spec, tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "resume.pt", weights_only=False)["step"] == 2
    monkeypatch.undo()
    train_toy(spec, tmp_path)
    for epoch in (1, 2):
        got, expected = (torch.load(folder / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)
                         for folder in (tmp_path, toy_runs[4]))
        assert got["step"] == expected["step"]
        for name, tensor in expected["state_dict"].items():
            assert torch.equal(got["state_dict"][name], tensor), (epoch, name)
