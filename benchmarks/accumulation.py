"""What exact gradient accumulation (``accum_freq``) costs in time, and what it saves in GPU memory.

**Time** (CPU, one thread, ``OMP_NUM_THREADS=1`` as each DAG job runs): the trainer's own step
(``train.train_step``) on the toy DR run's shapes -- ``configs/toy.yaml``'s ``toy_dr``: the
toy student, its global batch of 128 rows, the DR loss (``train.build_loss``), the trainer's
AdamW (fused on the CPU, as ``train.build_training`` builds it), clipping and the temperature clamp --
with ``accum_freq`` 4 (4 micro-batches of 32) against 1 (one pass over 128), on the same
synthetic batch shaped as the DR loader gives it (images, tokenized captions and synthetic
captions, per-member L2-normalised teacher embeddings). ``--repeats`` rounds, each timing a block
of ``--steps`` calls of every timed piece, the order rotated from round to round so that drift
hits all alike; medians of the blocks. Time is the CPU time of the one thread that computes
(``time.thread_time``): on a machine other processes share, wall time swings 2-3x from block to
block with their load, CPU time much less; the wall-time ratio is printed too. Beside it the FLOP ratio of the same two steps, counted as the trainer counts a run's FLOPs
(``flops.count_flops`` over ``train.train_step``: FlopCounterMode, matrix products). Accumulation
forwards every micro-batch twice (once without gradients to cache its features, once with them
against the others' cached features): one more student forward per sample, a FLOP ratio of
about 1.37 here. Printed::

    accum_freq 4 / 1 time per seen sample: 1.NNx vs FLOP ratio 1.37x (= N.NN x the FLOP ratio)

with the difference split into pieces timed in the same rounds: the caching pass alone (the
no-gradient forward of the 4 micro-batches), forward + backward in 4 x 32 rows against 1 x 128
(each part its own loss: smaller products, and what every backward pays whatever its rows), and
the rest. Then the real trainer (``train.train``) on the toy DR run's shards with both settings,
alternating (``--trainer-repeats`` runs of ``--trainer-seen-samples`` each, one checkpoint;
``--skip-trainer`` leaves it out; the toy DAG is run up to the reinforcement first if the shards
are missing, as ``training_cost.py`` does): whole-run CPU time (``time.process_time``) and wall
per seen sample (model build, data read in the trainer's process, steps, checkpoint) beside the
FLOP ratio of the runs' manifests.

**Memory per GPU at the paper's shapes**, counted on the meta device (shapes only, nothing
allocated): ``flops.meta_model`` builds ViT-B-16 (``configs/paper/datacompdr12m.yaml``) and
MobileCLIP-B (``configs/paper/dfndr12m.yaml``), both at 224 px / 77 tokens and a global batch of
8,192, resolved through the config loader for each layout: 32 GPUs (the recipes: 256 rows per
GPU), 8 GPUs and 4 GPUs without accumulation (1,024 and 2,048 rows per GPU) and with it
(``accum_freq`` 4 and 8: micro-batches of 256). Counted: every tensor autograd keeps for the
backward of one micro-batch's training pass -- ``train._features`` (image tower, text tower over
the real + synthetic captions) with gradient checkpointing on, as the recipes run
(``model.set_grad_checkpointing(True)``: what a checkpointed block keeps is its input, which
torch's non-reentrant checkpoint saves through the same hooks) -- then the DR loss of the whole
per-GPU batch (``train._loss``: the micro-batch's fresh rows and the others' cached ones, under
``local_loss`` with the columns of all GPUs gathered, as ``train.accumulate_gradients`` computes
it), through ``torch.autograd.graph.saved_tensors_hooks``, bytes per storage (numel x element
size, each storage once, the parameters left out). Precision: the towers are cast to bfloat16 on
the meta device, so every tower activation takes 2 bytes, as under the recipes' fp16 autocast;
the loss runs in float32 (autocast's ``F.normalize`` hands it float32 features, and
``log_softmax`` / ``cross_entropy`` run in float32 under autocast; the same loss on fake CUDA
tensors under CUDA's fp16 autocast keeps 6% more, its fp16 copies of features and logits:
0.48 vs 0.45 GiB at 1,024 x 8,192). Constant part: fp32 weights,
gradients and AdamW's two moments (16 bytes per parameter) plus autocast's fp16 copies of the
weights (2 bytes). Not counted: the backward's transients (gradient buffers of the activations,
one block recomputed at a time), the CUDA workspace and the allocator's fragmentation;
``benchmarks/gpu_check.py``'s ``accum`` part measures the real peak on a GPU. Also printed: the
same with checkpointing off, attention counted as flash attention keeps it (q, k, v, output,
log-sum-exp: on the meta device the math backend would keep the full attention matrix).

    .venv/bin/python benchmarks/accumulation.py [--config configs/toy.yaml] [--repeats 7] [--steps 5]
        [--skip-timing] [--skip-memory] [--skip-trainer] [--trainer-repeats 2] [--trainer-seen-samples 4096]

Exits 0 whatever the figures. About 70 s on a quiet 2-core machine at the defaults (the trainer
~40 s, step timing ~20 s, the memory section ~10 s). Measured there: 1.58x vs a FLOP ratio of
1.37x (1.15 x), the caching pass about half of the difference.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread, as each DAG job runs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACCUM = 4  # the toy arm's micro-batches per step
TOY_RUN = "toy_dr"
# (model, the paper config whose DR run it is): both at a global batch of 8,192
PAPER_MODELS = (("ViT-B-16", "configs/paper/datacompdr12m.yaml"), ("MobileCLIP-B", "configs/paper/dfndr12m.yaml"))
# (GPUs, accum_freq): the recipes' 32 GPUs, then 8 and 4 GPUs without and with accumulation
LAYOUTS = ((32, 1), (8, 1), (8, 4), (4, 1), (4, 8))
GIB = 2 ** 30
BYTES_PER_PARAMETER = 4 + 4 + 8 + 2  # fp32 weight, fp32 gradient, AdamW's two fp32 moments, autocast's fp16 copy


# -- time: the trainer's step with accum_freq 4 vs 1 on the toy DR run's shapes ------------------

def toy_spec(config: dict, accum_freq: int, **overrides) -> dict:
    from mobileclip_repro.config import resolve_run

    raw = json.loads(json.dumps(config))
    raw["runs"][TOY_RUN].update(accum_freq=accum_freq, **overrides)
    seeds = raw["runs"][TOY_RUN].get("seeds") or [raw["runs"][TOY_RUN].get("seed", 0)]
    return resolve_run(raw, TOY_RUN, seed=seeds[0])


def toy_batch(spec: dict, seed: int = 0) -> list:
    """A DR batch of the run's global batch, shaped as the loader hands it to the step: images,
    tokenized captions, teacher image and caption embeddings, tokenized synthetic captions, teacher
    synthetic-caption embeddings (each member's slice L2-normalised)."""
    from mobileclip_repro import models

    rows = spec["global_batch_size"]
    generator = torch.Generator().manual_seed(seed)
    model = models.create_model_and_transforms(spec["model"], device="meta")[0]
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    tokenizer = models.get_tokenizer(spec["model"])
    colours, shapes = ("red", "green", "blue", "yellow"), ("ball", "cube", "ring", "star")

    def captions(offset: int) -> torch.Tensor:
        return tokenizer([f"a {colours[(i + offset) % 4]} {shapes[(i // 4 + offset) % 4]} on the left of "
                          f"{i % 7} small {shapes[i % 4]}s" for i in range(rows)])

    def embeddings() -> torch.Tensor:
        return torch.cat([torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=-1)
                          for dim in spec["distill"]["teacher_dimension"]], dim=1)

    images = torch.randn(rows, 3, size, size, generator=generator)
    return [images, captions(0), embeddings(), embeddings(), captions(1), embeddings()]


