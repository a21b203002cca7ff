"""A procedural image-text world small enough for a tiny CLIP to learn on a CPU.

A scene is a background colour and one or two patterned balls (colour, fill pattern,
position), drawn with PIL at a random size between 48 and 96 pixels per side, with light
noise, as JPEG. The toy experiment needs the same contrast as the paper: DataComp's web
alt-text is noisy (partial, wrong or uninformative), while reinforcement brings clean
synthetic captions and the knowledge of teachers trained on curated data. So:

- the DataComp-format shards carry web-like alt-text (``alt_text``), plus the scene itself
  in the ``json`` metadata (``toy_scene``) so that ``WorldCaptioner`` can play the role of
  CoCa and write clean captions;
- the teacher shards are a disjoint stream of scenes with clean descriptions;
- two benchmark sets in clip_benchmark's webdataset layout: zero-shot classification of a
  single ball's "<colour> <pattern> ball", and image-text retrieval.

Why patterns and not outline shapes: a contrastive model learns colour within a few
thousand samples, while a second attribute is learnt only once both towers have found it.
Fill patterns (solid, stripes, dots, rings) are local textures a small conv teacher finds in
~25k samples; outline shapes at 32 px took it several times longer. Captions name what
the zero-shot classes name (colour and pattern of each ball), nothing else: words for
background, size or position made the teachers several times slower to learn the pattern.
Backgrounds use colours no ball has, so a colour word always means a ball.

Everything is a pure function of the seed: each sample has its own numpy Generator seeded
from (seed, stream, index), and tar members get a fixed mtime, so shards are byte-identical
across runs.
"""
from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import io
import itertools
import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from mobileclip_repro.layout import BENCHMARKS, TOY_DATACOMP, TOY_MANIFEST, TOY_TEACHER_DATA
from mobileclip_repro.shards import (SHARD_FILES_KEY, atomic_tar_writer, datacomp_record, describe_shard,
                                     relative_to_manifest, sample_key, shard_name)

# Four textures that stay distinct at 32 px; with checked and hatched as well, teachers
# confused those with stripes for some seeds and missed 80 % zero-shot.
PATTERNS = ("solid", "striped", "dotted", "ringed")
OBJECT_COLOURS = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 180),
    "orange": (255, 140, 0),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
# No ball colour among them: a colour word in a caption always names a ball.
BACKGROUNDS = {
    "grey": (128, 128, 128),
    "beige": (225, 205, 160),
    "pink": (250, 170, 200),
    "brown": (110, 70, 35),
    "olive": (110, 120, 40),
    "navy": (20, 30, 80),
}
# One ball sits in the centre; two sit on opposite sides, small enough not to overlap.
POSITIONS = ("left", "right", "top", "bottom", "centre")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}

MIN_SIDE, MAX_SIDE = 48, 96
JPEG_QUALITY = 95
# 4:4:4: the default 4:2:0 halves the colour resolution, and a coloured stripe on a
# coloured background is then mush (teachers lost ~20 points of zero-shot accuracy to it).
JPEG_SUBSAMPLING = 0
NOISE_AMPLITUDE = 8
NOISE_BANK_SIZE, NOISE_BANK_SEED = 32, 20240
COLOUR_JITTER = 12
POSITION_JITTER = 0.03  # of the shorter side
# Pattern period as a fraction of the shorter side: 4 px once resized to the students' 32 px.
PATTERN_PERIOD = 1 / 8
# Fixed so that the same seed gives byte-identical shards; an int, since a float mtime
# costs an extra pax header per tar member.
TAR_MTIME = 0

# Sub-streams of one seed; every output draws from its own so that they are disjoint.
STREAMS = {"train": 0, "teacher": 1, "zeroshot": 2, "retrieval": 3}

# Most web alt-text does not describe the image fully (DataComp's motivation for filtering).
DEFAULT_ALT_TEXT_MIX = {"full": 0.25, "partial": 0.30, "wrong": 0.10, "uninformative": 0.35}

ZEROSHOT_TEMPLATES = (
    "a photo of a {c}.",
    "a {c}.",
    "an image showing a {c}.",
    "a picture with a {c} in it.",
    "a {c} on a background.",
)

