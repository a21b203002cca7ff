"""Where the toy DAG's time goes, and what a DR student costs against a plain one per seen sample.

Headline (issue 21, item 2): the project's real trainer (``train.train``) runs both toy runs of
``--config`` (default ``configs/toy.yaml``: ``toy_dr`` and ``toy_plain``, seed 0) on the same
shards, one after the other in this process, ``--repeats`` times, the order alternating so
drift hits both alike. One thread (``OMP_NUM_THREADS=1``, as each DAG job runs), the data read in
the trainer's process (the toy's ``workers: 0``). Wall per seen sample is a run's wall time
(model build, data, steps, checkpoints) over its seen samples; medians over the repeats.
The FLOP ratio is the two runs' own count (``FlopCounterMode`` over one real optimizer step,
the ``flops_per_step`` their manifests record). Printed::

    DR / plain wall per seen sample: 1.51x = 1.02 x the FLOP ratio 1.475 (target <= 1.05: met)

The DR step does one thing the plain step does not: its text tower also encodes the synthetic
caption. The FLOP ratio prices that; anything above it is overhead of the DR data path.

Also printed, each measured on its own (medians of ``--breakdown-repeats``):

* the data path per sample, stage by stage, on the first shard (pair) of the run's data: tar
  read (plain: the DataComp tar; DR: both), checks (sha256, uid), reinforcement decode (npz,
  json), JPEG decode, transform (plain: open_clip's train transform; DR: the replay of a stored
  augmentation), tokenization (DR: two captions);
* the training step per sample on one batch of the run's size, set up by the trainer itself
  (``train.build_run``: its model, fused AdamW on the CPU, schedule, loss and data stream): image
  tower and text tower forwards, loss, backward + optimizer (the rest of ``train.train_step``);
* a checkpoint write (model + optimizer, ``torch.save``) per sample of the run;
* a job's start-up: ``import`` of the stage's module in a fresh interpreter (train, evaluate,
  report, toy-data), medians of 3;
* an evaluate job: model load from a checkpoint, benchmark-set decode (read + JPEG + eval
  transform of every image; once per job, ``evaluate.DecodedSets``), forwards of a checkpoint
  on the decoded sets (once per checkpoint);
* the FLOP ratio DR / plain of the student towers alone (forward + backward on the meta
  device, ``flops.training_flops_per_sample``; the B x B loss logits left out) for the toy
  student and for ViT-B-16 at 224 px / 77 tokens, and the text tower's share of a plain step.

Data: the config's DataComp and DataCompDR shards. Where they are missing, the script runs the
toy DAG up to the reinforcement first (``snakemake --until reinforce``, about 2 min on 2 cores).
Runs write to a temporary directory, removed at the end. About 4 min on an idle 2-core machine at
the defaults (3 repeats of the full 32,768-sample runs); exits 0 whatever the ratio.

    .venv/bin/python benchmarks/training_cost.py [--config configs/toy.yaml] [--repeats 3]
        [--seen-samples N] [--breakdown-repeats 5] [--skip-runs]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread, as each DAG job runs

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.05
RUNS = ("toy_plain", "toy_dr")


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ensure_data(config_path: str, config: dict) -> None:
    from mobileclip_repro.config import resolve_run

    spec = resolve_run(config, RUNS[1], seed=resolve_seed(config, RUNS[1]))
    if list(Path(spec["dr_dir"]).glob("*.tar")):
        return
    print(f"no DataCompDR shards in {spec['dr_dir']}: running the toy DAG up to the reinforcement", flush=True)
    subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", str(os.cpu_count() or 1),
                    "--configfile", config_path, "--until", "reinforce", "--quiet"], cwd=REPO, check=True)


def resolve_seed(config: dict, run: str) -> int:
    seeds = config["runs"][run].get("seeds") or [config["runs"][run].get("seed", 0)]
    return seeds[0]


def run_specs(config: dict, seen_samples: int | None, **overrides) -> dict[str, dict]:
    from mobileclip_repro.config import resolve_run

    specs = {}
    for run in RUNS:
        raw = json.loads(json.dumps(config))
        raw["runs"][run].update(overrides)
        if seen_samples:
            raw["runs"][run]["seen_samples"] = seen_samples
        specs[run] = resolve_run(raw, run, seed=resolve_seed(config, run))
    return specs


# -- headline: the real trainer, side by side ---------------------------------------------------

def side_by_side(specs: dict[str, dict], repeats: int, tmp: Path) -> dict:
    from mobileclip_repro.train import train

    walls = {run: [] for run in RUNS}
    manifests = {}
    for repeat in range(repeats):
        for run in (RUNS if repeat % 2 == 0 else RUNS[::-1]):
            out = tmp / f"{run}_{repeat}"
            start = time.perf_counter()
            manifests[run] = train.train(specs[run], out, "cpu")
            walls[run].append(time.perf_counter() - start)
            print(f"  {run} repeat {repeat + 1}: {walls[run][-1]:.1f} s "
                  f"({specs[run]['seen_samples'] / walls[run][-1]:.0f} samples/s)", flush=True)
    per_sample = {run: statistics.median(walls[run]) / specs[run]["seen_samples"] for run in RUNS}
    flops = {run: manifests[run]["flops"]["per_step"] / specs[run]["global_batch_size"] for run in RUNS}
    return {"walls": walls, "per_sample": per_sample, "flops_per_sample": flops,
            "wall_ratio": per_sample["toy_dr"] / per_sample["toy_plain"],
            "flop_ratio": flops["toy_dr"] / flops["toy_plain"]}


# -- breakdown: the data path stage by stage ----------------------------------------------------

def data_breakdown(specs: dict[str, dict], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per sample of each stage, run one by one over the first shard (pair)."""
    from mobileclip_repro import models, shards
    from mobileclip_repro.replay import ReplayTransform

    plain, dr = specs["toy_plain"], specs["toy_dr"]
    datacomp_tar = shards.list_shards(plain["datacomp_dir"])[0]
    dr_tar = Path(dr["dr_dir"]) / datacomp_tar.relative_to(dr["datacomp_dir"])
    model, train_transform, _ = models.create_model_and_transforms(plain["model"])
    tokenizer = models.get_tokenizer(plain["model"])
    replay = ReplayTransform.from_open_clip(model)
    datacomp = list(shards.iter_raw_samples(datacomp_tar))
    reinforced = list(shards.iter_raw_samples(dr_tar))
    count = len(datacomp)
    images = [shards.decode_image(sample["jpg"]) for sample in datacomp]
    records = [shards.decode_reinforcement(sample, check_finite=False) for sample in reinforced]
    rng = random.Random(0)
    draws = [(rng.randrange(len(r.param_aug)), rng.randrange(len(r.syn_text))) for r in records]
    captions = [sample["txt"].decode() for sample in datacomp]

    def per_sample(fn) -> float:
        return median_seconds(fn, repeats) / count

    def checks():
        for sample in datacomp:
            json.loads(sample["json"])
            hashlib.sha256(sample["jpg"]).hexdigest()

    common = {
        "tar read (DataComp)": per_sample(lambda: list(shards.iter_raw_samples(datacomp_tar))),
        "checks (sha256 of the jpg, json)": per_sample(checks),
        "JPEG decode": per_sample(lambda: [shards.decode_image(sample["jpg"]) for sample in datacomp]),
    }
    plain_stages = dict(common)
    plain_stages["train transform (crop, resize, tensor, normalize)"] = per_sample(
        lambda: [train_transform(image) for image in images])
    plain_stages["tokenize (1 caption)"] = per_sample(lambda: [tokenizer([text]) for text in captions])
    dr_stages = dict(common)
    dr_stages["tar read (DataCompDR)"] = per_sample(lambda: list(shards.iter_raw_samples(dr_tar)))
    dr_stages["reinforcement decode (npz, json, checks)"] = per_sample(
        lambda: [shards.decode_reinforcement(sample, check_finite=False).all_finite() for sample in reinforced])
    dr_stages["replay (crop, resize, 2 RandAugment ops, tensor, normalize)"] = per_sample(
        lambda: [replay(image, record.param_aug[aug]) for image, record, (aug, _) in zip(images, records, draws)])
    dr_stages["tokenize (2 captions)"] = per_sample(
        lambda: [tokenizer([text, record.syn_text[syn]]) for text, record, (_, syn) in zip(captions, records, draws)])
    return {"toy_plain": plain_stages, "toy_dr": dr_stages}