class ToyArm:
    """One arm: the run's model, and its optimizer, schedule, loss and autocast as the trainer builds
    them (``train.build_training``: fused AdamW on the CPU, no GradScaler)."""

    def __init__(self, spec: dict):
        from mobileclip_repro import models
        from mobileclip_repro.train import train

        self.spec = spec
        torch.manual_seed(spec["seed"])
        self.model = models.create_model_and_transforms(spec["model"], output_dict=True)[0]
        if spec["grad_checkpointing"]:
            self.model.set_grad_checkpointing(True)
        self.model.train()
        self.run = train.build_training(spec, self.model, torch.device("cpu"))
        self.loss_fn, self.autocast = self.run.loss_fn, self.run.autocast

    def step(self, batch: list) -> None:
        """``train.train_step``, as the trainer calls it."""
        from mobileclip_repro.train import train

        train.train_step(self.run, batch, 0)

    def forward_backward(self, parts: list[list]) -> None:
        """Forward + loss + backward of each of ``parts`` on its own (no optimizer step): the
        gradient work of a step at that batch size."""
        from mobileclip_repro.train import train

        for part in parts:
            with self.autocast():
                total = sum(train._forward(self.model, self.model, self.loss_fn, part, self.spec).values())
            total.backward()
        self.model.zero_grad(set_to_none=True)

    def caching_pass(self, batch: list) -> None:
        """What accumulation adds: every micro-batch's features without gradients (as in
        ``train.accumulate_gradients``)."""
        from mobileclip_repro.train import train

        with self.autocast(), torch.no_grad():
            for part in train.split_batch(batch, self.spec["accum_freq"]):
                train._features(self.model, part, self.spec)


