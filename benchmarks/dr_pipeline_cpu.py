"""CPU cost per sample of the DR sample pipeline vs open_clip_train's plain webdataset pipeline.

What is measured (single process, ``torch.set_num_threads(1)``, ``time.process_time()``,
a full pass over the same synthetic DataComp shards on each side, best of ``--repeats``
passes, the sides interleaved so drift hits both alike):

* DR (the project's real code): ``mobileclip_repro.train.samples.DRSamples(...).examples()`` --
  read a DataComp tar and its DataCompDR tar, merge-join them by key, check uid / sha256 of
  the jpg bytes, decode the npz embeddings (+ finite check), decode the jpg and replay the
  stored ``param_aug`` entry (crop -> 224 px bicubic resize -> RandAugment ops -> to_tensor
  -> normalize) with ``ReplayTransform.from_open_clip`` of the ViT-B-16 student.
* Baseline (open_clip_train 3.x, webdataset 1.0.2): the stages of
  ``open_clip_train.data.get_wds_dataset`` for training without resampling --
  SimpleShardList / detshuffle2 / split_by_node / split_by_worker /
  tarfile_to_samples_nothrow (with webdataset 1.0's end-of-shard markers dropped, see
  below) / [shuffle] / select(filter_no_caption_or_no_image) /
  decode("pilrgb") / rename(image="jpg;png;jpeg;webp", text="txt") /
  map_dict(image=<ViT-B-16 train transform>) / to_tuple("image", "text"); the train
  transform is open_clip's (RandomResizedCrop 224, scale (0.9, 1), bicubic; to tensor;
  normalize).

Tokenization is excluded on both sides (the plain side has no ``text=tokenizer`` in
map_dict, DRSamples.examples() does not tokenize), and so is batching/collation.
Shuffling is the same on both sides: off by default (``--shuffle-buffer 0``; DRSamples
gets a buffer of 1, which keeps the order), or an equal sample buffer on both sides.

Target (issue 3, item 6): DR / plain CPU time per sample <= 1.10x.

Reading the result: the DR side does strictly more work per sample (second tar, join,
sha256, npz, 2 RandAugment ops) but resizes a smaller crop -- DataCompDR's stored crops are
RandomResizedCrop scale (0.08, 1), open_clip's train crop is scale (0.9, 1) -- and the
bicubic antialiased resize costs in proportion to the crop area. The "DR minus plain"
table shows both effects separately.

Also printed: where each pipeline's time goes, measured by running the same steps one by
one on the same samples, in the same order and with the same augmentations (the replayed
pixels are checked to be identical to the pipeline's; fastest of ``--breakdown-repeats``
passes, interleaved with the timed ones), plus the residual that the step timings do not
account for (generator plumbing, checks, dataclass, and run-to-run noise).

CPU time is not immune to other load on the machine (shared caches, memory bandwidth):
the load average is printed at the start and the end; compare runs on a quiet machine.

Data (made in a temporary directory, removed at the end): ``--samples`` (512) RGB JPEGs,
quality 90, short side log-uniform in 256..1024 px and aspect (w/h) log-uniform in
0.6..1.8, with smooth gradients, shapes and mild sensor-like noise; DataComp shards written
with ``shards.datacomp_record`` and DataCompDR shards with ``shards.dr_record``: 30
``param_aug`` entries per image from ``replay.sample_param_aug(..., size=224)``,
float32 ``image_emb`` [30, 1536] and ``text_emb`` [6, 1536], 5 synthetic captions.

**Against Apple's loader** (issue 21, item 4; with ``--apple-open-clip`` and
``--apple-ml-mobileclip``, two git repositories, checkouts or bare mirrors, of
mlfoundations/open_clip and apple/ml-mobileclip: GitHub is not reachable from the machines
this project runs on, so the benchmark takes them from the user and never installs them).
The benchmark follows Apple's training README in a temporary folder: open_clip at the
pinned commit 7260a46, ``training/open_clip_v2.patch`` applied, ``training/dr`` and
``mobileclip2/`` copied in. A child process with that tree first on its path runs the
patched ``get_wds_dataset`` with ``--dataset-reinforcement`` as Apple's DataCompDR-12M script
sets it up (resampled shards, ``datacompdr12m.json``, ViT-B-16's train transform and
tokenizer, batch 32, no workers); beside it the project's ``DRSamples`` in a DataLoader
(resampled, no shard cache, the uncached tokenizer). Both read the same joined-layout shards
(``shards.join_shards`` of the data above) and give the same six tensors per batch. Samples/s
wall, 1 thread, the clock started after the first batch (both sample shuffle buffers 1,000,
full before the first sample), passes alternating, the median of ``--repeats`` per side:
``project DR loader / Apple's loader, samples/s: N.NNx (target >= 1.0)``. ``--apple-only``
skips the comparison with the plain pipeline.

Run (about 85 s of CPU at the defaults, single-threaded, so about as long on an idle 2-core
machine; longer under other load; exits 0 whatever the ratio):

    .venv/bin/python benchmarks/dr_pipeline_cpu.py [--samples 512] [--shards 4] [--seed 0]
        [--repeats 3] [--breakdown-repeats 2] [--shuffle-buffer 0] [--keep-data DIR]
        [--apple-open-clip REPO --apple-ml-mobileclip REPO [--apple-samples 1024] [--apple-only]]
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

TARGET_RATIO = 1.10
NUM_AUGS = 30          # DataCompDR-12M: num_samples = 30
EMBEDDING_DIM = 1536   # summed width of the two teachers
NUM_SYN = 5
SIZE = 224


# -- synthetic data ------------------------------------------------------------------------

WORDS = ("a photo of the dog cat red blue small large wooden table on in with near old new street house "
         "car tree man woman child beach sunset city night food plate white black green garden view "
         "mountain river bridge window door room light kitchen vintage modern portrait close up").split()


def caption(rng: np.random.Generator, lo: int = 4, hi: int = 16) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def natural_image(rng: np.random.Generator, noise_tiles: list[np.ndarray]):
    """An RGB PIL image sized like a web image, with photo-like (not noise-like) content.

    Smooth colour gradients and soft-edged shapes (drawn at half size, then upscaled
    bicubic), plus mild luma and chroma noise cropped from precomputed tiles.
    """
    from PIL import Image, ImageDraw

    short = int(round(np.exp(rng.uniform(np.log(256), np.log(1024)))))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))  # width / height
    width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    small = (max(1, width // 2), max(1, height // 2))
    # Background: a coarse random colour grid, bicubic-upscaled (gradients, soft blobs).
    grid = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize(small, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    sw, sh = small
    for _ in range(int(rng.integers(4, 14))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, x1 = sorted(rng.integers(-sw // 4, sw + sw // 4, 2).tolist())
        y0, y1 = sorted(rng.integers(-sh // 4, sh + sh // 4, 2).tolist())
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            points = [(int(rng.integers(0, sw)), int(rng.integers(0, sh))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, max(2, sw // 60))))
    image = image.resize((width, height), Image.Resampling.BICUBIC)  # soft, photo-like edges
    noise = noise_tiles[int(rng.integers(len(noise_tiles)))]
    top, left = int(rng.integers(0, noise.shape[0] - height + 1)), int(rng.integers(0, noise.shape[1] - width + 1))
    pixels = np.asarray(image, np.int16) + noise[top:top + height, left:left + width]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_noise_tiles(rng: np.random.Generator, size: int = 2048) -> list[np.ndarray]:
    """Sensor-like noise (luma sigma 2.5 or 4.5, chroma sigma 1.5) to crop windows from."""
    tiles = []
    for luma_sigma in (2.5, 4.5):
        luma = rng.standard_normal((size, size, 1), dtype=np.float32) * luma_sigma
        chroma = rng.standard_normal((size, size, 3), dtype=np.float32) * 1.5
        tiles.append(np.rint(luma + chroma).astype(np.int16))
    return tiles


def make_data(root: Path, num_samples: int, num_shards: int, seed: int) -> dict:
    from mobileclip_repro import shards
    from mobileclip_repro.replay import sample_param_aug

    datacomp_dir, dr_dir = root / "datacomp", root / "datacompdr"
    datacomp_dir.mkdir()
    dr_dir.mkdir()
    rng = np.random.default_rng(seed)
    noise_tiles = make_noise_tiles(rng)
    per_shard = -(-num_samples // num_shards)
    stats = defaultdict(float)
    index = 0
    for shard in range(num_shards):
        count = min(per_shard, num_samples - index)
        with shards.atomic_tar_writer(datacomp_dir / shards.shard_name(shard), mtime=0) as datacomp_tar, \
                shards.atomic_tar_writer(dr_dir / shards.shard_name(shard), mtime=0) as dr_tar:
            for position in range(count):
                key = shards.sample_key(shard, position)
                image = natural_image(rng, noise_tiles)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=90)
                jpg = buffer.getvalue()
                uid = rng.bytes(16).hex()
                url = f"https://example.com/img/{uid}.jpg"
                datacomp_tar.write(shards.datacomp_record(key, jpg, caption(rng), uid, url))
                param_aug = [sample_param_aug(image.width, image.height,
                                              torch.Generator().manual_seed(index * NUM_AUGS + a), size=SIZE)
                             for a in range(NUM_AUGS)]
                record = shards.dr_record(
                    key, uid, shards.sha256_hex(jpg), url, [caption(rng, 8, 24) for _ in range(NUM_SYN)], param_aug,
                    rng.standard_normal((NUM_AUGS, EMBEDDING_DIM), dtype=np.float32),
                    rng.standard_normal((1 + NUM_SYN, EMBEDDING_DIM), dtype=np.float32))
                dr_tar.write(record)
                stats["pixels"] += image.width * image.height
                stats["jpg_bytes"] += len(jpg)
                stats["npz_bytes"] += len(record["npz"])
                stats["paug_bytes"] += len(record["paug.json"])
                index += 1
    return {"datacomp": shards.list_shards(datacomp_dir), "datacomp_dir": datacomp_dir, "dr_dir": dr_dir,
            "samples": index,
            "mean_mp": stats["pixels"] / index / 1e6, "mean_jpg_kb": stats["jpg_bytes"] / index / 1e3,
            "bits_per_px": 8 * stats["jpg_bytes"] / stats["pixels"],
            "mean_npz_kb": stats["npz_bytes"] / index / 1e3, "mean_paug_kb": stats["paug_bytes"] / index / 1e3}


# -- the two pipelines ---------------------------------------------------------------------

def fingerprint(pixels: torch.Tensor) -> bytes:
    return hashlib.blake2b(pixels.numpy().tobytes(), digest_size=16).digest()


def tarfile_to_samples_nothrow(src, handler=None):
    """open_clip_train.data.tarfile_to_samples_nothrow, made to run on webdataset 1.0.

    open_clip_torch[training] 3.3.0 requires webdataset<=0.2.86; webdataset 1.0's
    ``tar_file_expander`` yields an empty dict at the end of every shard, on which
    open_clip's ``group_by_keys_nothrow`` raises KeyError('fname'). Dropping those markers
    is the only change; the stages are open_clip_train's and webdataset's own.
    """
    from open_clip_train.data import group_by_keys_nothrow, log_and_continue
    from webdataset.tariterators import tar_file_expander, url_opener

    handler = handler or log_and_continue
    streams = url_opener(src, handler=handler)
    files = (f for f in tar_file_expander(streams, handler=handler) if f)
    return group_by_keys_nothrow(files, handler=handler)


def plain_source_stages(urls: list[str], seed: int, shuffle_buffer: int) -> list:
    """get_wds_dataset's train stages up to and including the sample filter."""
    import webdataset as wds
    from open_clip_train.data import (_SHARD_SHUFFLE_INITIAL, _SHARD_SHUFFLE_SIZE, SharedEpoch, detshuffle2,
                                      filter_no_caption_or_no_image)

    stages = [wds.SimpleShardList(urls),
              detshuffle2(bufsize=_SHARD_SHUFFLE_SIZE, initial=_SHARD_SHUFFLE_INITIAL, seed=seed,
                          epoch=SharedEpoch(epoch=0)),
              wds.split_by_node, wds.split_by_worker,
              tarfile_to_samples_nothrow]
    if shuffle_buffer > 1:  # open_clip: wds.shuffle(bufsize=5000, initial=1000); seeded here to repeat a pass
        stages.append(wds.shuffle(bufsize=shuffle_buffer, initial=shuffle_buffer, seed=seed))
    stages.append(wds.select(filter_no_caption_or_no_image))
    return stages