# -- breakdown: the training step ---------------------------------------------------------------

def step_breakdown(specs: dict[str, dict], repeats: int, tmp: Path) -> dict[str, dict[str, float]]:
    from mobileclip_repro.train import train

    result = {}
    for run in RUNS:
        spec = specs[run]
        # The trainer's own setup (train.build_run: model, fused AdamW on the CPU, schedule, loss,
        # dataset) and the first batch of its data stream.
        trainer = train.build_run(spec, tmp / f"step_{run}", device_name="cpu")
        model, optimizer, loss_fn = trainer.model, trainer.optimizer, trainer.loss_fn
        batch = next(train.segment_batches(trainer, 0))
        texts = torch.cat([batch[1], batch[4]]) if spec["dr"] else batch[1]
        batch_size = len(batch[0])
        model.train()

        def forward_image():
            model.encode_image(batch[0], normalize=True)

        def forward_text():
            model.encode_text(texts, normalize=True)

        with torch.no_grad():
            out = model(batch[0], texts)

        def loss():
            if spec["dr"]:
                text_features, syn_features = out["text_features"].chunk(2)
                loss_fn(out["image_features"], text_features, out["logit_scale"], batch[2], batch[3],
                        syn_features, batch[5])
            else:
                loss_fn(out["image_features"], out["text_features"], out["logit_scale"])

        def step():
            train.train_step(trainer, batch, 0)

        step()  # warm-up (optimizer state allocation)
        parts = {"forward: image tower": median_seconds(forward_image, repeats) / batch_size,
                 f"forward: text tower ({len(texts) // batch_size} caption{'s' if len(texts) > batch_size else ''})":
                     median_seconds(forward_text, repeats) / batch_size,
                 "loss": median_seconds(loss, repeats) / batch_size}
        whole = median_seconds(step, repeats) / batch_size
        parts["backward + optimizer (rest of the step)"] = max(whole - sum(parts.values()), 0.0)
        path = tmp / f"checkpoint_{run}.pt"
        checkpoint_seconds = median_seconds(
            lambda: torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, path), repeats)
        parts["checkpoint writes"] = checkpoint_seconds * spec["num_checkpoints"] / spec["seen_samples"]
        result[run] = parts
    return result