def step_timing(config: dict, repeats: int, steps: int) -> dict:
    from mobileclip_repro import flops
    from mobileclip_repro.train import train

    arms = {k: ToyArm(toy_spec(config, k)) for k in (1, ACCUM)}
    batch = toy_batch(arms[1].spec)
    rows = len(batch[0])
    counted = {}
    for k, arm in arms.items():
        arm.step(batch)  # warm-up: AdamW's state, allocator
        counted[k] = flops.count_flops(arm.step, batch)[1]
    # The two steps, and the parts of their difference each on its own: the caching pass, and the
    # gradient work at the micro-batch's size against the whole batch's (each part its own loss).
    parts = train.split_batch(batch, ACCUM)
    timed = {1: lambda: arms[1].step(batch), ACCUM: lambda: arms[ACCUM].step(batch),
             "caching": lambda: arms[ACCUM].caching_pass(batch),
             "whole": lambda: arms[1].forward_backward([batch]),
             "micro": lambda: arms[1].forward_backward(parts)}
    # CPU seconds of this (the only computing) thread, and wall seconds, per step of each block
    cpu, wall = {name: [] for name in timed}, {name: [] for name in timed}
    order = list(timed)
    for repeat in range(repeats):
        for name in order[repeat % len(order):] + order[:repeat % len(order)]:  # rotated: drift hits all alike
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(steps):
                timed[name]()
            cpu[name].append((time.thread_time() - start_cpu) / steps)
            wall[name].append((time.perf_counter() - start) / steps)
    per_sample = {name: statistics.median(v) / rows for name, v in cpu.items()}
    wall_per_sample = {name: statistics.median(v) / rows for name, v in wall.items()}
    return {"rows": rows, "micro_batch": rows // ACCUM, "cpu_seconds_per_step": cpu, "wall_seconds_per_step": wall,
            "per_sample": per_sample, "wall_per_sample": wall_per_sample,
            "flops_per_sample": {k: f / rows for k, f in counted.items()},
            "caching_per_sample": per_sample["caching"],
            "micro_batch_effect_per_sample": per_sample["micro"] - per_sample["whole"],
            "time_ratio": per_sample[ACCUM] / per_sample[1],
            "wall_ratio": wall_per_sample[ACCUM] / wall_per_sample[1], "flop_ratio": counted[ACCUM] / counted[1],
            "spec": arms[1].spec}