def plain_pipeline(urls: list[str], preprocess, seed: int, shuffle_buffer: int):
    import webdataset as wds
    from open_clip_train.data import log_and_continue

    return wds.DataPipeline(*plain_source_stages(urls, seed, shuffle_buffer),
                            wds.decode("pilrgb", handler=log_and_continue),
                            wds.rename(image="jpg;png;jpeg;webp", text="txt"),
                            wds.map_dict(image=preprocess),  # open_clip also maps text=tokenizer: excluded
                            wds.to_tuple("image", "text"))


def shard_pairs(data: dict) -> list[tuple[Path, Path]]:
    from mobileclip_repro.train.samples import paired_shards

    return paired_shards(data["datacomp"], data["datacomp_dir"], data["dr_dir"])


def dr_samples(data: dict, replay, seed: int, shuffle_buffer: int, counter):
    from mobileclip_repro.train.samples import DRSamples

    return DRSamples(shard_pairs(data), replay=replay, tokenizer=None, seed=seed, resampled=False, counter=counter,
                     shuffle_buffer=max(1, shuffle_buffer), passes=1, embedding_dim=EMBEDDING_DIM)


def time_plain_pass(data: dict, preprocess, seed: int, shuffle_buffer: int, record: list | None) -> float:
    urls = [str(p) for p in data["datacomp"]]
    gc.collect()
    torch.manual_seed(seed)  # RandomResizedCrop draws from the global generator
    excluded, count = 0.0, 0
    start = time.process_time()
    for image, _text in plain_pipeline(urls, preprocess, seed, shuffle_buffer):
        count += 1
        if record is not None:
            t = time.process_time()
            record.append(fingerprint(image))
            excluded += time.process_time() - t
    elapsed = time.process_time() - start - excluded
    if count != data["samples"]:
        raise SystemExit(f"plain pipeline gave {count} samples, expected {data['samples']}")
    return elapsed


