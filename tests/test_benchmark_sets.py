"""`fetch-benchmark`: a clip_benchmark webdataset mirror from a (fake, loopback) hub into a
local root that clip_benchmark then reads without any network."""
from __future__ import annotations

import json

import pytest
from huggingface_hub.errors import EntryNotFoundError

import fake_hub  # tests/fake_hub.py
from mobileclip_repro.benchmark_sets import fetch_benchmark_set
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