def trainer_timing(config_path: str, config: dict, repeats: int, seen_samples: int, tmp: Path) -> dict:
    """The real trainer on the toy DR run's shards, accum_freq 1 and 4 alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import training_cost  # noqa: E402 - its toy-data check (runs the DAG up to the reinforcement)

    from mobileclip_repro.train import train

    training_cost.ensure_data(config_path, config)
    batch = config["runs"][TOY_RUN]["global_batch_size"]
    seen_samples = max(batch, seen_samples // batch * batch)
    specs = {k: toy_spec(config, k, seen_samples=seen_samples, num_checkpoints=1, checkpoint_spacing="linear",
                         warmup_steps=min(config["runs"][TOY_RUN]["warmup_steps"], seen_samples // batch))
             for k in (1, ACCUM)}
    walls, cpus, manifests = {k: [] for k in specs}, {k: [] for k in specs}, {}
    for repeat in range(repeats):
        for k in ((1, ACCUM) if repeat % 2 == 0 else (ACCUM, 1)):
            start, start_cpu = time.perf_counter(), time.process_time()
            manifests[k] = train.train(specs[k], tmp / f"accum_{k}_{repeat}", "cpu")
            cpus[k].append(time.process_time() - start_cpu)
            walls[k].append(time.perf_counter() - start)
            print(f"  train.train accum_freq {k}, repeat {repeat + 1}: {walls[k][-1]:.1f} s wall, {cpus[k][-1]:.1f} s "
                  f"CPU ({seen_samples / cpus[k][-1]:.0f} samples per CPU second)", flush=True)
    per_sample = {k: statistics.median(v) / seen_samples for k, v in cpus.items()}
    wall_per_sample = {k: statistics.median(v) / seen_samples for k, v in walls.items()}
    flops = {k: manifests[k]["flops"]["per_seen_sample"] for k in specs}
    return {"seen_samples": seen_samples, "walls": walls, "cpus": cpus, "per_sample": per_sample,
            "wall_per_sample": wall_per_sample, "flops_per_sample": flops,
            "time_ratio": per_sample[ACCUM] / per_sample[1], "wall_ratio": wall_per_sample[ACCUM] / wall_per_sample[1],
            "flop_ratio": flops[ACCUM] / flops[1]}


# -- memory: what autograd keeps for backward at the paper's shapes (meta device) ----------------

class SavedTensors:
    """``saved_tensors_hooks`` that add up the bytes of what autograd keeps, each storage once,
    the storages in ``exclude`` (the parameters) left out. The tensors are held until ``clear``,
    so a storage's address names one storage."""

    def __init__(self, exclude: set[int] = frozenset()):
        self.exclude = set(exclude)
        self.storages: dict[int, tuple[int, torch.Tensor]] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.exclude and key not in self.storages:
            self.storages[key] = (storage.nbytes(), tensor)
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.storages.values())

    def clear(self) -> None:
        self.storages.clear()