def time_dr_pass(data: dict, replay, seed: int, shuffle_buffer: int, record: list | None) -> float:
    from mobileclip_repro.train.samples import SkipCounter

    counter = SkipCounter(max_workers=0)
    gc.collect()
    excluded, count = 0.0, 0
    start = time.process_time()
    for example in dr_samples(data, replay, seed, shuffle_buffer, counter).examples():
        count += 1
        if record is not None:
            t = time.process_time()
            record.append((example.aug, fingerprint(example.pixels)))
            excluded += time.process_time() - t
    elapsed = time.process_time() - start - excluded
    if count != data["samples"] or counter.totals():
        raise SystemExit(f"DR pipeline gave {count} samples (expected {data['samples']}), skips {counter.totals()}")
    return elapsed


# -- step-by-step breakdowns -----------------------------------------------------------------

class Steps:
    """CPU time per named step, in insertion order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def timed_iter(self, name: str, iterator):
        iterator = iter(iterator)
        while True:
            t = time.process_time()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(name, time.process_time() - t)
                return
            self.add(name, time.process_time() - t)
            yield item


def dr_breakdown(data: dict, replay, seed: int, shuffle_buffer: int,
                 expected: list | None) -> tuple[Steps, dict, bool | None]:
    """The steps of DRSamples.examples() / assemble_dr_example, one by one, same order and draws.

    With ``expected`` (the pipeline's (aug, pixel fingerprint) list), checks that the steps
    reproduce the pipeline; hashing the pixels pollutes the caches, so a pass that checks
    is slower than one that does not.
    """
    from torchvision.transforms import functional as F
    from torchvision.transforms.autoaugment import _apply_op

    from mobileclip_repro import replay as replay_module
    from mobileclip_repro import shards
    from mobileclip_repro.train import samples

    steps, ops = Steps(), defaultdict(lambda: [0.0, 0])
    counter = samples.SkipCounter(max_workers=0)
    # DRSamples.examples()'s generator: it shuffles and draws (aug, syn) from one rng.
    seed_from = getattr(samples, "seed_from", None) or getattr(samples, "derived_seed")
    rng = random.Random(seed_from(seed, "dr", *samples.stream_position()))
    # shard_stream's order is a seeded permutation of the list, the same whether the list
    # holds DataComp shards or (DataComp, DataCompDR) pairs.
    joined = (pair for datacomp_tar, dr_tar in samples.shard_stream(shard_pairs(data), seed, False, 1)
              for pair in samples.joined_samples(datacomp_tar, dr_tar, counter))
    T = time.process_time
    got = []
    gc.collect()
    for datacomp, dr in samples.shuffled(steps.timed_iter("tar read + merge-join (2 tars)", joined),
                                         max(1, shuffle_buffer), rng):
        t0 = T()
        uid = json.loads(datacomp["json"])["uid"]
        meta = json.loads(dr["json"])
        syn_text = json.loads(dr["syn.json"])["syn_text"]
        param_aug = shards.decode_param_aug_field(dr["paug.json"])
        t1 = T()
        image_emb, text_emb = shards.decode_embeddings(dr)
        t2 = T()
        assert str(uid) == str(meta["uid"]) and image_emb.shape[1] == EMBEDDING_DIM
        ok = shards.sha256_hex(datacomp["jpg"]) == meta["sha256"].lower()
        t3 = T()
        aug, _syn = rng.randrange(len(param_aug)), rng.randrange(len(syn_text))  # both drawn, as there
        finite = np.isfinite(image_emb).all() and np.isfinite(text_emb).all()
        t4 = T()
        cap = datacomp["txt"].decode("utf-8")
        image = shards.decode_image(datacomp["jpg"])
        t5 = T()
        param = replay_module.parse_param_aug(param_aug[aug])
        image = shards.to_rgb(image)
        replay_module.check_fits(param, image.width, image.height)
        t6 = T()
        top, left, height, width = param.crop
        image = F.resized_crop(image, top, left, height, width, list(replay.size), replay.interpolation)
        t7 = T()
        for index, magnitude in param.ops:
            s = T()
            image = _apply_op(image, replay_module.OP_NAMES[index], magnitude,
                              interpolation=replay_module.OP_INTERPOLATION, fill=replay_module.OP_FILL)
            op = ops[replay_module.OP_NAMES[index]]
            op[0] += T() - s
            op[1] += 1
        t8 = T()
        pixels = F.normalize(F.to_tensor(image), list(replay.mean), list(replay.std))
        t9 = T()
        assert ok and finite and cap is not None
        if expected is not None:
            got.append((aug, fingerprint(pixels)))
        steps.add("json (meta, syn, paug, uid)", t1 - t0)
        steps.add("npz decode", t2 - t1)
        steps.add("sha256 of jpg", t3 - t2)
        steps.add("finite check + draws", t4 - t3)
        steps.add("jpeg decode (+RGB copy)", t5 - t4)
        steps.add("param parse + fit check", t6 - t5)
        steps.add("crop+resize 224 bicubic", t7 - t6)
        steps.add("RandAugment ops", t8 - t7)
        steps.add("to_tensor+normalize", t9 - t8)
    return steps, dict(ops), None if expected is None else got == expected


def plain_breakdown(data: dict, preprocess, seed: int, shuffle_buffer: int,
                    expected: list | None) -> tuple[Steps, bool | None]:
    """The plain pipeline's stages one by one on the same samples in the same order (see dr_breakdown)."""
    import webdataset as wds
    from webdataset import autodecode

    steps = Steps()
    urls = [str(p) for p in data["datacomp"]]
    source = wds.DataPipeline(*plain_source_stages(urls, seed, shuffle_buffer))
    decoder = autodecode.Decoder([autodecode.imagehandler("pilrgb")])  # what decode("pilrgb") builds
    image_handler = autodecode.imagehandler("pilrgb")
    rrc, rest = preprocess.transforms[0], preprocess.transforms[1:]
    T = time.process_time
    got = []
    gc.collect()
    torch.manual_seed(seed)
    for sample in steps.timed_iter("tar read (webdataset)", source):
        t0 = T()
        jpg = sample.pop("jpg")
        sample = decoder(sample)
        t1 = T()
        image = image_handler("jpg", jpg)
        t2 = T()
        image = rrc(image)
        t3 = T()
        for transform in rest:
            image = transform(image)
        t4 = T()
        if expected is not None:
            got.append(fingerprint(image))
        steps.add("decode txt/json/url.txt", t1 - t0)
        steps.add("jpeg decode pilrgb (+2 RGB copies)", t2 - t1)
        steps.add("RandomResizedCrop 224 (0.9-1) bicubic", t3 - t2)
        steps.add("RGB convert+to_tensor+normalize", t4 - t3)
    return steps, None if expected is None else got == expected


# -- Apple's loader: open_clip at Apple's pinned commit with Apple's patch --------------------

APPLE_OPEN_CLIP_COMMIT = "7260a46e7b4bcf518f5200fea06da5bc85aae025"  # ml-mobileclip training/README.md (v2)
APPLE_PATCH = "training/open_clip_v2.patch"
APPLE_BATCH = 32
SHUFFLE_BUFFER = 1000  # DRSamples' default


def git(repo: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, **kwargs)


def git_dir(path: Path) -> Path:
    """A checkout's .git, or a bare repository as it is."""
    return path / ".git" if (path / ".git").exists() else path


def build_apple_tree(open_clip_repo: Path, ml_mobileclip_repo: Path, into: Path) -> Path:
    """What Apple's training README does, in ``into``: open_clip at the pinned commit, the v2
    patch applied, ``training/dr`` copied to ``src/open_clip_train/dr``, ``training/configs``
    to ``configs`` and ``mobileclip2/*`` into ``src/open_clip``. Nothing is installed: the
    child process puts ``into/src`` first on its path."""
    open_clip_repo, ml_mobileclip_repo = git_dir(open_clip_repo), git_dir(ml_mobileclip_repo)
    into.mkdir(parents=True)
    archive = git(open_clip_repo, "archive", APPLE_OPEN_CLIP_COMMIT, "src", stdout=subprocess.PIPE,
                  stderr=subprocess.DEVNULL).stdout  # a partial mirror warns of absent blobs outside src/
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    patch = git(ml_mobileclip_repo, "show", f"HEAD:{APPLE_PATCH}", stdout=subprocess.PIPE).stdout
    # --recount: the last hunk's header line counts disagree with its body in the copy read here
    # (git apply calls it "corrupt patch at line 841"); the body is what gets applied.
    subprocess.run(["git", "apply", "--recount", "-"], input=patch, cwd=into, check=True)
    extras = git(ml_mobileclip_repo, "archive", "HEAD", "training/dr", "training/configs", "mobileclip2",
                 stdout=subprocess.PIPE).stdout
    staging = into / "_ml_mobileclip"
    staging.mkdir()
    subprocess.run(["tar", "-x", "-C", str(staging)], input=extras, check=True)
    shutil.move(str(staging / "training" / "dr"), str(into / "src" / "open_clip_train" / "dr"))
    shutil.move(str(staging / "training" / "configs"), str(into / "configs"))
    # `cp ../../mobileclip2/* ./src/open_clip/ -r`: the patched __init__ imports mobileclip2.py
    shutil.copytree(staging / "mobileclip2", into / "src" / "open_clip", dirs_exist_ok=True)
    shutil.rmtree(staging)
    return into


def apple_child(request: dict) -> dict:
    """Runs in its own process with the patched tree first on sys.path: Apple's
    ``get_wds_dataset(..., dataset_reinforcement=True)`` as its DataCompDR-12M script sets it up
    (resampled shards, 30-augmentation JSON, ViT-B-16's train transform and tokenizer), iterated
    for ``samples`` samples in batches, one process, no workers."""
    sys.path.insert(0, str(Path(request["tree"]) / "src"))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    import open_clip
    import open_clip_train.data as apple_data

    assert Path(open_clip.__file__).is_relative_to(request["tree"]), open_clip.__file__
    # webdataset 1.0 ends every shard with an empty dict that the pinned commit's
    # group_by_keys_nothrow cannot take (it wants webdataset<=0.2.86): the markers are dropped.
    apple_data.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow
    # The sample shuffle buffer as the project's (1,000, full before the first sample), so that
    # both sides read one raw sample per sample out once the clock runs; open_clip's default
    # grows from 1,000 to 5,000 and reads two per sample out until then.
    apple_data._SAMPLE_SHUFFLE_SIZE = apple_data._SAMPLE_SHUFFLE_INITIAL = SHUFFLE_BUFFER
    args = argparse.Namespace(
        train_data="::".join(request["shards"]), train_num_samples=request["samples"], dataset_resampled=True,
        train_data_upsampling_factors=None, batch_size=APPLE_BATCH, world_size=1, workers=0, seed=request["seed"],
        dataset_reinforcement=True,
        dataset_reinforcement_config=str(Path(request["tree"]) / "configs" / "datacompdr12m.json"),
        dataset_reinforcement_filter_image_size=None, distill=False, dataset_reinforcement_mix_synthetic=False,
        dataset_reinforcement_mix_synthetic_ratio=0.0, dataset_reinforcement_sample_sequential=False,
        dataset_reinforcement_syn_text_key_regex=r"^syn_text.*$")
    model_cfg = open_clip.get_model_config("ViT-B-16")
    preprocess = open_clip.image_transform(model_cfg["vision_cfg"]["image_size"], is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    loader = apple_data.get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer).dataloader
    return time_batches(loader, request["samples"])


def time_batches(loader, samples: int) -> dict:
    """One timed pass of ``samples`` samples; the first batch (the shuffle buffer's fill) is
    start-up, not throughput: the clock starts after it."""
    gc.collect()
    count, batches = 0, iter(loader)
    next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        count += len(batch[0])
        if count >= samples:
            break
    return {"samples": count, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "shapes": [list(tensor.shape) for tensor in batch]}


def time_apple_loader(tree: Path, shard_urls: list[str], samples: int, seed: int) -> dict:
    request = {"tree": str(tree), "shards": shard_urls, "samples": samples, "seed": seed}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, __file__, "--apple-child", json.dumps(request)], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_project_loader(joined_dir: Path, replay, tokenizer, samples: int, seed: int) -> dict:
    """The training job's DR loader on the joined layout: DRSamples (resampled shards, its
    shuffle buffer) through a DataLoader in batches, no workers: what train.build_dataset and
    the trainer's loader do for a DR run."""
    from mobileclip_repro import shards
    from mobileclip_repro.train.samples import DRSamples, SkipCounter, paired_shards

    counter = SkipCounter(max_workers=0)
    dataset = DRSamples(paired_shards(shards.list_shards(joined_dir), joined_dir, None), replay, tokenizer,
                        seed, resampled=True, counter=counter, embedding_dim=EMBEDDING_DIM,
                        shuffle_buffer=SHUFFLE_BUFFER,
                        cache_bytes=0)  # web-size data does not fit in memory: every pass reads the tars
    timed = time_batches(torch.utils.data.DataLoader(dataset, batch_size=APPLE_BATCH, num_workers=0), samples)
    return {**timed, "skips": counter.totals()}


