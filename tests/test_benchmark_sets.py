"""`fetch-benchmark`: a clip_benchmark webdataset mirror from a (fake, loopback) hub into a
local root that clip_benchmark then reads without any network."""
from __future__ import annotations

import io
import json
import logging
import re
import tarfile

import pytest
from huggingface_hub.errors import EntryNotFoundError

import fake_hub  # tests/fake_hub.py
from mobileclip_repro.benchmark_sets import BenchmarkSetError, check_class_names, fetch_benchmark_set
from mobileclip_repro.cli import main
from mobileclip_repro.evaluate.evaluate import check_dataset_present, count_wds_images, parse_benchmark_specs
from mobileclip_repro.toyworld import generate

REPO = "clip-benchmark/wds_toy_zeroshot"


@pytest.fixture(scope="module")
def toy_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate(root, train_samples=1, teacher_samples=1, benchmark_samples=24, samples_per_shard=10)
    return root / "benchmarks"


def _publish(hub, repo: str, set_root) -> list[str]:
    names = []
    for path in sorted(p for p in set_root.rglob("*") if p.is_file()):
        name = path.relative_to(set_root).as_posix()
        hub.files[(repo, name)] = path.read_bytes()
        names.append(name)
    return names


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with fake_hub.serving(monkeypatch, tmp_path / "hf_home") as fake:
        yield fake


def test_a_classification_mirror_lands_where_evaluation_reads_it(hub, toy_sets, tmp_path):
    published = _publish(hub, REPO, toy_sets / "toy_zeroshot")
    root = tmp_path / "benchmarks" / "toy_zeroshot"
    fetched = fetch_benchmark_set(REPO, root)

    assert sorted(fetched["files"]) == sorted(published)
    for name in published:
        assert (root / name).read_bytes() == hub.files[(REPO, name)]
    (spec,) = parse_benchmark_specs([{"name": "toy", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification",
                                      "root": str(root), "hub_repo": REPO}])
    check_dataset_present(spec)
    assert count_wds_images(str(root), "test") == 24


def test_a_retrieval_mirror_needs_no_class_names(hub, toy_sets, tmp_path):
    _publish(hub, "clip-benchmark/wds_toy_retrieval", toy_sets / "toy_retrieval")
    fetched = fetch_benchmark_set("clip-benchmark/wds_toy_retrieval", tmp_path / "retrieval")
    assert fetched["dataset_type"] == "retrieval" and fetched["num_shards"] >= 1


def test_a_rerun_downloads_nothing_again(hub, toy_sets, tmp_path):
    _publish(hub, REPO, toy_sets / "toy_zeroshot")
    fetch_benchmark_set(REPO, tmp_path / "set")
    hub.taken()
    fetch_benchmark_set(REPO, tmp_path / "set")
    # only the commit main names is asked again (the repo-info API); no file is downloaded
    assert not [path for method, path in hub.taken() if method == "GET" and "/resolve/" in path]


def test_a_classification_mirror_without_class_names_is_refused(hub, toy_sets, tmp_path):
    _publish(hub, REPO, toy_sets / "toy_zeroshot")
    del hub.files[(REPO, "classnames.txt")]
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        fetch_benchmark_set(REPO, tmp_path / "set")


def test_a_missing_shard_is_an_error_naming_it(hub, toy_sets, tmp_path):
    _publish(hub, REPO, toy_sets / "toy_zeroshot")
    del hub.files[(REPO, "test/1.tar")]
    with pytest.raises(EntryNotFoundError, match="1.tar"):
        fetch_benchmark_set(REPO, tmp_path / "set")


def test_the_cli_writes_a_manifest(hub, toy_sets, tmp_path):
    _publish(hub, REPO, toy_sets / "toy_zeroshot")
    assert main(["fetch-benchmark", "--repo", REPO, "--root", str(tmp_path / "set"),
                 "--manifest", str(tmp_path / "fetched.json")]) == 0
    assert json.loads((tmp_path / "fetched.json").read_text())["repo"] == REPO


# -- class names against labels, both ways -------------------------------------------------------

