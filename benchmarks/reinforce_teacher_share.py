"""Share of reinforcement wall time spent inside the teachers' forward passes (issue 4, item 2).

What runs: the project's real ``reinforce.Reinforcer.reinforce_shard`` -- DataLoader (sha256
check, jpg decode, ``num_samples`` random-resized-crop + RandAugment draws replayed at 224 px),
captioner, ``TeacherEnsemble`` image and text forwards, background writer (npz records, tar) --
on one generated DataComp-format shard, with:

* the paper's teachers' architecture: two open_clip ``ViT-L-14`` (``--model``), **random
  init**, built by open_clip's factory with ``pretrained=None`` (the Python API's way of
  asking for no weights; a reinforcement JSON cannot ask for it). Nothing is downloaded, and
  a forward pass costs what a pretrained one does;
* the paper's augmentation config, ``configs/reinforce/datacompdr12m.json``, with its
  ``num_samples`` replaced by ``--num-samples``;
* the toy world's oracle captioner (``world``), not CoCa ViT-L-14: a random-init CoCa
  cannot caption (open_clip leaves its decoder projection uninitialised) and its 30-step
  decoding at ViT-L size would take minutes per image on this CPU. The captioner's time is
  reported, and it is not teacher time.
* images: toy-world scenes (``toyworld.generate_scene`` / ``render``) upscaled bicubic to a
  web-like short side (``--image-side``, 512 px) with mild noise, JPEG quality 90, their
  scene in the ``json`` so the world captioner can describe them.

Printed: ``teacher forward share of wall time: NN.N% (target >= 90%)`` -- the shard report's
``teacher_seconds / seconds``, the same numbers every per-shard manifest carries -- then where
the rest went (data wait, captioner, teacher image / text, writer wait, other), the writer
thread's own (overlapped) time, and per image: the teachers' time and the non-teacher
overhead of the main loop, plus the decode + replay cost of one image measured on its own
(in this process, outside the run), which says how many ``--workers`` a faster device
needs to keep the teachers fed.

Defaults depend on the device: on the CPU (2 cores here) ``--images 4 --num-samples 2``
(a ViT-L-14 forward of one 224 px view takes seconds there; about 2.5 minutes in all); on CUDA
``--images 512 --num-samples 30`` (DataCompDR-12M's 30 augmentations), bf16 autocast and
one DataLoader worker per core but one (``--workers auto``). Before the timed run, a
warm-up (one sample prepared; one teacher batch on CUDA, one view and one caption on the
CPU) keeps a process's one-off costs out of it, as ~1k shards per job amortise them.

Run (exits 0 whatever the share):

    .venv/bin/python benchmarks/reinforce_teacher_share.py [--images N] [--num-samples A]
        [--model ViT-L-14] [--batch-size 256] [--workers auto|N] [--device auto] [--amp auto]
        [--dtype float32|bf16] [--image-side 512] [--seed 0]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.90


def make_shard(path: Path, images: int, image_side: int, seed: int) -> None:
    """One DataComp shard of toy scenes at web size (jpg, txt, json with uid/sha256/toy_scene, url.txt)."""
    from PIL import Image

    from mobileclip_repro import shards, toyworld

    rng = np.random.default_rng(seed)
    with shards.atomic_tar_writer(path, mtime=0) as writer:
        for index in range(images):
            scene = toyworld.generate_scene(rng)
            image = toyworld.render(scene, rng)
            if image_side > 0:
                scale = image_side / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     Image.Resampling.BICUBIC)
                noise = rng.normal(0.0, 3.0, (image.height, image.width, 3))
                image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            uid = rng.bytes(16).hex()
            writer.write(shards.datacomp_record(shards.sample_key(0, index), buffer.getvalue(),
                                                toyworld.alt_text(scene, rng), uid, f"https://toy.invalid/{uid}.jpg",
                                                extra_meta={"toy_scene": scene}))


def prep_seconds_per_image(shard: Path, config, limit: int = 32) -> float:
    """Decode + sha256 + draw + replay of one image, in this process (what one worker does per image)."""
    from mobileclip_repro import shards
    from mobileclip_repro.reinforce.reinforce import prepare_sample

    import torch

    raws = [raw for _, raw in zip(range(limit), shards.iter_raw_samples(shard))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        start = time.perf_counter()
        for raw in raws:
            prepare_sample(raw, config, 0, keep_image=False)
        return (time.perf_counter() - start) / len(raws)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="images in the shard (default: 4 on CPU, 512 on CUDA)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="augmentations per image (default: 2 on CPU, 30 on CUDA)")
    parser.add_argument("--model", default="ViT-L-14", help="open_clip architecture of both teachers")
    parser.add_argument("--batch-size", type=int, default=256, help="views (or captions) per teacher forward")
    parser.add_argument("--workers", default="auto", help="DataLoader workers (auto: 0 on CPU, cores - 1 on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bf16"))
    parser.add_argument("--image-side", type=int, default=512, help="short side of the JPEGs (0: toy size, 48-96 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the warm-up (one sample prepared, one teacher batch: a full one on CUDA, "
                             "one view and one caption on the CPU) that keeps one-off costs out of the run")
    args = parser.parse_args(argv)

    import torch

    from mobileclip_repro import devices, shards
    from mobileclip_repro.reinforce import reinforce
    from mobileclip_repro.teachers import ReinforceConfig, TeacherEnsemble, build_captioner

    device = devices.resolve_device(args.device)
    cuda = device.type == "cuda"
    images = args.images or (512 if cuda else 4)
    num_samples = args.num_samples or (30 if cuda else 2)
    workers = reinforce.resolve_workers(reinforce.parse_workers(args.workers), device)
    amp = devices.autocast_dtype(args.amp, device)

    raw = json.loads((REPO / "configs" / "reinforce" / "datacompdr12m.json").read_text())
    raw["num_samples"] = num_samples
    raw["model_name"] = f"{args.model},{args.model}"
    config = ReinforceConfig.from_dict(raw)

    with tempfile.TemporaryDirectory(prefix="reinforce_share_") as tmp:
        source, target = Path(tmp) / "datacomp" / "00000000.tar", Path(tmp) / "dr" / "00000000.tar"
        start = time.perf_counter()
        make_shard(source, images, args.image_side, args.seed)
        made = time.perf_counter() - start
        start = time.perf_counter()
        teachers = TeacherEnsemble(config.model_names, [None] * len(config.model_names), device=device,
                                   autocast_dtype=amp, batch_size=args.batch_size)
        teachers.check_image_size(config.crop_size)
        built = time.perf_counter() - start
        captioner = build_captioner("world", num_captions=5, device=device)
        reinforcer = reinforce.Reinforcer(config, teachers, captioner, seed=args.seed, dtype=args.dtype,
                                          batch_size=args.batch_size, workers=workers)
        warmup = not args.no_warmup
        if warmup:  # a job reinforces ~1k shards per process: its one-off costs are not part of the steady state
            reinforce.prepare_sample(next(shards.iter_raw_samples(source)), config, args.seed, keep_image=False)
            views, texts = (1, 1)
            if cuda:
                views, texts = min(args.batch_size, images * num_samples), min(args.batch_size, 6 * images)
            teachers.encode_images(torch.zeros(views, 3, config.crop_size, config.crop_size))
            teachers.encode_texts([f"warm-up caption {i}" for i in range(texts)])
        threads = torch.get_num_threads()

        report = reinforcer.reinforce_shard(source, target).as_dict()
        prep = prep_seconds_per_image(source, config)
        paper = ReinforceConfig.from_dict({**raw, "num_samples": 30})
        prep_paper = prep if num_samples == 30 else prep_seconds_per_image(source, paper, limit=8)

    if report["written"] != images:
        print(f"error: {report['written']} of {images} samples written: {report['skipped']}", file=sys.stderr)
        return 1
    share = report["teacher_share"]
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, "
          f"{threads} torch threads, amp {str(amp).replace('torch.', '') if amp else 'off'}; teachers "
          f"{' + '.join(config.model_names)} (random init, dims {teachers.dims}), captioner world; "
          f"{images} images (short side {args.image_side or 'toy'} px) x {num_samples} augmentations at "
          f"{config.crop_size} px, batch {args.batch_size} ({reinforcer.images_per_batch} images per batch), "
          f"workers {workers}, dtype {args.dtype}")
    print(f"(not timed: shard made in {made:.1f} s, teachers built in {built:.1f} s"
          f"{', one warm-up batch' if warmup else ''})")
    print()
    print(f"teacher forward share of wall time: {100 * share:.1f}% "
          f"(target >= {100 * TARGET:.0f}%: {'met' if share >= TARGET else 'NOT met'})")
    print()
    seconds = report["seconds"]
    rows = [("data prep / replay (waiting for samples)", report["data_seconds"]),
            ("views to the device, normalized", report["upload_seconds"]),
            ("captioner", report["captioner_seconds"]),
            ("teacher image forward", report["image_teacher_seconds"]),
            ("teacher text forward", report["text_teacher_seconds"]),
            ("writing (waiting for the writer thread)", report["write_seconds"]),
            ("other (batching, bookkeeping)", report["other_seconds"])]
    for name, value in rows:
        print(f"  {name:<44} {value:9.3f} s  {100 * value / seconds:5.1f}%")
    print(f"  {'wall time of the shard':<44} {seconds:9.3f} s  100.0%")
    print(f"  {'writer thread busy (overlapped, not above)':<44} {report['writer_busy_seconds']:9.3f} s")
    overhead = seconds - report["teacher_seconds"]
    print()
    print(f"per image: teachers {1e3 * report['teacher_seconds'] / images:.1f} ms, everything else on the main "
          f"loop {1e3 * overhead / images:.1f} ms ({report['samples_per_second']} images/s overall)")
    print(f"decode + replay per image on one core (1 thread, as in a worker, outside the run): "
          f"{1e3 * prep:.1f} ms for {num_samples} views, {1e3 * prep_paper:.1f} ms for 30 (DataCompDR-12M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
