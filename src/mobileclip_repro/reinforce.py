"""DataCompDR generation: turn DataComp shards into reinforced shards (reference.md §2-4).

For each image: ``num_samples`` random-resized-crop + RandAugment draws, stored as
``param_aug`` entries and embedded by the teacher ensemble *through the same replay the
student will use* (so ``image_emb[a]`` is exactly the teachers' view of ``param_aug[a]``);
the ground-truth caption and the synthetic captions embedded by the same teachers.

One output shard per input shard, same name, same keys, written atomically: a rerun skips
every shard that is already complete, and a half-written one is never mistaken for done.
Augmentations are drawn from a generator seeded by (seed, sample key), so a rerun, on any
number of workers, draws the same crops.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from mobileclip_repro import replay, shards
from mobileclip_repro.seeding import seed_from
from mobileclip_repro.teachers import ReinforceConfig, SyntheticCaptioner, TeacherEnsemble, build_captioner

DTYPES = ("float32", "bf16")


@dataclass
class PreparedSample:
    """One DataComp sample with its augmentations drawn and replayed, ready for the teachers."""
    key: str
    uid: str
    sha256: str
    url: str
    caption: str
    meta: dict
    param_aug: list
    views: torch.Tensor  # [num_samples, 3, S, S], normalized with the config's mean/std
    image: Image.Image | None  # kept only when the captioner looks at pixels


@dataclass
class Skipped:
    key: str
    reason: str


@dataclass
class ShardReport:
    shard: str
    samples_in: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    image_teacher_seconds: float = 0.0
    text_teacher_seconds: float = 0.0
    captioner_seconds: float = 0.0

    @property
    def teacher_seconds(self) -> float:
        return self.image_teacher_seconds + self.text_teacher_seconds

    def as_dict(self) -> dict:
        return {
            "shard": self.shard,
            "samples_in": self.samples_in,
            "written": self.written,
            "skipped": dict(sorted(self.skipped.items())),
            "seconds": round(self.seconds, 3),
            "teacher_seconds": round(self.teacher_seconds, 3),
            "teacher_share": round(self.teacher_seconds / self.seconds, 4) if self.seconds else None,
            "image_teacher_seconds": round(self.image_teacher_seconds, 3),
            "text_teacher_seconds": round(self.text_teacher_seconds, 3),
            "captioner_seconds": round(self.captioner_seconds, 3),
            "samples_per_second": round(self.samples_in / self.seconds, 2) if self.seconds else None,
        }


def draw_param_aug(config: ReinforceConfig, width: int, height: int, generator: torch.Generator) -> list:
    """``config.num_samples`` compressed augmentations for a ``width`` x ``height`` image."""
    return [
        replay.sample_param_aug(
            width, height, generator, size=config.crop_size, scale=config.crop_scale, ratio=config.crop_ratio,
            num_ops=config.rand_augment_num_ops if config.rand_augment else 0,
            magnitude=config.rand_augment_magnitude, num_magnitude_bins=config.rand_augment_num_magnitude_bins,
            p=config.rand_augment_p)
        for _ in range(config.num_samples)]


def augmentation_generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_from("param_aug", seed, key))


def prepare_sample(raw: dict, config: ReinforceConfig, seed: int, keep_image: bool) -> PreparedSample | Skipped:
    """Validate one raw DataComp sample and replay its augmentations; a Skipped names why not."""
    key = raw["__key__"]
    if not all(ext in raw for ext in shards.DATACOMP_KEYS):
        return Skipped(key, "missing_key")
    try:
        meta = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Skipped(key, "bad_json")
    if not isinstance(meta, dict) or "uid" not in meta or "sha256" not in meta:
        return Skipped(key, "missing_key")
    if shards.sha256_hex(raw["jpg"]) != str(meta["sha256"]).lower():
        return Skipped(key, "sha256_mismatch")
    try:
        caption = raw["txt"].decode("utf-8")
    except UnicodeDecodeError:
        return Skipped(key, "undecodable_caption")
    try:
        image = shards.decode_image(raw["jpg"])
    except (OSError, ValueError, Image.DecompressionBombError):
        return Skipped(key, "undecodable_image")
    url = raw["url.txt"].decode("utf-8", errors="replace") if "url.txt" in raw else meta.get("url", "")
    param_aug = draw_param_aug(config, image.width, image.height, augmentation_generator(seed, key))
    views = torch.stack([
        replay.replay_tensor(image, entry, config.crop_size, config.interpolation, config.mean, config.std)
        for entry in param_aug])
    return PreparedSample(key, str(meta["uid"]), meta["sha256"], url, caption, meta, param_aug, views,
                          image if keep_image else None)


class _PreparedShard(torch.utils.data.IterableDataset):
    """The samples of one shard, prepared in file order; worker w takes samples w, w+k, ...

    A DataLoader reads its workers round-robin, so with this split the samples come back
    in file order whatever the number of workers.
    """

    def __init__(self, path: Path, config: ReinforceConfig, seed: int, keep_images: bool):
        self.path, self.config, self.seed, self.keep_images = path, config, seed, keep_images

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for position, raw in enumerate(shards.iter_raw_samples(self.path)):
            if position % workers == worker:
                yield prepare_sample(raw, self.config, self.seed, self.keep_images)


def _unbatched(item):
    return item


def encode_pth(image_emb: torch.Tensor, text_emb: torch.Tensor) -> bytes:
    """The DataCompDR-12M-bf16 payload before compression: ``torch.save`` of two bf16 tensors.

    Stored under the ``pth.gz`` key, which webdataset's TarWriter gzips by itself.
    """
    buffer = io.BytesIO()
    torch.save({"image_emb": image_emb.to(torch.bfloat16).contiguous(),
                "text_emb": text_emb.to(torch.bfloat16).contiguous()}, buffer)
    return buffer.getvalue()


class Reinforcer:
    """Teachers + captioner + config: reinforces one shard at a time."""

    def __init__(self, config: ReinforceConfig, teachers: TeacherEnsemble, captioner: SyntheticCaptioner, *,
                 seed: int = 0, dtype: str = "float32", batch_size: int = 256, workers: int = 0):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.config, self.teachers, self.captioner = config, teachers, captioner
        self.seed, self.dtype, self.batch_size, self.workers = seed, dtype, batch_size, workers

    def reinforce_shard(self, source: Path, target: Path, progress: tqdm | None = None) -> ShardReport:
        report = ShardReport(shard=source.name)
        start = time.perf_counter()
        samples = torch.utils.data.DataLoader(
            _PreparedShard(source, self.config, self.seed, self.captioner.needs_images), batch_size=None,
            num_workers=self.workers, collate_fn=_unbatched)
        pending: list[PreparedSample] = []
        with shards.atomic_tar_writer(target, mtime=0) as writer:
            for item in samples:
                report.samples_in += 1
                if isinstance(item, Skipped):
                    report.skipped[item.reason] += 1
                else:
                    pending.append(item)
                if len(pending) * self.config.num_samples >= self.batch_size:
                    self._flush(pending, writer, report)
                    pending = []
                if progress is not None:
                    progress.update(1)
            self._flush(pending, writer, report)
        report.seconds = time.perf_counter() - start
        return report

    def _flush(self, pending: list[PreparedSample], writer, report: ShardReport) -> None:
        if not pending:
            return
        start = time.perf_counter()
        syn_texts = self.captioner.caption_batch(
            [sample.image for sample in pending], [sample.meta for sample in pending],
            [seed_from("captions", self.seed, sample.key) for sample in pending])
        report.captioner_seconds += time.perf_counter() - start
        counts = {len(syn) for syn in syn_texts}
        if len(syn_texts) != len(pending) or counts != {self.captioner.num_captions}:
            raise ValueError(f"captioner returned {sorted(counts)} captions per image for {len(syn_texts)} of "
                             f"{len(pending)} images, expected {self.captioner.num_captions} each")

        texts = [text for sample, syn in zip(pending, syn_texts) for text in [sample.caption, *syn]]
        start = time.perf_counter()
        image_emb = self.teachers.encode_images(torch.cat([sample.views for sample in pending]))
        report.image_teacher_seconds += time.perf_counter() - start
        start = time.perf_counter()
        text_emb = self.teachers.encode_texts(texts)
        report.text_teacher_seconds += time.perf_counter() - start

        image_rows = text_rows = 0
        for sample, syn in zip(pending, syn_texts):
            sample_image_emb = image_emb[image_rows:image_rows + len(sample.param_aug)]
            sample_text_emb = text_emb[text_rows:text_rows + 1 + len(syn)]
            image_rows += len(sample.param_aug)
            text_rows += 1 + len(syn)
            record = shards.dr_record(sample.key, sample.uid, sample.sha256, sample.url, syn, sample.param_aug,
                                      sample_image_emb.numpy(), sample_text_emb.numpy())
            if self.dtype == "bf16":
                del record["npz"]
                record["pth.gz"] = encode_pth(sample_image_emb, sample_text_emb)
            writer.write(record)
            report.written += 1




def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datacomp-dir", required=True, type=Path, help="DataComp shards (jpg, txt, json)")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the DataCompDR shards go (same names)")
    parser.add_argument("--reinforce-config", required=True, type=Path,
                        help="Apple's reinforcement JSON (teachers, num_samples, image_augmentation)")
    parser.add_argument("--pretrained-root", type=Path, default=None,
                        help="directory against which relative *.pt teacher entries in the JSON are resolved")
    captioner = parser.add_mutually_exclusive_group()
    captioner.add_argument("--captioner", choices=["world"], default=None,
                           help="the toy world's oracle captioner (reads toy_scene from each sample's json)")
    captioner.add_argument("--captioner-json", default=None,
                           help='captioner spec as JSON: "world" or {"coca": {"model_name": ..., "pretrained": ...}}')
    parser.add_argument("--num-syn-captions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", nargs="+", default=None, help="shard file names in --datacomp-dir (default: all)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="float32 writes npz; bf16 writes pth.gz (as DataCompDR-12M-bf16)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per teacher forward")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")
    parser.add_argument("--amp", action="store_true", help="run teachers and captioner under bf16 autocast")
    parser.add_argument("--workers", type=int, default=0, help="processes decoding and augmenting images")


def _captioner_spec(args: argparse.Namespace):
    if args.captioner_json is not None:
        try:
            return json.loads(args.captioner_json)
        except json.JSONDecodeError as error:
            raise ValueError(f"--captioner-json is not valid JSON: {error}") from error
    return args.captioner or "world"


def _select_shards(args: argparse.Namespace) -> list[Path]:
    if not args.datacomp_dir.is_dir():
        raise ValueError(f"--datacomp-dir {args.datacomp_dir} is not a directory")
    if args.shards is None:
        selected = shards.list_shards(args.datacomp_dir)
        if not selected:
            raise ValueError(f"no *.tar shards in {args.datacomp_dir}")
        return selected
    selected = [args.datacomp_dir / name for name in args.shards]
    missing = [path.name for path in selected if not path.is_file()]
    if missing:
        raise ValueError(f"shards not found in {args.datacomp_dir}: {missing}")
    return selected


def command(args: argparse.Namespace) -> int:
    if args.num_syn_captions < 1 or args.batch_size < 1 or args.workers < 0:
        raise ValueError("--num-syn-captions and --batch-size must be positive, --workers non-negative")
    sources = _select_shards(args)
    config = ReinforceConfig.load(args.reinforce_config)
    todo = [source for source in sources if not shards.is_readable_tar(args.out_dir / source.name)]
    for source in sources:
        if source not in todo:
            tqdm.write(f"{source.name}: already reinforced, skipped")
    if not todo:
        return 0

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    autocast_dtype = torch.bfloat16 if args.amp else None
    spec = _captioner_spec(args)
    teachers = TeacherEnsemble.from_config(config, pretrained_root=args.pretrained_root, device=device,
                                           autocast_dtype=autocast_dtype, batch_size=args.batch_size)
    captioner = build_captioner(spec, num_captions=args.num_syn_captions, device=device,
                                pretrained_root=args.pretrained_root, autocast_dtype=autocast_dtype)
    reinforcer = Reinforcer(config, teachers, captioner, seed=args.seed, dtype=args.dtype,
                            batch_size=args.batch_size, workers=args.workers)
    run_info = {"reinforce_config": str(args.reinforce_config), "teachers": list(config.model_names),
                "pretrained": list(teachers.pretrained), "dims": teachers.dims, "num_samples": config.num_samples,
                "captioner": spec, "num_syn_captions": args.num_syn_captions, "seed": args.seed,
                "dtype": args.dtype, "batch_size": args.batch_size, "device": device}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    totals = Counter()
    with tqdm(desc="reinforce", unit="sample", dynamic_ncols=True) as progress:
        for source in todo:
            report = reinforcer.reinforce_shard(source, args.out_dir / source.name, progress)
            summary = report.as_dict()
            shards.write_json_atomic(args.out_dir / f"{source.name}.manifest.json", {**summary, **run_info})
            totals.update(samples_in=report.samples_in, written=report.written)
            totals.update({f"skipped_{reason}": count for reason, count in report.skipped.items()})
            tqdm.write(f"{source.name}: {report.written}/{report.samples_in} written, skipped "
                       f"{dict(report.skipped) or 'none'}, {summary['samples_per_second']} samples/s, "
                       f"teachers {100 * (summary['teacher_share'] or 0):.0f}% of the time")
    tqdm.write(f"reinforced {len(todo)} shards: {dict(totals)}")
    return 0