_ONE_OBJECT_TEMPLATES = (
    "a {o1}",
    "a photo of a {o1}",
    "an image of a {o1}",
    "a picture of a {o1}",
    "there is a {o1}",
    "one {o1}",
)
_TWO_OBJECT_TEMPLATES = (
    "a {o1} and a {o2}",
    "a photo of a {o1} and a {o2}",
    "a {o1} next to a {o2}",
    "two balls, a {o1} and a {o2}",
    "an image of a {o1} and a {o2}",
)
_PARTIAL_TEMPLATES = {
    "colour": ("{colour}", "something {colour}", "{colour} thing", "in {colour}"),
    "pattern": ("{pattern}", "a {pattern} ball", "{pattern} design", "{pattern} ball icon"),
    "background": ("{bg} background", "on {bg}", "plain {bg} backdrop"),
}
_UNINFORMATIVE_TEMPLATES = (
    "IMG_{n4}.jpg", "DSC{n5}", "stock photo", "click to enlarge", "image", "untitled",
    "photo {small} of {large}", "thumbnail", "free download", "view larger image",
)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def class_names() -> list[str]:
    """Zero-shot classes, "<colour> <pattern> ball" of the scene's one ball; index = label."""
    return [f"{colour} {pattern} ball" for colour in OBJECT_COLOURS for pattern in PATTERNS]


def scene_label(scene: dict) -> int:
    primary = scene["objects"][0]
    return list(OBJECT_COLOURS).index(primary["colour"]) * len(PATTERNS) + PATTERNS.index(primary["pattern"])


def validate_scene(scene: dict) -> None:
    """Raise ValueError naming the first thing that makes ``scene`` not a toy-world scene."""
    if not isinstance(scene, dict):
        raise ValueError(f"a scene must be a dict, got {type(scene).__name__}")
    for field in ("background", "width", "height", "objects"):
        if field not in scene:
            raise ValueError(f"scene has no {field!r}")
    if scene["background"] not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene['background']!r}; known: {sorted(BACKGROUNDS)}")
    objects = scene["objects"]
    if not isinstance(objects, list) or not 1 <= len(objects) <= 2:
        raise ValueError(f"a scene has 1 or 2 objects, got {objects!r}")
    for obj in objects:
        for field, allowed in (("pattern", PATTERNS), ("colour", tuple(OBJECT_COLOURS)), ("position", POSITIONS)):
            if obj.get(field) not in allowed:
                raise ValueError(f"object {obj!r}: {field} must be one of {list(allowed)}")
    positions = [obj["position"] for obj in objects]
    if len(objects) == 1 and positions != ["centre"]:
        raise ValueError(f"a single ball sits in the centre, got {positions}")
    if len(objects) == 2 and (positions[0] not in OPPOSITE or OPPOSITE[positions[0]] != positions[1]):
        raise ValueError(f"two balls sit on opposite sides (left/right or top/bottom), got {positions}")