def compare_with_apple(args, data: dict, replay, tokenizer) -> None:
    """samples/s of the project's DR loader and of Apple's patched open_clip loader on the
    same joined DataCompDR shards, alternating, the median of each side."""
    from mobileclip_repro import shards

    root = Path(tempfile.mkdtemp(prefix="apple_loader_"))
    try:
        tree = build_apple_tree(args.apple_open_clip, args.apple_ml_mobileclip, root / "open_clip")
        joined_dir = root / "joined"
        joined_dir.mkdir()
        for datacomp_tar in data["datacomp"]:
            shards.join_shards(datacomp_tar, data["dr_dir"] / datacomp_tar.name, joined_dir / datacomp_tar.name)
        urls = [str(p) for p in shards.list_shards(joined_dir)]
        count = args.apple_samples
        apple, ours = [], []
        for _ in range(args.repeats):  # alternate, so drift on the machine hits both alike
            apple.append(time_apple_loader(tree, urls, count, args.seed))
            ours.append(time_project_loader(joined_dir, replay, tokenizer, count, args.seed))
        print(f"\nApple's loader: open_clip {APPLE_OPEN_CLIP_COMMIT[:7]} + {APPLE_PATCH} (built in {tree}), "
              f"get_wds_dataset with --dataset-reinforcement, resampled, batch {APPLE_BATCH}, no workers, 1 thread, "
              f"sample shuffle buffer {SHUFFLE_BUFFER}; "
              f"the project's DRSamples in a DataLoader, same shards (joined layout), both tokenizing both captions")
        print(f"  output shapes: Apple {apple[0]['shapes']}, project {ours[0]['shapes']}; project skips {ours[0]['skips']}")
        rates = {}
        for name, runs in (("Apple's patched open_clip loader", apple), ("project DR loader", ours)):
            rates[name] = float(np.median([r["samples"] / r["wall_s"] for r in runs]))
            cpu = float(np.median([r["cpu_s"] / r["samples"] * 1e3 for r in runs]))
            print(f"  {name:<34s} {rates[name]:7.1f} samples/s wall (median of {len(runs)}; "
                  f"{cpu:.2f} ms CPU/sample)")
        ratio = rates["project DR loader"] / rates["Apple's patched open_clip loader"]
        print(f"project DR loader / Apple's loader, samples/s: {ratio:.2f}x (target >= 1.0: "
              f"{'met' if ratio >= 1.0 else 'NOT met'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- report ----------------------------------------------------------------------------------

def print_breakdown(title: str, steps: Steps, total: float, n: int, extra: dict | None = None) -> None:
    ms = 1e3 / n
    summed = sum(steps.seconds.values())
    print(f"\n{title} (ms CPU per sample; pipeline total {total * ms:.2f})")
    for name, seconds in steps.seconds.items():
        print(f"  {name:<44s} {seconds * ms:7.3f}  {100 * seconds / total:5.1f}%")
        if extra and name in extra:
            for line in extra[name]:
                print(f"      {line}")
    print(f"  {'sum of the steps':<44s} {summed * ms:7.3f}  {100 * summed / total:5.1f}%")
    print(f"  {'residual = pipeline - sum (plumbing/noise)':<44s} {(total - summed) * ms:7.3f}  "
          f"{100 * (total - summed) / total:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side; the best counts")
    parser.add_argument("--breakdown-repeats", type=int, default=2,
                        help="step-by-step passes per side (in the first repeats); the fastest counts")
    parser.add_argument("--shuffle-buffer", type=int, default=0,
                        help="sample shuffle buffer on both sides (0: no shuffle)")
    parser.add_argument("--keep-data", type=Path, default=None, help="write the data here and keep it")
    parser.add_argument("--apple-open-clip", type=Path, default=None,
                        help="a git repository (checkout or bare) of mlfoundations/open_clip holding Apple's pinned commit")
    parser.add_argument("--apple-ml-mobileclip", type=Path, default=None,
                        help="a git repository (checkout or bare) of apple/ml-mobileclip: its v2 patch and training/dr")
    parser.add_argument("--apple-samples", type=int, default=1024, help="samples per loader pass in the Apple comparison")
    parser.add_argument("--apple-only", action="store_true", help="only the comparison with Apple's loader")
    parser.add_argument("--apple-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.apple_child:
        print(json.dumps(apple_child(json.loads(args.apple_child))))
        return 0
    if (args.apple_open_clip is None) != (args.apple_ml_mobileclip is None) or (
            args.apple_only and args.apple_open_clip is None):
        parser.error("the Apple comparison needs both --apple-open-clip and --apple-ml-mobileclip")
    if args.samples < args.shards or args.shards < 1 or args.repeats < 1:
        parser.error("need --shards >= 1, --samples >= --shards and --repeats >= 1")
    args.breakdown_repeats = min(max(args.breakdown_repeats, 1), args.repeats)

    wall = time.perf_counter()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    import PIL

    from mobileclip_repro.models import create_model_and_transforms
    from mobileclip_repro.replay import ReplayTransform

    import open_clip_train.data  # noqa: F401 - imported here, not inside the first timed pass (pandas, ...)
    import webdataset  # noqa: F401

    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights" is expected here
    model, preprocess_train, _ = create_model_and_transforms("ViT-B-16")
    logging.getLogger().setLevel(logging.WARNING)
    replay = ReplayTransform.from_open_clip(model)
    del model

    root = args.keep_data or Path(tempfile.mkdtemp(prefix="dr_pipeline_cpu_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        data = make_data(root, args.samples, args.shards, args.seed)
        print(f"data: {data['samples']} samples in {args.shards} shards, generated in {time.perf_counter() - t:.1f} s; "
              f"jpg q90 mean {data['mean_mp']:.2f} MP, {data['mean_jpg_kb']:.0f} KB ({data['bits_per_px']:.2f} bits/px); "
              f"DR npz {data['mean_npz_kb']:.0f} KB + paug.json {data['mean_paug_kb']:.1f} KB per sample")
        print(f"setup: torch {torch.__version__} threads {torch.get_num_threads()}, Pillow {PIL.__version__}, "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
              + ("" if args.apple_only else f", shuffle buffer {args.shuffle_buffer or 'off'} on both sides, "
                                            "tokenization excluded on both sides"))
        print("note: open_clip_train's tarfile_to_samples_nothrow fails on webdataset 1.0 (KeyError 'fname' on the "
              "end-of-shard marker; open_clip_torch[training] wants webdataset<=0.2.86): markers dropped before it")
        if args.apple_open_clip is not None:
            from mobileclip_repro.models import get_tokenizer

            # uncached: the trainer's CachingTokenizer would hit on this small set's repeats, not at web scale
            compare_with_apple(args, data, replay, get_tokenizer("ViT-B-16"))
            if args.apple_only:
                return 0
        n = data["samples"]
        plain_times, dr_times = [], []
        plain_record, dr_record = [], []
        dr_runs, plain_runs = [], []  # breakdown passes: (steps, ops, pixels identical)
        for r in range(args.repeats):
            plain_times.append(time_plain_pass(data, preprocess_train, args.seed, args.shuffle_buffer,
                                               plain_record if r == 0 else None))
            dr_times.append(time_dr_pass(data, replay, args.seed, args.shuffle_buffer,
                                         dr_record if r == 0 else None))
            print(f"pass {r + 1}: open_clip plain {plain_times[-1] / n * 1e3:6.2f} ms/sample   "
                  f"DR {dr_times[-1] / n * 1e3:6.2f} ms/sample", flush=True)
            if r < args.breakdown_repeats:  # interleaved with the timed passes, so drift hits all alike
                check = r == 0 or args.breakdown_repeats == 1  # pixel check in one pass only
                plain_runs.append(plain_breakdown(data, preprocess_train, args.seed, args.shuffle_buffer,
                                                  plain_record if check else None))
                dr_runs.append(dr_breakdown(data, replay, args.seed, args.shuffle_buffer,
                                            dr_record if check else None))
        plain, dr = min(plain_times), min(dr_times)
        print(f"open_clip plain pipeline: {plain / n * 1e3:6.2f} ms CPU/sample (best of {args.repeats}; "
              f"worst {max(plain_times) / n * 1e3:.2f})")
        print(f"DR pipeline:              {dr / n * 1e3:6.2f} ms CPU/sample (best of {args.repeats}; "
              f"worst {max(dr_times) / n * 1e3:.2f})")
        ratio = dr / plain
        paired = [d / p for d, p in zip(dr_times, plain_times)]
        print(f"per-pass DR/plain (adjacent passes, less sensitive to drift): "
              f"{' '.join(f'{x:.2f}' for x in paired)} (median {float(np.median(paired)):.2f}x)")
        print(f"DR pipeline / open_clip plain pipeline CPU time per sample: {ratio:.2f}x "
              f"(target <= {TARGET_RATIO:.2f}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")

        # Of the breakdown passes, the fastest one (smallest sum), as the pipelines' best pass.
        dr_steps, ops, dr_same = min(dr_runs, key=lambda run: sum(run[0].seconds.values()))
        plain_steps, plain_same = min(plain_runs, key=lambda run: sum(run[0].seconds.values()))
        dr_same = all(run[2] for run in dr_runs if run[2] is not None)
        plain_same = all(run[1] for run in plain_runs if run[1] is not None)
        op_lines = [f"{name:<13s} {seconds / count * 1e3:6.3f} ms/call x {count}"
                    for name, (seconds, count) in sorted(ops.items(), key=lambda kv: -kv[1][0])]
        print_breakdown(f"DR pipeline breakdown, same samples and augmentations, best of {len(dr_runs)} "
                        f"(pixels identical to the pipeline's: {'yes' if dr_same else 'NO'})",
                        dr_steps, dr, n, {"RandAugment ops": op_lines})
        print_breakdown(f"open_clip plain pipeline breakdown, same samples and crops, best of {len(plain_runs)} "
                        f"(pixels identical to the pipeline's: {'yes' if plain_same else 'NO'})",
                        plain_steps, plain, n)

        d, p = dr_steps.seconds, plain_steps.seconds
        ms = 1e3 / n
        dr_only = sum(d[k] for k in ("json (meta, syn, paug, uid)", "npz decode", "sha256 of jpg",
                                      "finite check + draws", "param parse + fit check", "RandAugment ops"))
        print("\nDR minus plain, ms CPU per sample:")
        print(f"  tar read (+join)            {(d['tar read + merge-join (2 tars)'] - p['tar read (webdataset)']) * ms:+7.3f}")
        print(f"  jpeg decode                 {(d['jpeg decode (+RGB copy)'] - p['jpeg decode pilrgb (+2 RGB copies)']) * ms:+7.3f}")
        print(f"  crop+resize                 {(d['crop+resize 224 bicubic'] - p['RandomResizedCrop 224 (0.9-1) bicubic']) * ms:+7.3f}"
              "  (DR crops are scale 0.08-1, plain 0.9-1)")
        print(f"  to_tensor+normalize         {(d['to_tensor+normalize'] - p['RGB convert+to_tensor+normalize']) * ms:+7.3f}")
        print(f"  DR-only steps               {(dr_only - p['decode txt/json/url.txt']) * ms:+7.3f}"
              "  (json, npz, sha256, finite, param, RandAugment; minus plain's txt/json decode)")
        residual = (dr - sum(d.values())) - (plain - sum(p.values()))
        print(f"  residuals                   {residual * ms:+7.3f}  (plumbing + run-to-run noise)")
        print(f"  total                       {(dr - plain) * ms:+7.3f}")
        print(f"\ntotal run time {time.perf_counter() - wall:.1f} s (wall); load average now {os.getloadavg()[0]:.2f} "
              "(other load on the machine inflates CPU times and the spread)")
        if not (dr_same and plain_same):
            print("warning: a breakdown did not reproduce its pipeline's pixels; its split may be off", file=sys.stderr)
    finally:
        if args.keep_data is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