# -- start-up and evaluation --------------------------------------------------------------------

def import_seconds(module: str) -> float:
    def once():
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO)
    return median_seconds(once, 3)


def evaluate_breakdown(config: dict, tmp: Path, repeats: int) -> dict[str, float]:
    from mobileclip_repro import checkpoints, models
    from mobileclip_repro.evaluate import evaluate
    from mobileclip_repro.train import train

    spec = run_specs(config, 1024, num_checkpoints=1, checkpoint_spacing="linear", warmup_steps=1)["toy_plain"]
    out = tmp / "eval_checkpoint"
    train.train(spec, out, "cpu")
    checkpoint = checkpoints.latest_checkpoint(out)
    benchmarks = evaluate.parse_benchmark_specs(config["evaluation"]["benchmarks"])
    batch_size = config["evaluation"]["batch_size"]

    def load():
        return models.create_model_and_transforms(spec["model"], pretrained=str(checkpoint))

    load_seconds = median_seconds(load, repeats)
    model, _, transform = load()
    model.eval()
    tokenizer = models.get_tokenizer(spec["model"])
    decoded = evaluate.DecodedSets()
    start = time.perf_counter()
    for benchmark in benchmarks:
        evaluate.run_benchmark(model, transform, tokenizer, benchmark, "cpu", batch_size, 0, decoded)
    first = time.perf_counter() - start

    def forwards():
        for benchmark in benchmarks:
            evaluate.run_benchmark(model, transform, tokenizer, benchmark, "cpu", batch_size, 0, decoded)

    forward_seconds = median_seconds(forwards, repeats)
    return {"model load (per checkpoint)": load_seconds,
            "benchmark-set decode (once per job)": max(first - forward_seconds, 0.0),
            "forwards + metrics (per checkpoint)": forward_seconds}


