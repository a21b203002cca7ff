"""A procedural image-text world small enough for a tiny CLIP to learn on a CPU.

A scene is a background colour and one or two objects (shape, colour, size, position),
drawn with PIL at a random size between 48 and 96 pixels per side, with light noise, as
JPEG. The toy experiment needs the same contrast as the paper: DataComp's web alt-text is
noisy (partial, wrong or uninformative), while reinforcement brings clean synthetic
captions and the knowledge of teachers trained on curated data. So:

- the DataComp-format shards carry web-like alt-text (``alt_text``), plus the scene itself
  in the ``json`` metadata (``toy_scene``) so that ``WorldCaptioner`` can play the role of
  CoCa and write clean captions;
- the teacher shards are a disjoint stream of scenes with clean descriptions;
- two benchmark sets in clip_benchmark's webdataset layout: zero-shot classification of
  the primary object's "<colour> <shape>", and image-text retrieval.

Everything is a pure function of the seed: each sample has its own numpy Generator seeded
from (seed, stream, index), and tar members get a fixed mtime, so shards are byte-identical
across runs.
"""
from __future__ import annotations

import argparse
import bisect
import copy
import functools
import hashlib
import io
import itertools
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from mobileclip_repro.shards import atomic_tar_writer, datacomp_record, sample_key, shard_name

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
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
BACKGROUNDS = {
    "grey": (128, 128, 128),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "beige": (225, 205, 160),
    "pink": (250, 170, 200),
    "brown": (110, 70, 35),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
# Two objects sit on opposite sides: any other pair overlaps at the large size, and an
# occluded primary object would make the classification label a guess.
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}

MIN_SIDE, MAX_SIDE = 48, 96
JPEG_QUALITY = 90
NOISE_AMPLITUDE = 8
NOISE_BANK_SIZE, NOISE_BANK_SEED = 32, 20240
COLOUR_JITTER = 12
POSITION_JITTER = 0.03  # of the shorter side
# Fixed so that the same seed gives byte-identical shards; an int, since a float mtime
# costs an extra pax header per tar member.
TAR_MTIME = 0

# Sub-streams of one seed; every output draws from its own so that they are disjoint.
STREAMS = {"train": 0, "teacher": 1, "zeroshot": 2, "retrieval": 3}

DEFAULT_ALT_TEXT_MIX = {"full": 0.30, "partial": 0.25, "wrong": 0.20, "uninformative": 0.25}

ZEROSHOT_TEMPLATES = (
    "a photo of a {c}.",
    "a {c}.",
    "an image showing a {c}.",
    "a {c} on a plain background.",
    "a picture with a {c} in it.",
)

_SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}
_POSITION_WORDS = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the middle"),
}
_ONE_OBJECT_TEMPLATES = (
    "a {o1} {p1} on a {bg} background",
    "a {o1} {p1}, {bg} background",
    "a {bg} background with a {o1} {p1}",
    "there is a {o1} {p1} on a {bg} background",
    "a photo of a {o1} {p1} against a {bg} background",
    "{p1_cap}, a {o1} on a {bg} background",
)
_TWO_OBJECT_TEMPLATES = (
    "a {o1} {p1} and a {o2} {p2}, on a {bg} background",
    "a {bg} background with a {o1} {p1} and a {o2} {p2}",
    "there is a {o1} {p1} and a {o2} {p2} on a {bg} background",
    "a photo of a {o1} {p1} next to a {o2} {p2}, {bg} background",
    "a {o1} {p1}, a {o2} {p2}, against a {bg} background",
)
_PARTIAL_TEMPLATES = {
    "colour": ("{colour}", "something {colour}", "{colour} thing", "in {colour}"),
    "shape": ("{shape}", "a {shape}", "{shape} shape", "{shape} icon"),
    "background": ("{bg} background", "on {bg}", "plain {bg} backdrop"),
}
_UNINFORMATIVE_TEMPLATES = (
    "IMG_{n4}.jpg", "DSC{n5}", "stock photo", "click to enlarge", "image", "untitled",
    "photo {small} of {large}", "thumbnail", "free download", "view larger image",
)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def class_names() -> list[str]:
    """Zero-shot classes, "<colour> <shape>" of the primary object; index = label."""
    return [f"{colour} {shape}" for colour in OBJECT_COLOURS for shape in SHAPES]


