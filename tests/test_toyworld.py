"""The toy world: deterministic shards in DataComp's format, benchmarks clip_benchmark can
read, web-like alt-text in the requested mix, and an oracle captioner that tells the truth."""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobileclip_repro import cli, toyworld
from mobileclip_repro.shards import datacomp_record, iter_raw_samples, sample_key, sha256_hex

TINY = dict(train_samples=20, teacher_samples=10, benchmark_samples=18, samples_per_shard=8)


def _tiny_cli_args(out_dir: Path, seed: int = 0) -> list[str]:
    return ["toy-data", "--out-dir", str(out_dir), "--seed", str(seed), "--train-samples", "20",
            "--teacher-samples", "10", "--benchmark-samples", "18", "--samples-per-shard", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("toy")
    assert cli.main(_tiny_cli_args(out_dir)) == 0
    return out_dir


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _samples(directory: Path) -> list[dict]:
    return [s for tar in sorted(directory.glob("*.tar")) for s in iter_raw_samples(tar)]


def _scene(colour="red", pattern="striped", position="centre", background="grey", second=None):
    objects = [{"colour": colour, "pattern": pattern, "position": position}]
    if second:
        objects.append(second)
    return {"background": background, "width": 64, "height": 80, "objects": objects}


def test_same_seed_gives_byte_identical_outputs_also_in_parallel(world, tmp_path):
    again = tmp_path / "again"
    toyworld.generate(again, seed=0, workers=2, **TINY)
    assert _files(again) == _files(world)

    other = tmp_path / "other"
    toyworld.generate(other, seed=1, **TINY)
    assert _files(other)["datacomp/00000000.tar"] != _files(world)["datacomp/00000000.tar"]


def test_manifest_counts_every_output(world):
    manifest = json.loads((world / "manifest.json").read_text())
    outputs = manifest["outputs"]
    assert manifest["seed"] == 0
    assert {name: o["samples"] for name, o in outputs.items()} == {
        "datacomp": 20, "teacher_data": 10, "toy_zeroshot": 18, "toy_retrieval": 18}
    assert outputs["datacomp"]["shards"] == 3 and outputs["toy_zeroshot"]["shards"] == 3
    assert sum(outputs["datacomp"]["caption_kinds"].values()) == 20
    assert manifest["parameters"]["alt_text_mix"] == toyworld.DEFAULT_ALT_TEXT_MIX


def test_datacomp_shards_have_datacomp_keys_hashes_uids_and_the_scene(world):
    train = _samples(world / "datacomp")
    assert [s["__key__"] for s in train] == [sample_key(i // 8, i % 8) for i in range(20)]
    for sample in train:
        assert {k for k in sample if not k.startswith("__")} == {"jpg", "txt", "json", "url.txt"}
        meta = json.loads(sample["json"])
        assert meta["sha256"] == sha256_hex(sample["jpg"])
        assert re.fullmatch(r"[0-9a-f]{32}", meta["uid"])
        assert meta["url"] == sample["url.txt"].decode() == f"https://toy.invalid/{meta['uid']}.jpg"
        assert meta["caption"] == sample["txt"].decode()
        toyworld.validate_scene(meta["toy_scene"])
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.format == "JPEG"
            assert image.size == (meta["toy_scene"]["width"], meta["toy_scene"]["height"])

    teacher = _samples(world / "teacher_data")
    uids = [json.loads(s["json"])["uid"] for s in train + teacher]
    assert len(set(uids)) == len(uids), "train and teacher streams must be disjoint"
    for sample in teacher:  # teachers learn from curated, fully correct captions
        meta = json.loads(sample["json"])
        primary = meta["toy_scene"]["objects"][0]
        assert meta["toy_caption_kind"] == "clean"
        assert f"{primary['colour']} {primary['pattern']} ball" in sample["txt"].decode()


def test_image_sizes_vary_within_bounds(world):
    sizes = {(json.loads(s["json"])["toy_scene"]["width"], json.loads(s["json"])["toy_scene"]["height"])
             for s in _samples(world / "datacomp")}
    assert len(sizes) > 10
    assert all(toyworld.MIN_SIDE <= side <= toyworld.MAX_SIDE for size in sizes for side in size)


def test_benchmarks_load_through_clip_benchmark(world):
    from clip_benchmark.datasets.builder import build_dataset

    zeroshot = build_dataset("wds/toy_zeroshot", root=str(world / "benchmarks" / "toy_zeroshot"),
                             transform=lambda image: image, task="zeroshot_classification")
    assert zeroshot.classes == toyworld.class_names() and len(zeroshot.classes) == 32
    assert len(zeroshot.templates) >= 3 and all("{c}" in t for t in zeroshot.templates)
    items = list(zeroshot)
    assert len(items) == 18
    assert [label for _, label in items] == list(range(18)), "classes cycle in sample order"
    assert all(isinstance(image, Image.Image) for image, _ in items)

    retrieval = build_dataset("wds/toy_retrieval", root=str(world / "benchmarks" / "toy_retrieval"),
                              transform=lambda image: image, task="zeroshot_retrieval")
    pairs = list(retrieval)
    assert len(pairs) == 18
    for image, captions in pairs:
        assert isinstance(image, Image.Image)
        assert len(captions) == 3 == len(set(captions))


def test_zeroshot_images_hold_the_one_ball_their_label_names(world):
    for sample in _samples(world / "benchmarks" / "toy_zeroshot" / "test"):
        scene = json.loads(sample["json"])["toy_scene"]
        assert int(sample["cls"]) == toyworld.scene_label(scene)
        assert len(scene["objects"]) == 1


def test_retrieval_captions_describe_their_image(world):
    for sample in _samples(world / "benchmarks" / "toy_retrieval" / "test"):
        scene = json.loads(sample["json"])["toy_scene"]
        for caption in sample["txt"].decode().splitlines():
            for obj in scene["objects"]:
                assert toyworld.object_phrase(obj) in caption


def test_generate_refuses_to_mix_with_stale_shards(world, tmp_path):
    with pytest.raises(ValueError, match="not empty"):
        toyworld.generate(world, **TINY)
    toyworld.generate(tmp_path, **TINY)
    toyworld.generate(tmp_path, overwrite=True, **{**TINY, "train_samples": 5})
    assert len(list((tmp_path / "datacomp").glob("*.tar"))) == 1


def test_alt_text_mix_is_respected():
    kinds = Counter()
    for i in range(4000):
        rng = np.random.default_rng(i)
        kinds[toyworld.alt_text_with_kind(toyworld.generate_scene(rng), rng)[0]] += 1
    for kind, fraction in toyworld.DEFAULT_ALT_TEXT_MIX.items():
        assert abs(kinds[kind] / 4000 - fraction) < 0.03, (kind, kinds)

    only_full = {"full": 1.0, "partial": 0.0, "wrong": 0.0, "uninformative": 0.0}
    rng = np.random.default_rng(0)
    assert {toyworld.alt_text_with_kind(_scene(), rng, only_full)[0] for _ in range(50)} == {"full"}


@pytest.mark.parametrize("mix, problem", [
    ({"full": 0.5, "partial": 0.25}, "sum to 1"),
    ({"full": 1.2, "partial": -0.2}, ">= 0"),
    ({"full": 0.5, "spam": 0.5}, "unknown alt-text kinds"),
])
def test_bad_alt_text_mix_is_rejected(mix, problem):
    with pytest.raises(ValueError, match=problem):
        toyworld.alt_text(_scene(), np.random.default_rng(0), mix)


def test_alt_text_kinds_mean_what_they_say():
    scene = _scene(colour="red", pattern="striped", background="grey")
    words = {"colour": "red", "pattern": "striped", "background": "grey"}
    seen = Counter()
    for i in range(400):
        kind, text = toyworld.alt_text_with_kind(scene, np.random.default_rng(i))
        mentioned = {aspect for aspect, word in words.items() if re.search(rf"\b{word}\b", text)}
        seen[kind] += 1
        if kind == "full":  # clean captions name the ball, not the background
            assert "red striped ball" in text and mentioned == {"colour", "pattern"}
        elif kind == "wrong":  # exactly one of the primary ball's colour and pattern is swapped
            assert "red striped ball" not in text and len(mentioned) == 1
        elif kind == "partial":
            assert len(mentioned) == 1
        else:
            assert not mentioned
    assert set(seen) == set(toyworld.DEFAULT_ALT_TEXT_MIX)


def test_world_captioner_gives_distinct_correct_descriptions():
    second = {"colour": "blue", "pattern": "dotted", "position": "right"}
    scene = _scene(colour="orange", pattern="ringed", position="left", background="beige", second=second)
    meta = json.loads(datacomp_record("000000000000", b"jpg", "IMG_1234.jpg", "0" * 32, "https://toy.invalid/x.jpg",
                                      extra_meta={"toy_scene": scene})["json"])
    captions = toyworld.WorldCaptioner()(meta, num_captions=5, seed=7)
    assert len(captions) == 5 == len(set(captions))
    for caption in captions:
        assert "orange ringed ball" in caption and "blue dotted ball" in caption, caption
        assert "beige" not in caption
    assert toyworld.WorldCaptioner()(meta, num_captions=5, seed=7) == captions


def test_world_captioner_rejects_samples_without_a_scene():
    with pytest.raises(ValueError, match="toy_scene.*CoCa"):
        toyworld.WorldCaptioner()({"uid": "abc", "sha256": "00"}, num_captions=5, seed=0)


def test_world_captioner_reports_when_a_scene_has_too_few_phrasings():
    with pytest.raises(ValueError, match="distinct phrasings"):
        toyworld.WorldCaptioner()({"toy_scene": _scene()}, num_captions=200, seed=0)


def test_scenes_centre_one_ball_and_put_two_on_opposite_sides():
    counts = Counter()
    for i in range(500):
        scene = toyworld.generate_scene(np.random.default_rng(i))
        toyworld.validate_scene(scene)
        positions = [o["position"] for o in scene["objects"]]
        counts[len(positions)] += 1
        assert positions == ["centre"] or toyworld.OPPOSITE[positions[0]] == positions[1]
    assert counts[1] > 150 and counts[2] > 150
    assert not set(toyworld.BACKGROUNDS) & set(toyworld.OBJECT_COLOURS), "a colour word must name a ball"
    with pytest.raises(ValueError, match="opposite sides"):
        toyworld.validate_scene(_scene(position="left", second={"colour": "blue", "pattern": "solid", "position": "top"}))
    with pytest.raises(ValueError, match="pattern must be one of"):
        toyworld.validate_scene(_scene(pattern="paisley"))


def test_render_draws_the_balls_colour():
    scene = _scene(colour="blue", pattern="solid", background="beige")
    pixels = np.asarray(toyworld.render(scene, np.random.default_rng(0)), dtype=int)
    assert pixels.shape == (80, 64, 3)
    centre = pixels[40, 32]
    assert centre[2] > 180 and centre[0] < 80, centre  # blue in the middle
    assert abs(pixels[2, 2] - np.array(toyworld.BACKGROUNDS["beige"])).max() < 30  # beige in the corner


@pytest.mark.parametrize("pattern", toyworld.PATTERNS)
def test_patterns_fill_part_of_the_ball_and_differ_from_each_other(pattern):
    offsets = np.arange(-16, 16) + 0.5
    mask = toyworld.pattern_mask(pattern, offsets[None, :], offsets[:, None], period=8.0)
    coverage = mask.mean()
    assert coverage == 1.0 if pattern == "solid" else 0.15 < coverage < 0.65, coverage
    others = [p for p in toyworld.PATTERNS if p != pattern]
    assert all((toyworld.pattern_mask(p, offsets[None, :], offsets[:, None], 8.0) != mask).mean() > 0.2
               for p in others)
    if pattern == "striped":  # horizontal bands: constant along a row
        assert (mask == mask[:, :1]).all()


def test_extra_meta_cannot_override_datacomp_fields():
    with pytest.raises(ValueError, match="sha256"):
        datacomp_record("k", b"x", "c", "u", "url", extra_meta={"sha256": "forged"})