def flop_ratios() -> dict[str, dict[str, float]]:
    from mobileclip_repro import flops

    figures = {}
    for name, label in (("toy-student", "toy student (32 px, 16 tokens)"), ("ViT-B-16", "ViT-B-16 (224 px, 77 tokens)")):
        model = flops.meta_model(name)
        plain, dr = flops.training_flops_per_sample(model, 1), flops.training_flops_per_sample(model, 2)
        figures[label] = {"plain": plain, "dr": dr, "ratio": dr / plain, "text_share": (dr - plain) / plain}
    return figures


# -- output ---------------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title} (ms per sample)")
    for run, stages in rows.items():
        total = sum(stages.values())
        print(f"  {run}: {ms(total)} ms")
        for stage, seconds in stages.items():
            print(f"    {stage:<62} {ms(seconds):>8}  {100 * seconds / total:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/toy.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="side-by-side trainer runs per arm")
    parser.add_argument("--seen-samples", type=int, default=None, help="override both runs' seen_samples")
    parser.add_argument("--breakdown-repeats", type=int, default=5)
    parser.add_argument("--skip-runs", action="store_true", help="only the breakdowns (no headline ratio)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "src"))
    from mobileclip_repro.config import load_config

    config = load_config(args.config)
    ensure_data(args.config, config)
    specs = run_specs(config, args.seen_samples)
    load = os.getloadavg()
    print(f"{args.config}: {RUNS[1]} vs {RUNS[0]}, {specs[RUNS[0]]['seen_samples']:,} seen samples each, "
          f"{torch.get_num_threads()} thread, load average {load[0]:.2f} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="training_cost_") as tmp_name:
        tmp = Path(tmp_name)
        headline = None
        if not args.skip_runs:
            headline = side_by_side(specs, args.repeats, tmp)
        data = data_breakdown(specs, args.breakdown_repeats)
        step = step_breakdown(specs, args.breakdown_repeats, tmp)
        evaluation = evaluate_breakdown(config, tmp, args.breakdown_repeats)
    imports = {stage: import_seconds(f"mobileclip_repro.{module}")
               for stage, module in (("train", "train.train"), ("evaluate", "evaluate.evaluate"),
                                     ("report", "report.report"), ("toy-data", "toyworld"))}
    ratios = flop_ratios()

    print_table("Data path, stage by stage", data)
    print_table("Training step (batch of the run)", step)
    print("\nEvaluate job (s)")
    for part, seconds in evaluation.items():
        print(f"  {part:<40} {seconds:7.3f}")
    print("\nStart-up: import of the stage's module in a fresh interpreter (s)")
    for stage, seconds in imports.items():
        print(f"  {stage:<12} {seconds:6.2f}")
    print("\nStudent towers, forward + backward per sample (FlopCounterMode on the meta device)")
    for label, figure in ratios.items():
        print(f"  {label:<32} plain {figure['plain'] / 1e6:10.1f} MFLOP, DR {figure['dr'] / 1e6:10.1f} MFLOP: "
              f"ratio {figure['ratio']:.3f}, text tower {100 * figure['text_share'] / (1 + figure['text_share']):.0f}%"
              f" of a DR step")
    if headline is not None:
        print("\nThe trainer, side by side (wall per seen sample, median of "
              f"{args.repeats}; FLOPs of one real step, the runs' manifests)")
        for run in RUNS:
            print(f"  {run:<10} {ms(headline['per_sample'][run])} ms/sample "
                  f"({1 / headline['per_sample'][run]:.0f} samples/s), "
                  f"{headline['flops_per_sample'][run] / 1e6:.1f} MFLOP/sample, "
                  f"runs {', '.join(f'{w:.1f}' for w in headline['walls'][run])} s")
        over = headline["wall_ratio"] / headline["flop_ratio"]
        print(f"\nDR / plain wall per seen sample: {headline['wall_ratio']:.3f}x = {over:.3f} x the FLOP ratio "
              f"{headline['flop_ratio']:.3f} (target <= {TARGET:.2f}: {'met' if over <= TARGET else 'not met'})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