def generate_scene(rng: np.random.Generator, *, two_object_probability: float = 0.5,
                   primary_class: int | None = None) -> dict:
    """A random scene; ``primary_class`` fixes the first ball's colour and pattern (a
    ``class_names`` index)."""
    if not 0.0 <= two_object_probability <= 1.0:
        raise ValueError(f"two_object_probability must be in [0, 1], got {two_object_probability}")
    colours = list(OBJECT_COLOURS)
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    two_objects = bool(rng.random() < two_object_probability)
    if primary_class is None:
        primary_colour, primary_pattern = _pick(rng, colours), _pick(rng, PATTERNS)
    else:
        if not 0 <= primary_class < len(colours) * len(PATTERNS):
            raise ValueError(f"primary_class {primary_class} outside 0..{len(colours) * len(PATTERNS) - 1}")
        primary_colour, primary_pattern = colours[primary_class // len(PATTERNS)], PATTERNS[primary_class % len(PATTERNS)]
    background = _pick(rng, tuple(BACKGROUNDS))
    position = _pick(rng, tuple(OPPOSITE)) if two_objects else "centre"
    objects = [{"colour": primary_colour, "pattern": primary_pattern, "position": position}]
    if two_objects:
        objects.append({"colour": _pick(rng, colours), "pattern": _pick(rng, PATTERNS), "position": OPPOSITE[position]})
    return {"background": background, "width": width, "height": height, "objects": objects}


def _jittered(rgb: tuple[int, int, int], offsets) -> tuple[int, ...]:
    return tuple(min(255, max(0, c + int(o))) for c, o in zip(rgb, offsets))


def pattern_mask(pattern: str, dx: np.ndarray, dy: np.ndarray, period: float) -> np.ndarray:
    """Where a ball of ``pattern`` takes its colour, on pixel offsets (``dx``, ``dy``) from its
    centre; elsewhere the background shows through. Phase is fixed at the centre, so "ringed"
    is concentric."""
    u, v = dx / period, dy / period
    if pattern == "solid":
        return np.ones(np.broadcast(u, v).shape, dtype=bool)
    if pattern == "striped":  # horizontal bands
        return np.broadcast_to(np.floor(2 * v) % 2 == 0, np.broadcast(u, v).shape)
    if pattern == "dotted":
        return (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < 0.3 ** 2
    if pattern == "ringed":
        return np.floor(2 * np.hypot(u, v)) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def _draw_ball(image: Image.Image, pattern: str, cx: float, cy: float, r: float, period: float, fill) -> None:
    left, top = max(0, int(cx - r)), max(0, int(cy - r))
    right, bottom = min(image.width, int(np.ceil(cx + r)) + 1), min(image.height, int(np.ceil(cy + r)) + 1)
    # Pixel centres, as PIL draws.
    dx = np.arange(left, right, dtype=np.float64)[None, :] + 0.5 - cx
    dy = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5 - cy
    mask = (dx ** 2 + dy ** 2 <= r ** 2) & pattern_mask(pattern, dx, dy, period)
    image.paste(fill, (left, top, right, bottom), Image.fromarray(mask.astype(np.uint8) * 255))


_ANCHORS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
# Radius as a fraction of the shorter side: one ball fills the middle; two do not touch.
_RADIUS_FRACTION = {1: (0.30, 0.38), 2: (0.20, 0.24)}


def render(scene: dict, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene``; ``rng`` supplies the exact geometry, colour jitter and noise."""
    validate_scene(scene)
    width, height = scene["width"], scene["height"]
    objects = scene["objects"]
    # All draws in three calls: per-call overhead of a Generator dominates at this size.
    colour_offsets = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=(1 + len(objects), 3)).tolist()
    geometry = rng.random((len(objects), 3)).tolist()
    noise_tile, noise_x, noise_y = rng.integers(0, [NOISE_BANK_SIZE, MAX_SIDE - width + 1, MAX_SIDE - height + 1]).tolist()

    image = Image.new("RGB", (width, height), _jittered(BACKGROUNDS[scene["background"]], colour_offsets[0]))
    # Balls live in the central square: a shortest-side resize + centre crop (the
    # students' evaluation transform) then always sees the whole scene.
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    low, high = _RADIUS_FRACTION[len(objects)]
    for obj, offsets, (u_radius, u_x, u_y) in zip(objects, colour_offsets[1:], geometry):
        r = side * (low + (high - low) * u_radius)
        ax, ay = _ANCHORS[obj["position"]]
        cx = left + side * (ax + POSITION_JITTER * (2 * u_x - 1))
        cy = top + side * (ay + POSITION_JITTER * (2 * u_y - 1))
        cx, cy = min(max(cx, left + r), left + side - r), min(max(cy, top + r), top + side - r)
        _draw_ball(image, obj["pattern"], cx, cy, r, side * PATTERN_PERIOD,
                   _jittered(OBJECT_COLOURS[obj["colour"]], offsets))
    noise = _noise_bank()[noise_tile].crop((noise_x, noise_y, noise_x + width, noise_y + height))
    # Saturating image + noise - amplitude, in C: half the cost of the same in numpy.
    return ImageChops.add(image, noise, offset=-NOISE_AMPLITUDE)


@functools.cache
def _noise_bank() -> tuple[Image.Image, ...]:
    """Fixed noise tiles (values 0..2*amplitude); each image takes a random window of one."""
    rng = np.random.default_rng(NOISE_BANK_SEED)
    shape = (MAX_SIDE, MAX_SIDE, 3)
    return tuple(Image.fromarray(rng.integers(0, 2 * NOISE_AMPLITUDE + 1, size=shape, dtype=np.uint8))
                 for _ in range(NOISE_BANK_SIZE))


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def object_phrase(obj: dict) -> str:
    return f"{obj['colour']} {obj['pattern']} ball"


def describe(scene: dict, rng: np.random.Generator) -> str:
    """A full, correct description of ``scene`` (every ball's colour and pattern) in one of
    several phrasings."""
    validate_scene(scene)
    objects = list(scene["objects"])
    if len(objects) == 2 and rng.random() < 0.5:
        objects.reverse()  # the two balls are named in either order
    fields = {f"o{i}": object_phrase(obj) for i, obj in enumerate(objects, start=1)}
    template = _pick(rng, _ONE_OBJECT_TEMPLATES if len(objects) == 1 else _TWO_OBJECT_TEMPLATES)
    return template.format(**fields)


def _validated_mix(mix: dict) -> dict:
    unknown = sorted(set(mix) - set(DEFAULT_ALT_TEXT_MIX))
    if unknown:
        raise ValueError(f"unknown alt-text kinds {unknown}; known: {list(DEFAULT_ALT_TEXT_MIX)}")
    fractions = {kind: float(mix.get(kind, 0.0)) for kind in DEFAULT_ALT_TEXT_MIX}
    if any(not math.isfinite(f) or f < 0 for f in fractions.values()):
        raise ValueError(f"alt-text fractions must be finite and >= 0, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"alt-text fractions must sum to 1, got {sum(fractions.values()):.6f} ({fractions})")
    return fractions


@functools.lru_cache(maxsize=8)
def _mix_table(mix_items: tuple) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Kinds and cumulative fractions; cached as it runs once per sample."""
    fractions = _validated_mix(dict(mix_items))
    return tuple(fractions), tuple(itertools.accumulate(fractions.values()))


def _wrong_scene(scene: dict, rng: np.random.Generator) -> dict:
    """``scene`` with the primary ball's colour or pattern replaced by another value."""
    wrong = copy.deepcopy(scene)
    primary = wrong["objects"][0]
    if rng.random() < 0.5:
        primary["colour"] = _pick(rng, [c for c in OBJECT_COLOURS if c != primary["colour"]])
    else:
        primary["pattern"] = _pick(rng, [p for p in PATTERNS if p != primary["pattern"]])
    return wrong


def alt_text_with_kind(scene: dict, rng: np.random.Generator, mix: dict | None = None) -> tuple[str, str]:
    """Web-like alt-text for ``scene`` and its kind: full, partial, wrong or uninformative.

    partial names only the primary ball's colour, only its pattern, or only the background;
    wrong is a full description with the primary ball's colour or pattern swapped.
    """
    kinds, cumulative = _mix_table(tuple((DEFAULT_ALT_TEXT_MIX if mix is None else mix).items()))
    kind = kinds[min(bisect.bisect_right(cumulative, rng.random()), len(kinds) - 1)]
    primary = scene["objects"][0]
    if kind == "full":
        return kind, describe(scene, rng)
    if kind == "wrong":
        return kind, describe(_wrong_scene(scene, rng), rng)
    if kind == "partial":
        aspect = _pick(rng, tuple(_PARTIAL_TEMPLATES))
        template = _pick(rng, _PARTIAL_TEMPLATES[aspect])
        return kind, template.format(colour=primary["colour"], pattern=primary["pattern"], bg=scene["background"])
    template = _pick(rng, _UNINFORMATIVE_TEMPLATES)
    return kind, template.format(n4=int(rng.integers(1000, 10000)), n5=int(rng.integers(10000, 100000)),
                                 small=int(rng.integers(1, 6)), large=int(rng.integers(6, 30)))


def alt_text(scene: dict, rng: np.random.Generator, mix: dict | None = None) -> str:
    return alt_text_with_kind(scene, rng, mix)[1]


def distinct_descriptions(scene: dict, num: int, rng: np.random.Generator) -> list[str]:
    """``num`` different full descriptions of ``scene``."""
    if num < 1:
        raise ValueError(f"need at least one description, asked for {num}")
    found: list[str] = []
    for _ in range(100 * num):
        text = describe(scene, rng)
        if text not in found:
            found.append(text)
            if len(found) == num:
                return found
    raise ValueError(f"found only {len(found)} distinct phrasings of this scene, asked for {num}")


class WorldCaptioner:
    """The toy world's stand-in for CoCa: clean captions read off the scene in the metadata."""

    def __call__(self, sample_meta: dict, num_captions: int, seed: int) -> list[str]:
        if "toy_scene" not in sample_meta:
            raise ValueError(
                f"sample {sample_meta.get('uid', '?')} has no 'toy_scene' in its metadata: the world "
                "captioner only describes toy-world samples; configure a CoCa captioner for real data")
        return distinct_descriptions(sample_meta["toy_scene"], num_captions, np.random.default_rng(seed))


def _sample_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index])


def _uid(seed: int, stream: str, index: int) -> str:
    return hashlib.sha256(f"toyworld:{seed}:{stream}:{index}".encode()).hexdigest()[:32]


# output name -> (directory under --out-dir, scene stream)
# (layout's names: the config's default roots are these folders under the results' data/)
OUTPUTS = {
    "datacomp": (TOY_DATACOMP, "train"),
    "teacher_data": (TOY_TEACHER_DATA, "teacher"),
    "toy_zeroshot": (f"{BENCHMARKS}/toy_zeroshot", "zeroshot"),
    "toy_retrieval": (f"{BENCHMARKS}/toy_retrieval", "retrieval"),
}


@dataclass(frozen=True)
class _ShardJob:
    output: str
    path: Path
    shard: int
    first_index: int
    num_samples: int


def _datacomp_sample(seed: int, stream: str, index: int, key: str, alt_text_mix: dict | None) -> tuple[dict, str]:
    """A DataComp record and its caption kind: alt-text if ``alt_text_mix`` is given, else clean."""
    rng = _sample_rng(seed, stream, index)
    scene = generate_scene(rng)
    jpg = encode_jpeg(render(scene, rng))
    if alt_text_mix is None:
        kind, caption = "clean", describe(scene, rng)
    else:
        kind, caption = alt_text_with_kind(scene, rng, alt_text_mix)
    uid = _uid(seed, stream, index)
    record = datacomp_record(key, jpg, caption, uid, f"https://toy.invalid/{uid}.jpg",
                             extra_meta={"toy_scene": scene, "toy_caption_kind": kind})
    return record, kind


def _benchmark_sample(seed: int, stream: str, index: int, retrieval_captions: int) -> dict:
    rng = _sample_rng(seed, stream, index)
    record = {"__key__": f"s{index:08d}"}
    if stream == "zeroshot":
        # One ball, so the label is the whole picture; classes cycle so that every class
        # gets (nearly) the same number of images.
        scene = generate_scene(rng, two_object_probability=0.0, primary_class=index % len(class_names()))
        record["cls"] = str(scene_label(scene))
    else:
        # Mostly two balls: a compositional caption singles out fewer images.
        scene = generate_scene(rng, two_object_probability=0.75)
        record["txt"] = "\n".join(distinct_descriptions(scene, retrieval_captions, rng))
    record["jpg"] = encode_jpeg(render(scene, rng))
    record["json"] = json.dumps({"toy_scene": scene})
    return record


def _write_shard(job: _ShardJob, seed: int, alt_text_mix: dict, retrieval_captions: int) -> dict[str, int]:
    """Write one shard; returns how many captions of each kind it holds."""
    _, stream = OUTPUTS[job.output]
    kinds: dict[str, int] = {}
    with atomic_tar_writer(job.path, mtime=TAR_MTIME) as writer:
        for position in range(job.num_samples):
            index = job.first_index + position
            if stream in ("train", "teacher"):
                record, kind = _datacomp_sample(seed, stream, index, sample_key(job.shard, position),
                                                alt_text_mix if stream == "train" else None)
            else:
                record, kind = _benchmark_sample(seed, stream, index, retrieval_captions), stream
            kinds[kind] = kinds.get(kind, 0) + 1
            writer.write(record)
    return kinds


def _shard_jobs(out_dir: Path, output: str, num_samples: int, samples_per_shard: int) -> list[_ShardJob]:
    directory, stream = OUTPUTS[output]
    jobs = []
    for shard, first_index in enumerate(range(0, num_samples, samples_per_shard)):
        # clip_benchmark reads test/{0..n-1}.tar; DataComp names shards 00000000.tar, ...
        name = f"test/{shard}.tar" if stream in ("zeroshot", "retrieval") else shard_name(shard)
        jobs.append(_ShardJob(output, out_dir / directory / name, shard, first_index,
                              min(samples_per_shard, num_samples - first_index)))
    return jobs


def _write_benchmark_metadata(root: Path, stream: str, num_shards: int) -> None:
    (root / "test" / "nshards.txt").write_text(f"{num_shards}\n")
    if stream == "zeroshot":
        (root / "classnames.txt").write_text("\n".join(class_names()) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n")
    else:
        (root / "dataset_type.txt").write_text("retrieval\n")


def generate(out_dir: str | Path, *, seed: int = 0, train_samples: int = 8000, teacher_samples: int = 16000,
             benchmark_samples: int = 500, samples_per_shard: int = 1000, alt_text_mix: dict | None = None,
             retrieval_captions: int = 3, overwrite: bool = False, workers: int = 1) -> dict:
    """Write every toy-world output under ``out_dir`` and return the manifest (also written).

    Shards are independent (one Generator per sample), so ``workers`` processes write them
    in parallel with the same bytes as one.
    """
    counts = {"datacomp": train_samples, "teacher_data": teacher_samples,
              "toy_zeroshot": benchmark_samples, "toy_retrieval": benchmark_samples}
    for name, value in (("train_samples", train_samples), ("teacher_samples", teacher_samples),
                        ("benchmark_samples", benchmark_samples), ("samples_per_shard", samples_per_shard),
                        ("retrieval_captions", retrieval_captions), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    mix = _validated_mix(DEFAULT_ALT_TEXT_MIX if alt_text_mix is None else alt_text_mix)
    out_dir = Path(out_dir)
    for directory, _ in OUTPUTS.values():
        target = out_dir / directory
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise ValueError(f"{target} is not empty; stale shards would mix with new ones (use --overwrite)")
            shutil.rmtree(target)

    jobs = [job for output, n in counts.items() for job in _shard_jobs(out_dir, output, n, samples_per_shard)]
    write = functools.partial(_write_shard, seed=seed, alt_text_mix=mix, retrieval_captions=retrieval_captions)
    if workers == 1:
        shard_kinds = [write(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            shard_kinds = list(pool.map(write, jobs))

    outputs = {}
    for output, (directory, stream) in OUTPUTS.items():
        kinds: dict[str, int] = {}
        for job, job_kinds in zip(jobs, shard_kinds):
            if job.output == output:
                for kind, n in job_kinds.items():
                    kinds[kind] = kinds.get(kind, 0) + n
        num_shards = sum(job.output == output for job in jobs)
        outputs[output] = {"dir": directory, "samples": counts[output], "shards": num_shards}
        if stream == "train":
            outputs[output]["caption_kinds"] = {kind: kinds.get(kind, 0) for kind in DEFAULT_ALT_TEXT_MIX}
        elif stream == "zeroshot":
            _write_benchmark_metadata(out_dir / directory, stream, num_shards)
            outputs[output].update(task="zeroshot_classification", classes=len(class_names()))
        elif stream == "retrieval":
            _write_benchmark_metadata(out_dir / directory, stream, num_shards)
            outputs[output].update(task="zeroshot_retrieval", captions_per_image=retrieval_captions)

    manifest = {
        "seed": seed,
        "parameters": {"train_samples": train_samples, "teacher_samples": teacher_samples,
                       "benchmark_samples": benchmark_samples, "samples_per_shard": samples_per_shard,
                       "alt_text_mix": mix, "retrieval_captions": retrieval_captions},
        "world": {"patterns": list(PATTERNS), "object_colours": list(OBJECT_COLOURS),
                  "backgrounds": list(BACKGROUNDS), "positions": list(POSITIONS),
                  "image_side_px": [MIN_SIDE, MAX_SIDE], "jpeg_quality": JPEG_QUALITY,
                  "jpeg_subsampling": "4:4:4"},
        "outputs": outputs,
        # every shard written (the training data, teacher data and benchmark sets): what the jobs
        # reading this world train on, and their data's identity (shards.SHARD_FILES_KEY)
        SHARD_FILES_KEY: relative_to_manifest([describe_shard(job.path) for job in jobs], out_dir / TOY_MANIFEST),
    }
    (out_dir / TOY_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
