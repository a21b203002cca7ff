"""GPU figures in one run (issue 14): DR vs plain step, MFU, gradient accumulation, teachers, the smoke DAG on CUDA.

Prints one table and writes it, with every measurement behind it, as JSON (``--json``;
rewritten after each part, so a run cut short still leaves the parts it finished).
Made to run in <= 8 minutes on one GPU (``benchmarks/gpu_check.sh``); ``--smoke`` runs the
same code paths with tiny shapes on the CPU in well under a minute (``tests/test_benchmarks_gpu_check.py``).

1. **DR vs plain training step** (``--models``, default ViT-B-16 and MobileCLIP-B, random
   init; per-GPU batch ``--batch-size`` 256, the s30m runs' 8,192 over 32 GPUs). Each run's
   spec is the paper config's (``configs/paper/datacompdr12m.yaml`` for DR,
   ``configs/paper/datacomp12m.yaml`` for plain: precision ``amp``, AdamW settings, grad
   clipping, gradient checkpointing, distillation settings), resolved by the project's
   config loader with one process, the model, batch and workers replaced. What runs is the
   trainer itself: ``train.build_run`` builds the run (its dataset: ``DRSamples`` --
   DataComp + DataCompDR tars merge-joined, uid/sha256 checked, npz decoded, ``param_aug``
   replayed -- or ``PlainCLIPSamples``; AdamW with open_clip_train's weight-decay groups,
   the lr schedule, ``DRClipLoss`` / ``ClipLoss``, the autocast of the precision -- fp16 for
   ``amp`` on CUDA, bf16 for ``amp_bf16``; bf16 on the CPU -- with ``torch.amp.GradScaler``
   for ``amp`` on CUDA), ``train.segment_batches`` its DataLoader (``workers``, pinned on
   CUDA, prefetch 4), and ``train.train_step`` steps it (the forward, the finite-loss
   check, clip, step, logit-scale clamp). Data: synthetic web-size JPEGs written by the
   script with the project's writers (``shards.datacomp_record`` / ``shards.dr_record``,
   ``atomic_tar_writer``): images from ``dr_pipeline_cpu.natural_image`` (short side
   256-1024 px, photo-like, q90), ``num_samples`` ``param_aug`` entries per image drawn by
   ``reinforce.draw_param_aug`` with DataCompDR-12M's augmentation config, and per-member
   L2-normalised random teacher embeddings of the config's width (2 x 768).

   Timing: every step is synchronised (the trainer's finite-loss check already syncs;
   ``torch.cuda.synchronize`` after the step makes it exact). Warm-up steps run until the
   loader's initial backlog (up to workers x prefetch batches) is gone -- the first step
   that waits for data after ``--warmup-steps`` -- or ``--max-warmup-steps`` (auto:
   enough to drain a full backlog when the loader gives at most half the step's rate);
   then ``--steps`` timed steps. Reported per model and data: samples/s, the data
   loader's share of step time (time blocked in ``next(loader)`` / step wall time), the
   same step replayed ``--compute-steps`` times on one device-resident batch (compute
   only: what the GPU alone would give), the loader alone (the same iterator, ``--steps``
   batches after its backlog: what the workers produce), and DR/plain step time per
   sample (target <= 1.05x). When the loader is nearly as fast as the step, a backlog
   left after ``--max-warmup-steps`` can flatter the samples/s; the loader-only and
   compute-only figures bound it.

2. **MFU** of the first model's step (ViT-B-16): model FLOPs per sample x samples/s /
   dense peak. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one
   forward + loss + backward of the very step (the run's ``train._forward`` on 4 rows of a real
   batch), with gradient checkpointing off so recomputation is not counted (model FLOPs,
   not hardware FLOPs) and SDPA on its math backend so attention is counted on any device.
   Peak: ``--peak-tflops``, else the datasheet dense bf16/fp16 tensor peak of the GPU by
   name (``PEAK_TFLOPS``; H100 SXM and H200 989, A100 312), else -- CPU, unknown GPU --
   a measured matmul rate, labelled as such. Target >= 40 %, for the DR and plain step
   through the data pipeline; the compute-only MFU says what is lost to the loader.

3. **Gradient accumulation** (``accum_freq``) at the paper's shapes: the first model's DR step
   (ViT-B-16; the DR run's spec as in part 1) through ``train.train_step`` (each arm's model
   with the trainer's optimizer, schedule, scaler and loss: ``train.build_training``) on one
   batch of the DR loader already on the device, in three arms: ``--batch-size`` rows in one pass (256: the
   recipes' per-GPU batch), ``--accum-freq`` x that many rows in ``--accum-freq`` micro-batches
   of ``--batch-size`` (1,024 rows in 4 x 256: what 8 GPUs run for the recipes' global batch,
   ``configs/paper/s30m-8gpu.yaml``), and those rows in one pass (what 8 GPUs need without
   accumulation). Each arm builds its own model and optimizer, takes 2 warm-up steps, then
   ``--compute-steps`` timed steps (synchronised). Reported: samples/s of each arm, the time
   per seen sample of the accumulated step over each of the others, the FLOPs per seen sample
   of each step as the trainer counts them (``flops.count_flops`` over ``train.train_step``:
   with checkpointing on, recomputation included), and on CUDA the peak memory of each arm's
   timed steps (``torch.cuda.max_memory_allocated``: weights, optimizer state, activations).
   An arm that runs out of memory is reported as such; the others stand.
   ``benchmarks/accumulation.py`` prints the CPU counterpart and the activation memory the
   micro-batches save at these shapes, counted on the meta device.

4. **Teacher throughput** for reinforcement: two ``--teacher-model`` (ViT-L-14, random
   init via ``TeacherEnsemble(..., [None, None])``), bf16 autocast on CUDA
   (``reinforce.autocast_dtype``), DataLoader workers (``reinforce.resolve_workers``), the
   real ``reinforce.Reinforcer.reinforce_shard`` on a shard made by
   ``reinforce_teacher_share.make_shard`` (toy scenes at ``--teacher-image-side`` px), for
   each of ``--views`` (30 = DataCompDR-12M, 10 = DataCompDR-1B). As in
   ``reinforce_teacher_share.py`` the captioner is the toy world's oracle, not CoCa: the
   synthetic-caption cost is not included. Reported: images/s per GPU (whole reinforce job
   wall time, worker start-up included), the teacher-forward share of it (target >= 90 %),
   and GPU-hours for 12.8M images x 30 views and 1.28B images x 10 views at those rates.

5. **The smoke toy DAG on CUDA**: ``snakemake`` with ``configs/toy-smoke.yaml`` plus an
   overlay written to a temporary file (``results_dir`` in a temporary directory,
   ``gpus_per_node: 1`` for every run and teacher, ``evaluation.device: auto``), first
   validated by the project's config loader. On CUDA it runs end to end (``--dag-cores``,
   all CPUs; ``--dag-timeout``) and the outputs are checked: snakemake exits 0, the
   report tables (``report/results.csv``, ``results.md``) are written and name every run,
   and every manifest that records a device (train jobs, teachers, reinforced shards)
   names ``cuda``. Elsewhere (``--dag auto`` off CUDA, and ``--smoke``) only
   ``snakemake -n -p`` on the same overlay: the plan must contain jobs, the evaluation
   jobs with device ``auto`` and the train specs with ``gpus_per_node`` 1 (the full
   smoke DAG on the CPU is ``tests/test_dag.py``'s).

``--smoke``: toy-student and toy-teacher students at batch 8 (gradient checkpointing off,
which costs a 3M-parameter model a second a step on 2 cores), 2 workers, 3 timed steps, 16
images in 2 shards with 3 augmentations; toy-teacher teachers with ``configs/reinforce/
toy.json`` on 4 images x 2 and 1 views; accumulation on toy-student (8 rows, 4 x 8, 32); the DAG as a
dry run; peak measured. About 35 s
of CPU time (imports included). Its figures exercise the code; they measure nothing of interest.

The parts live in ``benchmarks/gpu_check_parts/``, one module per part (``training``, ``mfu``,
``accumulation``, ``teachers``, ``dag``), with the one writer of every synthetic shard they read
(``synthetic_shards``), what they share (``common``: the paper run specs) and the table
(``table``); this script parses the options, writes the data, runs the parts and the JSON.

Run (exits 0 whatever the figures; 1 if a part failed, its error in the JSON):

    benchmarks/gpu_check.sh [options]                        # -> $OUT or results/gpu_check/
    .venv/bin/python benchmarks/gpu_check.py [--smoke] [--json PATH] [--parts train,mfu,accum,teachers,dag]
        [--device auto] [--models ViT-B-16,MobileCLIP-B] [--batch-size 256] [--workers auto]
        [--steps 30] [--compute-steps 10] [--warmup-steps 5] [--max-warmup-steps auto]
        [--precision config|amp|amp_bf16|fp32] [--grad-checkpointing config|on|off]
        [--images 1024] [--shards 16] [--num-augs 30] [--peak-tflops X] [--accum-freq 4]
        [--teacher-model ViT-L-14] [--teacher-images 512] [--teacher-image-side 512] [--views 30,10]
        [--teacher-batch-size 256] [--teacher-workers auto] [--dag auto|run|dry-run|skip]
        [--dag-cores N] [--dag-timeout 300] [--keep-data DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check_parts, dr_pipeline_cpu, reinforce_teacher_share

from gpu_check_parts.accumulation import part_accum  # noqa: E402
from gpu_check_parts.common import FLOP_ROWS  # noqa: E402
from gpu_check_parts.dag import check_dag_outputs, part_dag  # noqa: E402,F401 - check_dag_outputs: the tests'
from gpu_check_parts.mfu import part_mfu, peak_tflops_for  # noqa: E402,F401 - peak_tflops_for: the tests'
from gpu_check_parts.synthetic_shards import make_data  # noqa: E402
from gpu_check_parts.table import print_table, table_rows  # noqa: E402
from gpu_check_parts.teachers import DATASETS, part_teachers  # noqa: E402
from gpu_check_parts.training import part_train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "mobileclip_repro/gpu-check/1"
PARTS = ("train", "mfu", "accum", "teachers", "dag")

SMOKE = dict(models="toy-student,toy-teacher", batch_size=8, workers="2", steps=3, compute_steps=2,
             warmup_steps=2, max_warmup_steps="3", images=16, shards=2, num_augs=3, teacher_model="toy-teacher",
             teacher_images=4, teacher_image_side=128, views="2,1", teacher_batch_size=16, teacher_workers="0",
             grad_checkpointing="off")  # checkpointing costs a 3M-parameter model ~1 s a step on 2 cores
FULL = dict(models="ViT-B-16,MobileCLIP-B", batch_size=256, workers="auto", steps=30, compute_steps=10,
            warmup_steps=5, max_warmup_steps="auto", images=1024, shards=16, num_augs=30, teacher_model="ViT-L-14",
            teacher_images=512, teacher_image_side=512, views="30,10", teacher_batch_size=256, teacher_workers="auto",
            grad_checkpointing="config")


def environment(device) -> dict:
    import open_clip
    import torch

    cuda = device.type == "cuda"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    try:  # DataLoader workers hand batches over in /dev/shm: 256 x 3 x 224 x 224 float32 is 154 MB a batch
        shm = os.statvfs("/dev/shm")
        shm_free_gib = shm.f_bavail * shm.f_frsize / 2**30
    except OSError:
        shm_free_gib = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor()
            or platform.machine(), "cuda": torch.version.cuda if cuda else None, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "git_commit": commit or None, "dev_shm_free_gib": shm_free_gib}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps (the CPU test)")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "gpu_check" / "gpu_check.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--models", help="training-step models; the first one gets the MFU (default ViT-B-16,MobileCLIP-B)")
    parser.add_argument("--batch-size", type=int, help="per-GPU batch (default 256)")
    parser.add_argument("--workers", help="DataLoader workers of the training step (auto: CPUs - 2)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 30)")
    parser.add_argument("--compute-steps", type=int, help="compute-only steps per run (default 10)")
    parser.add_argument("--warmup-steps", type=int, help="warm-up steps at least (default 5)")
    parser.add_argument("--max-warmup-steps", help="warm-up steps at most (auto: 3 x workers x prefetch + warm-up)")
    parser.add_argument("--precision", default="config", choices=("config", "amp", "amp_bf16", "fp32"),
                        help="config: the paper configs' (amp: fp16 autocast + GradScaler on CUDA)")
    parser.add_argument("--grad-checkpointing", choices=("config", "on", "off"),
                        help="config: the paper configs' (on); --smoke: off")
    parser.add_argument("--images", type=int, help="distinct training images (default 1024)")
    parser.add_argument("--shards", type=int, help="training shards (default 16)")
    parser.add_argument("--num-augs", type=int, help="param_aug entries per DR image (default 30)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense peak for the MFU (default: by GPU name)")
    parser.add_argument("--accum-freq", type=int, default=4,
                        help="micro-batches of --batch-size rows in the accumulation part's accumulated arm (default 4)")
    parser.add_argument("--teacher-model", help="architecture of both teachers (default ViT-L-14)")
    parser.add_argument("--teacher-images", type=int, help="images in the teacher shard (default 512)")
    parser.add_argument("--teacher-image-side", type=int, help="short side of those JPEGs (default 512)")
    parser.add_argument("--views", help="views per image for the 12M and the 1B estimate (default 30,10)")
    parser.add_argument("--teacher-batch-size", type=int, help="views per teacher forward (default 256)")
    parser.add_argument("--teacher-workers", help="reinforce DataLoader workers (auto: CPUs - 1 on CUDA)")
    parser.add_argument("--dag", default="auto", choices=("auto", "run", "dry-run", "skip"),
                        help="auto: run on CUDA, dry-run elsewhere and with --smoke")
    parser.add_argument("--dag-precision", default=None, choices=("amp", "amp_bf16", "fp32"),
                        help="also set the smoke runs' precision (default: the config's)")
    parser.add_argument("--dag-cores", type=int, default=None, help="snakemake --cores (default: all CPUs)")
    parser.add_argument("--dag-timeout", type=int, default=300, help="seconds before the DAG counts as failed")
    parser.add_argument("--keep-data", type=Path, default=None, help="write the shards and DAG results here and keep them")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.views = [int(v) for v in str(args.views).split(",")]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts takes a subset of {','.join(PARTS)}, got {args.parts!r}")
    if "mfu" in parts and "train" not in parts:
        parser.error("--parts mfu needs train (the MFU uses its samples/s)")
    if args.dag == "skip":
        parts = [p for p in parts if p != "dag"]
    args.parts = parts
    if len(args.views) != len(DATASETS) or min(args.views) < 1:
        parser.error("--views takes two positive counts: for DataCompDR-12M, then for DataCompDR-1B")
    if args.accum_freq < 2:
        parser.error("--accum-freq takes 2 or more micro-batches")
    if not args.models or args.batch_size < FLOP_ROWS or args.steps < 1 or args.compute_steps < 1:
        parser.error(f"need --models, --batch-size >= {FLOP_ROWS}, --steps >= 1 and --compute-steps >= 1")
    if args.images < args.shards or args.shards < 1:
        parser.error("need --shards >= 1 and --images >= --shards")
    cpus = os.cpu_count() or 1
    args.workers = max(1, cpus - 2) if args.workers == "auto" else int(args.workers)
    args.max_warmup_steps = None if args.max_warmup_steps == "auto" else int(args.max_warmup_steps)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    parts = set(args.parts)
    member_dims = [768, 768]  # DataCompDR's two ViT-L-14 teachers: the paper configs' distill.teacher_dimension
    root = args.keep_data or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    payload: dict = {"schema": SCHEMA, "mode": "smoke" if args.smoke else "full", "parts": args.parts,
                     "errors": {}, "finished": False}
    try:
        # Imported once here, so the forked data writers inherit them (open_clip takes seconds to import).
        import torch

        import dr_pipeline_cpu  # noqa: F401
        import reinforce_teacher_share  # noqa: F401
        from mobileclip_repro import devices  # noqa: F401
        from mobileclip_repro.reinforce import reinforce  # noqa: F401
        from mobileclip_repro.train import train  # noqa: F401

        # Data first, in forked processes, before anything touches CUDA.
        print(f"making data in {root} ...", flush=True)
        data_info = make_data(root, args, parts, member_dims)
        device = devices.resolve_device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
            torch.cuda.set_device(device)
        else:  # the DataLoader workers take the other cores; torch's threads crawl on oversubscribed ones
            torch.set_num_threads(1)
            os.environ["OMP_NUM_THREADS"] = "1"  # what train.build_run sets on the CPU
        payload["environment"] = environment(device)
        payload["data"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in data_info.items()}
        print(f"data made in {data_info['seconds']:.1f} s; device {device} ({payload['environment']['device_name']})",
              flush=True)

        def attempt(part: str, fn):
            if part not in parts:
                return None
            print(f"[{part}]", flush=True)
            started = time.perf_counter()
            try:
                payload[part] = fn()
                payload[part]["part_seconds"] = time.perf_counter() - started
                for name, error in payload[part].get("errors", {}).items():
                    payload["errors"][f"{part} {name}"] = error
            except Exception:  # noqa: BLE001 - one failed part must not lose the others' figures
                payload["errors"][part] = traceback.format_exc()
                print(payload["errors"][part], file=sys.stderr, flush=True)
            payload["table"] = table_rows(payload)
            payload["seconds"] = time.perf_counter() - wall
            write_json(args.json, payload)
            return payload.get(part)

        train_result = attempt("train", lambda: part_train(args, device, data_info, root, parts))
        if "mfu" in parts and train_result is None:
            payload["errors"]["mfu"] = "no training figures (the train part failed)"
        elif train_result is not None:
            attempt("mfu", lambda: part_mfu(args, device, train_result))
        attempt("accum", lambda: part_accum(args, device, data_info, root))
        attempt("teachers", lambda: part_teachers(args, device, data_info, root))
        attempt("dag", lambda: part_dag(args, device, root))
        payload["finished"] = True
        payload["table"] = table_rows(payload)
        payload["seconds"] = time.perf_counter() - wall
        write_json(args.json, payload)
        print_table(payload)
        print(f"\ntotal {payload['seconds']:.1f} s; JSON: {args.json}")
    finally:
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if payload["errors"] else 0


def write_json(path: Path, payload: dict) -> None:
    from mobileclip_repro import shards

    shards.write_json_atomic(path, payload)


if __name__ == "__main__":
    sys.exit(main())