class _FlashLikeAttention(torch.autograd.Function):
    """Shapes of scaled-dot-product attention as flash / memory-efficient attention keeps them for
    backward: q, k, v, the output and the row log-sum-exp (not the attention matrix)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: shapes only
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


@contextlib.contextmanager
def flash_like_attention():
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        return _FlashLikeAttention.apply(q, k, v)

    functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def gathered_from(world_size: int):
    """The loss's all-gather of features, as shapes: this rank's rows first, then world_size - 1
    ranks' worth of empty rows (under ``gather_with_grad`` only this rank's rows carry gradient)."""
    import open_clip.loss

    from mobileclip_repro.train import loss as dr_loss

    def gather(image_features, text_features, local_loss=False, gather_with_grad=False, rank=0, world_size=1,
               use_horovod=False):
        def every_rank(features):
            return torch.cat([features] + [torch.empty_like(features).detach()] * (world_size - 1))
        return every_rank(image_features), every_rank(text_features)

    originals = open_clip.loss.gather_features, dr_loss.gather_features
    open_clip.loss.gather_features = dr_loss.gather_features = gather
    try:
        yield
    finally:
        open_clip.loss.gather_features, dr_loss.gather_features = originals


def paper_spec(path: str, gpus: int, accum_freq: int) -> dict:
    """The config's run on ``gpus`` GPUs (8 a node) with ``accum_freq``, through the config loader."""
    import yaml

    from mobileclip_repro import config as config_lib

    raw = yaml.safe_load((REPO / path).read_text())
    (name, run), = raw["runs"].items()
    run.update(nodes=max(1, gpus // 8), gpus_per_node=min(gpus, 8), accum_freq=accum_freq)
    run.pop("max_per_gpu_batch", None)
    return config_lib.resolve_run(config_lib.load_config(raw), name)


def tower_bytes(model, spec: dict, rows: int, checkpointing: bool, parameters: set[int]) -> tuple[int, int]:
    """(bytes autograd keeps for one training pass of ``rows`` through ``train._features``, feature width)."""
    from mobileclip_repro import flops
    from mobileclip_repro.train import train

    model.set_grad_checkpointing(checkpointing)
    images, texts = flops._inputs(model, rows, rows)
    images = images.to(torch.bfloat16)
    synthetic = torch.zeros_like(texts)
    saved = SavedTensors(parameters)
    with saved.hooks(), (contextlib.nullcontext() if checkpointing else flash_like_attention()):
        features = train._features(model, [images, texts, None, None, synthetic, None], spec)
    return saved.bytes, features["image_features"].shape[-1]


def loss_bytes(spec: dict, per_gpu: int, micro: int, width: int) -> int:
    """Bytes autograd keeps for the DR loss of the whole per-GPU batch (``micro`` fresh rows with
    gradients, the rest cached), columns gathered from every GPU, float32."""
    from mobileclip_repro.train import train

    def rows(count: int, grad: bool, columns: int = width) -> torch.Tensor:
        return torch.empty(count, columns, device="meta", requires_grad=grad)

    fresh = {name: rows(micro, True) for name in ("image_features", "text_features", "syn_text_features")}
    features = {name: torch.cat([fresh[name], rows(per_gpu - micro, False)]) if per_gpu > micro else fresh[name]
                for name in fresh}
    features["logit_scale"] = torch.empty((), device="meta", requires_grad=True)
    teacher = sum(spec["distill"]["teacher_dimension"])
    targets = {name: rows(per_gpu, False, teacher) for name in ("image_emb", "text_emb", "syn_emb")}
    loss_fn = train.build_loss(spec, 0, spec["world_size"])
    saved = SavedTensors()
    with gathered_from(spec["world_size"]), saved.hooks():
        train._loss(loss_fn, features, targets, spec)
    return saved.bytes


def memory_table() -> list[dict]:
    from mobileclip_repro import flops

    table = []
    for model_name, path in PAPER_MODELS:
        try:
            model = flops.meta_model(model_name).to(torch.bfloat16).train()
        except Exception as error:  # noqa: BLE001 - an architecture this environment cannot build: say so
            print(f"  {model_name}: not built on the meta device ({type(error).__name__}: {error})", flush=True)
            continue
        parameters = {p.untyped_storage()._cdata for p in model.parameters()}
        count = sum(p.numel() for p in model.parameters())
        constant = count * BYTES_PER_PARAMETER
        towers: dict[tuple[int, bool], tuple[int, int]] = {}
        for gpus, accum_freq in LAYOUTS:
            spec = paper_spec(path, gpus, accum_freq)
            per_gpu, micro = spec["per_gpu_batch_size"], spec["per_gpu_micro_batch_size"]
            row = {"model": model_name, "config": path, "parameters": count, "gpus": gpus, "accum_freq": accum_freq,
                   "per_gpu_batch": per_gpu, "micro_batch": micro, "constant_bytes": constant}
            for checkpointing in (True, False):
                if (micro, checkpointing) not in towers:
                    towers[micro, checkpointing] = tower_bytes(model, spec, micro, checkpointing, parameters)
            width = towers[micro, True][1]
            row["loss_bytes"] = loss_bytes(spec, per_gpu, micro, width)
            for checkpointing, key in ((True, "on"), (False, "off")):
                row[f"towers_bytes_{key}"] = towers[micro, checkpointing][0]
                row[f"activation_bytes_{key}"] = row[f"towers_bytes_{key}"] + row["loss_bytes"]
                row[f"total_bytes_{key}"] = row[f"activation_bytes_{key}"] + constant
            table.append(row)
    return table


# -- output ---------------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def print_timing(result: dict) -> None:
    spec, rows = result["spec"], result["rows"]
    print(f"\nThe trainer's step (train.train_step) on {TOY_RUN}'s shapes: {spec['model']}, {rows} rows a step, "
          f"DR loss, AdamW (fused), precision {spec['precision']}, {torch.get_num_threads()} thread; medians of the "
          f"blocks, CPU time of the computing thread (wall in brackets)")
    for k in (1, ACCUM):
        label = f"accum_freq {k} ({k} x {rows // k} rows)"
        blocks = ", ".join(f"{1e3 * s:.0f}" for s in result["cpu_seconds_per_step"][k])
        print(f"  {label:<28} {ms(result['per_sample'][k])} ms/sample ({ms(result['wall_per_sample'][k])}), "
              f"{result['flops_per_sample'][k] / 1e6:.2f} MFLOP/sample; CPU ms/step by block: {blocks}")
    extra = result["per_sample"][ACCUM] - result["per_sample"][1]
    caching, micro = result["caching_per_sample"], result["micro_batch_effect_per_sample"]
    print(f"  accumulation adds {ms(extra)} ms/sample ({100 * extra / result['per_sample'][1]:.0f}% of the step):")
    print(f"    {ms(caching)} ms  the caching pass (no-gradient forward of the {ACCUM} micro-batches; the FLOP ratio's "
          f"extra forward)")
    print(f"    {ms(micro)} ms  forward + backward in {ACCUM} x {rows // ACCUM} rows instead of 1 x {rows} (timed "
          f"apart, each part its own loss): smaller products, and what every backward pays whatever its rows "
          f"(the dense gradient of the token embedding, accumulation into .grad)")
    print(f"    {ms(extra - caching - micro)} ms  the rest: {ACCUM} evaluations of the whole batch's loss, "
          f"feature concatenation, RNG replay")
    print(f"  wall time per seen sample, medians: {result['wall_ratio']:.2f}x")
    over = result["time_ratio"] / result["flop_ratio"]
    print(f"\naccum_freq {ACCUM} / 1 time per seen sample: {result['time_ratio']:.2f}x vs FLOP ratio "
          f"{result['flop_ratio']:.2f}x (= {over:.2f} x the FLOP ratio)")


def print_trainer(result: dict) -> None:
    print(f"\nThe real trainer (train.train, {TOY_RUN}, {result['seen_samples']:,} seen samples a run: model build, "
          f"data read in the trainer's process, steps, a checkpoint; medians, CPU time of the process, wall in brackets)")
    for k in (1, ACCUM):
        print(f"  accum_freq {k}: {ms(result['per_sample'][k])} ms/sample ({ms(result['wall_per_sample'][k])}), "
              f"{result['flops_per_sample'][k] / 1e6:.2f} MFLOP/sample (manifest); runs "
              f"{', '.join(f'{w:.1f}' for w in result['cpus'][k])} s CPU")
    print(f"  train.train accum_freq {ACCUM} / 1 time per seen sample: {result['time_ratio']:.2f}x (wall "
          f"{result['wall_ratio']:.2f}x) vs FLOP ratio {result['flop_ratio']:.2f}x "
          f"(= {result['time_ratio'] / result['flop_ratio']:.2f} x the FLOP ratio)")


def print_memory(table: list[dict]) -> None:
    print("\nMemory per GPU at the paper's shapes (meta device; global batch 8,192, 224 px, 77 tokens, DR step: "
          "image + real and synthetic captions; towers bf16 = fp16 autocast's 2 bytes, loss fp32)")
    print("  activation = what autograd keeps for backward: the towers' pass over one micro-batch + the DR loss over "
          "the per-GPU batch;\n  total = activation + fp32 weights, gradients, AdamW moments and autocast's fp16 weight "
          f"copies ({BYTES_PER_PARAMETER} B/parameter); backward transients not included")
    header = (f"  {'model':<13} {'GPUs':>4} {'accum_freq':>10} {'micro-batch':>11} {'per-GPU':>7} "
              f"{'towers':>7} {'loss':>6} {'activation GiB':>14} {'total GiB':>9}   "
              f"{'checkpointing off: activation':>29} {'total':>6}")
    print(header)
    for row in table:
        print(f"  {row['model']:<13} {row['gpus']:>4} {row['accum_freq']:>10} {row['micro_batch']:>11} "
              f"{row['per_gpu_batch']:>7} {row['towers_bytes_on'] / GIB:>7.2f} {row['loss_bytes'] / GIB:>6.2f} "
              f"{row['activation_bytes_on'] / GIB:>14.2f} {row['total_bytes_on'] / GIB:>9.2f}   "
              f"{row['activation_bytes_off'] / GIB:>29.2f} {row['total_bytes_off'] / GIB:>6.2f}")
    for model in dict.fromkeys(row["model"] for row in table):
        rows = {(row["gpus"], row["accum_freq"]): row for row in table if row["model"] == model}
        constant = next(iter(rows.values()))["constant_bytes"]
        parts = []
        for gpus, accum_freq in LAYOUTS:
            if accum_freq > 1 and (gpus, 1) in rows and (gpus, accum_freq) in rows:
                saved = rows[gpus, 1]["total_bytes_on"] - rows[gpus, accum_freq]["total_bytes_on"]
                parts.append(f"{gpus} GPUs: accum_freq {accum_freq} saves {saved / GIB:.1f} GiB "
                             f"({rows[gpus, 1]['total_bytes_on'] / GIB:.1f} -> "
                             f"{rows[gpus, accum_freq]['total_bytes_on'] / GIB:.1f})")
        print(f"  {model} ({next(iter(rows.values()))['parameters'] / 1e6:.1f}M parameters, constant "
              f"{constant / GIB:.2f} GiB): " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--repeats", type=int, default=7, help="alternating timed blocks per arm")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--skip-timing", action="store_true", help="only the memory table")
    parser.add_argument("--skip-memory", action="store_true", help="only the timing")
    parser.add_argument("--skip-trainer", action="store_true", help="not the real trainer on the toy DR shards")
    parser.add_argument("--trainer-repeats", type=int, default=2)
    parser.add_argument("--trainer-seen-samples", type=int, default=4096)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip's "no pretrained weights" for every model built
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "src"))
    from mobileclip_repro.config import load_config

    wall = time.perf_counter()
    config = load_config(args.config)
    print(f"{args.config}: {TOY_RUN}, {torch.get_num_threads()} thread, load average {os.getloadavg()[0]:.2f} "
          f"at the start", flush=True)
    timing = trainer = memory = None
    if not args.skip_timing:
        timing = step_timing(config, args.repeats, args.steps)
    if not args.skip_trainer:
        with tempfile.TemporaryDirectory(prefix="accumulation_") as tmp:
            trainer = trainer_timing(args.config, config, args.trainer_repeats, args.trainer_seen_samples, Path(tmp))
    if not args.skip_memory:
        memory = memory_table()
    if memory is not None:
        print_memory(memory)
    if trainer is not None:
        print_trainer(trainer)
    if timing is not None:
        print_timing(timing)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