def _classification_set(root, labels: list[int], classnames_text: str):
    """One shard of these labels (placeholder images: the check reads only ``cls`` members) and
    this ``classnames.txt``, in clip_benchmark's webdataset layout."""
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as archive:
        for index, label in enumerate(labels):
            for extension, data in (("jpg", b"not decoded"), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"s{index:04d}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text(classnames_text)
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return root


def test_names_no_label_uses_are_reported_with_both_counts_not_refused(tmp_path, caplog):
    """classnames.txt is the set's label space (clip_benchmark scores every name, used or not) and a
    split may lack classes, so extra names are a warning naming the file, both counts, and the names."""
    root = _classification_set(tmp_path / "subset", [0, 2, 2], "cat\ndog\nbird\nfish\n")
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.benchmark_sets"):
        assert check_class_names(root) == {"class_names": 4, "labels_used": 2}
    [warning] = caplog.records
    assert warning.getMessage() == (f"{root / 'classnames.txt'} lists 4 class names, the test split's labels use 2 "
                                    f"of them: the other 2 ('dog', 'fish') stay in the classifier as distractors "
                                    f"(fine for a split without every class; wrong if the file is another set's)")


def test_a_set_whose_labels_use_every_name_passes_quietly(tmp_path, caplog):
    root = _classification_set(tmp_path / "full", [1, 0, 2], "cat\ndog\nbird\n")
    with caplog.at_level(logging.WARNING, logger="mobileclip_repro.benchmark_sets"):
        assert check_class_names(root) == {"class_names": 3, "labels_used": 3}
    assert not caplog.records


@pytest.mark.parametrize("classnames_text, lines", [
    ("cat\n\ndog\nbird\n", "line 2"),    # shifts 'dog' and 'bird' off labels 1 and 2
    ("cat\ndog\nbird\n\n", "line 4"),    # one more class, named ''
    ("cat\n  \ndog\nbird\n", "line 2"),  # clip_benchmark strips each line
])
def test_a_blank_line_in_classnames_is_refused_naming_the_file_and_line(tmp_path, classnames_text, lines):
    root = _classification_set(tmp_path / "blank", [0, 1, 2], classnames_text)
    with pytest.raises(BenchmarkSetError, match=rf"{re.escape(str(root / 'classnames.txt'))} lists 4 class names, "
                                                rf"1 of them blank \({lines}\): clip_benchmark reads a blank line "
                                                rf"as a class named ''"):
        check_class_names(root)


def test_the_toy_worlds_sets_pass_with_every_class_named(toy_sets):
    from mobileclip_repro.toyworld import class_names

    counts = check_class_names(toy_sets / "toy_zeroshot")
    assert counts["class_names"] == len(class_names()) and 1 <= counts["labels_used"] <= len(class_names())


# -- the revision a set is fetched at ------------------------------------------------------------

DJGHOSH_REPO = "djghosh/wds_toy_zeroshot_test"  # DataComp's mirror layout (fake_hub.publish_wds_set)


def test_a_set_is_fetched_at_the_commit_its_revision_names_and_the_manifest_and_set_record_it(hub, toy_sets,
                                                                                            tmp_path):
    from mobileclip_repro.benchmark_sets import read_set_source

    fake_hub.publish_wds_set(hub, DJGHOSH_REPO, toy_sets / "toy_zeroshot")
    main_commit = hub.head(DJGHOSH_REPO)
    fetched = fetch_benchmark_set(DJGHOSH_REPO, tmp_path / "main")
    assert (fetched["revision"], fetched["commit"]) == (None, main_commit)
    assert read_set_source(tmp_path / "main") == {"repo": DJGHOSH_REPO, "revision": None, "commit": main_commit}

    # a push moves main; a set pinned to the older commit is still fetched as it was
    hub.move_main(DJGHOSH_REPO)
    hub.files[(DJGHOSH_REPO, "classnames.txt")] = b"renamed\n"
    pinned = fetch_benchmark_set(DJGHOSH_REPO, tmp_path / "pinned", revision=main_commit)
    assert (pinned["revision"], pinned["commit"]) == (main_commit, main_commit)
    assert (tmp_path / "pinned" / "classnames.txt").read_bytes() == (toy_sets / "toy_zeroshot" / "classnames.txt").read_bytes()


def test_the_cli_passes_the_revision_and_the_manifest_names_the_commit(hub, toy_sets, tmp_path):
    fake_hub.publish_wds_set(hub, DJGHOSH_REPO, toy_sets / "toy_zeroshot")
    commit = hub.head(DJGHOSH_REPO)
    assert main(["fetch-benchmark", "--repo", DJGHOSH_REPO, "--root", str(tmp_path / "set"), "--revision", commit,
                 "--manifest", str(tmp_path / "fetched.json")]) == 0
    manifest = json.loads((tmp_path / "fetched.json").read_text())
    assert (manifest["repo"], manifest["revision"], manifest["commit"]) == (DJGHOSH_REPO, commit, commit)


# -- DataComp's nlphuji sets, converted without their loading script ------------------------------

def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("repo, csv_name, zip_name", [
    ("nlphuji/flickr_1k_test_image_text_retrieval", "test_1k_flickr.csv", "images_flickr_1k_test.zip"),
    ("nlphuji/mscoco_2014_5k_test_image_text_retrieval", "test_5k_mscoco_2014.csv", "images_mscoco_2014_5k_test.zip"),
])
def test_an_nlphuji_retrieval_repo_becomes_a_set_clip_benchmarks_retrieval_reads(hub, tmp_path, repo, csv_name,
                                                                                 zip_name):
    from clip_benchmark.datasets.builder import build_dataset

    images = [(f"{1000 + i}.jpg", _jpeg(i), [f"caption {k} of image {i}" for k in range(5)]) for i in range(3)]
    images[1][2][0] = "a caption\nwith a line break"  # one caption still, not two
    fake_hub.publish_nlphuji_retrieval(hub, repo, csv_name, zip_name, images)
    root = tmp_path / "set"
    fetched = fetch_benchmark_set(repo, root)
    assert (fetched["dataset_type"], fetched["samples"], fetched["commit"]) == ("retrieval", 3, hub.head(repo))

    (spec,) = parse_benchmark_specs([{"name": "r", "dataset": "wds/r", "task": "zeroshot_retrieval", "root": str(root)}])
    check_dataset_present(spec)
    read = list(build_dataset(dataset_name="wds/r", root=str(root), transform=lambda image: image, split="test",
                              download=False, task="zeroshot_retrieval"))
    assert [captions for _, captions in read] == [
        [" ".join(caption.splitlines()) for caption in captions] for _, _, captions in images]
    with tarfile.open(root / "test" / "0.tar") as archive:  # the image bytes the zip held, not re-encoded
        stored = [archive.extractfile(m).read() for m in archive.getmembers() if m.name.endswith(".jpg")]
    assert stored == [data for _, data, _ in images]
    hub.taken()
    fetch_benchmark_set(repo, root)  # a rerun converts again from the files it has, downloading nothing
    assert not [path for method, path in hub.taken() if method == "GET" and "/resolve/" in path]


def test_winogavil_becomes_the_association_set_evaluation_reads_without_the_datasets_library(hub, tmp_path):
    import webdataset as wds

    from mobileclip_repro.evaluate.datacomp_tasks import read_winogavil_sample

    names = [f"word {k}" for k in range(12)]
    pictures = {name: _jpeg(50 + k) for k, name in enumerate(names)}
    instances = [{"cue": "Moon", "candidates": names[:5], "associations": names[1:3]},
                 {"cue": "ice", "candidates": names, "associations": [names[0], names[7], names[11]]}]
    fake_hub.publish_nlphuji_winogavil(hub, instances, pictures)
    root = tmp_path / "winogavil"
    fetched = fetch_benchmark_set("nlphuji/winogavil", root, revision=hub.head("nlphuji/winogavil"))
    assert (fetched["dataset_type"], fetched["samples"]) == ("association", 2)

    samples = list(wds.WebDataset(str(root / "test" / "0.tar"), shardshuffle=False))
    for sample, instance in zip(samples, instances, strict=True):
        cue, candidate_images, is_association = read_winogavil_sample(sample)
        assert cue == instance["cue"] and len(candidate_images) == len(instance["candidates"])
        assert is_association.tolist() == [name in instance["associations"] for name in instance["candidates"]]
        assert [sample[f"{k}.jpg"] for k in range(len(instance["candidates"]))] == [
            pictures[name] for name in instance["candidates"]]