def scene_label(scene: dict) -> int:
    primary = scene["objects"][0]
    return list(OBJECT_COLOURS).index(primary["colour"]) * len(SHAPES) + SHAPES.index(primary["shape"])


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
        for field, allowed in (("shape", SHAPES), ("colour", tuple(OBJECT_COLOURS)),
                               ("size", SIZES), ("position", POSITIONS)):
            if obj.get(field) not in allowed:
                raise ValueError(f"object {obj!r}: {field} must be one of {list(allowed)}")
        if obj["colour"] == scene["background"]:
            raise ValueError(f"object {obj!r} has the background's colour and would be invisible")


def generate_scene(rng: np.random.Generator, *, two_object_probability: float = 0.5,
                   primary_class: int | None = None, dominant_primary: bool = False) -> dict:
    """A random scene; the first object is the primary one (never smaller than the second).

    ``primary_class`` fixes the primary object's colour and shape (a ``class_names`` index);
    ``dominant_primary`` makes the primary large whenever a second object is present, so a
    classification label is unambiguous.
    """
    if not 0.0 <= two_object_probability <= 1.0:
        raise ValueError(f"two_object_probability must be in [0, 1], got {two_object_probability}")
    colours = list(OBJECT_COLOURS)
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    two_objects = bool(rng.random() < two_object_probability)
    if primary_class is None:
        primary_colour, primary_shape = _pick(rng, colours), _pick(rng, SHAPES)
    else:
        if not 0 <= primary_class < len(colours) * len(SHAPES):
            raise ValueError(f"primary_class {primary_class} outside 0..{len(colours) * len(SHAPES) - 1}")
        primary_colour, primary_shape = colours[primary_class // len(SHAPES)], SHAPES[primary_class % len(SHAPES)]
    background = _pick(rng, [b for b in BACKGROUNDS if b != primary_colour])
    primary_size = "large" if two_objects and dominant_primary else _pick(rng, SIZES)
    if two_objects:
        primary_position = _pick(rng, tuple(OPPOSITE))
    else:
        primary_position = _pick(rng, POSITIONS)
    objects = [{"shape": primary_shape, "colour": primary_colour, "size": primary_size, "position": primary_position}]
    if two_objects:
        second_size = "small" if primary_size == "small" or dominant_primary else _pick(rng, SIZES)
        objects.append({
            "shape": _pick(rng, SHAPES),
            "colour": _pick(rng, [c for c in colours if c != background]),
            "size": second_size,
            "position": OPPOSITE[primary_position],
        })
    return {"background": background, "width": width, "height": height, "objects": objects}


def _jittered(rgb: tuple[int, int, int], offsets) -> tuple[int, ...]:
    return tuple(min(255, max(0, c + int(o))) for c, o in zip(rgb, offsets))


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        half = 0.85 * r  # a square as wide as the circle looks much bigger
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - 0.95 * r, cy + 0.75 * r), (cx + 0.95 * r, cy + 0.75 * r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=fill)
    elif shape == "cross":
        arm = 0.3 * r
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=fill)
    elif shape == "ring":
        # Thick enough to stay a ring, not a dot, after the student's resize to 32 px.
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(0.38 * r)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


_ANCHORS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
_RADIUS_FRACTION = {"small": (0.13, 0.16), "large": (0.22, 0.26)}  # of the shorter side


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
    draw = ImageDraw.Draw(image)
    # Objects live in the central square: a shortest-side resize + centre crop (the
    # students' evaluation transform) then always sees the whole scene.
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    for obj, offsets, (u_radius, u_x, u_y) in zip(objects, colour_offsets[1:], geometry):
        low, high = _RADIUS_FRACTION[obj["size"]]
        r = side * (low + (high - low) * u_radius)
        ax, ay = _ANCHORS[obj["position"]]
        cx = left + side * (ax + POSITION_JITTER * (2 * u_x - 1))
        cy = top + side * (ay + POSITION_JITTER * (2 * u_y - 1))
        cx, cy = min(max(cx, left + r), left + side - r), min(max(cy, top + r), top + side - r)
        _draw_object(draw, obj["shape"], cx, cy, r, _jittered(OBJECT_COLOURS[obj["colour"]], offsets))
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
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _object_phrase(obj: dict, rng: np.random.Generator) -> str:
    return f"{_pick(rng, _SIZE_WORDS[obj['size']])} {obj['colour']} {obj['shape']}"


