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
from mobileclip_repro.evaluate import check_dataset_present, count_wds_images, parse_benchmark_specs
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
    assert not [path for method, path in hub.taken() if method == "GET"]


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