def describe(scene: dict, rng: np.random.Generator) -> str:
    """A full, correct description of ``scene`` in one of several phrasings."""
    validate_scene(scene)
    objects = list(scene["objects"])
    if len(objects) == 2 and rng.random() < 0.3:
        objects.reverse()  # people do not always name the bigger object first
    fields = {"bg": scene["background"]}
    for i, obj in enumerate(objects, start=1):
        fields[f"o{i}"] = _object_phrase(obj, rng)
        fields[f"p{i}"] = _pick(rng, _POSITION_WORDS[obj["position"]])
    fields["p1_cap"] = fields["p1"][0].upper() + fields["p1"][1:]
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
    """``scene`` with the primary object's colour or shape replaced by another value."""
    wrong = copy.deepcopy(scene)
    primary = wrong["objects"][0]
    if rng.random() < 0.5:
        primary["colour"] = _pick(rng, [c for c in OBJECT_COLOURS if c not in (primary["colour"], scene["background"])])
    else:
        primary["shape"] = _pick(rng, [s for s in SHAPES if s != primary["shape"]])
    return wrong


def alt_text_with_kind(scene: dict, rng: np.random.Generator, mix: dict | None = None) -> tuple[str, str]:
    """Web-like alt-text for ``scene`` and its kind: full, partial, wrong or uninformative.

    partial names only the primary object's colour, only its shape, or only the background;
    wrong is a full description with the primary object's colour or shape swapped.
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
        return kind, template.format(colour=primary["colour"], shape=primary["shape"], bg=scene["background"])
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
OUTPUTS = {
    "datacomp": ("datacomp", "train"),
    "teacher_data": ("teacher_data", "teacher"),
    "toy_zeroshot": ("benchmarks/toy_zeroshot", "zeroshot"),
    "toy_retrieval": ("benchmarks/toy_retrieval", "retrieval"),
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
        # Classes cycle so that every class gets (nearly) the same number of images.
        scene = generate_scene(rng, primary_class=index % len(class_names()), dominant_primary=True)
        record["cls"] = str(scene_label(scene))
    else:
        # Mostly two objects: a compositional caption singles out fewer images.
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
        "world": {"shapes": list(SHAPES), "object_colours": list(OBJECT_COLOURS),
                  "backgrounds": list(BACKGROUNDS), "sizes": list(SIZES), "positions": list(POSITIONS),
                  "image_side_px": [MIN_SIDE, MAX_SIDE], "jpeg_quality": JPEG_QUALITY},
        "outputs": outputs,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="output root (datacomp/, teacher_data/, benchmarks/, manifest.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-samples", type=int, default=8000, help="DataComp-format samples with web-like alt-text")
    parser.add_argument("--teacher-samples", type=int, default=16000, help="samples with clean captions for the teachers")
    parser.add_argument("--benchmark-samples", type=int, default=500, help="images in each benchmark set")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--retrieval-captions", type=int, default=3, help="captions per retrieval image")
    for kind, fraction in DEFAULT_ALT_TEXT_MIX.items():
        parser.add_argument(f"--alt-{kind}", type=float, default=fraction, help=f"fraction of {kind} alt-text")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out-dir")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards (output is identical)")


def command(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    manifest = generate(
        args.out_dir, seed=args.seed, train_samples=args.train_samples, teacher_samples=args.teacher_samples,
        benchmark_samples=args.benchmark_samples, samples_per_shard=args.samples_per_shard,
        alt_text_mix={kind: getattr(args, f"alt_{kind}") for kind in DEFAULT_ALT_TEXT_MIX},
        retrieval_captions=args.retrieval_captions, overwrite=args.overwrite, workers=args.workers)
    images = sum(output["samples"] for output in manifest["outputs"].values())
    print(f"toy world (seed {args.seed}): {images} images in {time.perf_counter() - start:.1f} s -> {args.out_dir}")
    for name, output in manifest["outputs"].items():
        print(f"  {name:<14} {output['samples']:>7} samples in {output['shards']} shards")
    return 0
