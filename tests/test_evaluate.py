"""`evaluate`: one checkpoint x clip_benchmark webdataset sets -> one JSON record per benchmark."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from mobileclip_repro.benchmark_sets import BenchmarkSetError
from mobileclip_repro.cli import main
from mobileclip_repro.evaluate.evaluate import check_dataset_present, parse_benchmark_specs
from mobileclip_repro.models import create_model_and_transforms

CLASSES = ["red square", "green circle", "blue triangle"]
CLASSIFICATION_LABELS = [0, 1, 2, 0, 1, 2, 0]   # 7 images over 2 shards
RETRIEVAL_CAPTIONS = [["a red thing", "something red"], ["a green thing", "something green"],
                      ["a blue thing", "something blue"], ["a grey thing", "something grey"]]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shards(split_dir, samples, per_shard):
    split_dir.mkdir(parents=True)
    shards = [samples[start:start + per_shard] for start in range(0, len(samples), per_shard)]
    for index, shard in enumerate(shards):
        with wds.TarWriter(str(split_dir / f"{index}.tar")) as writer:
            for sample in shard:
                writer.write(sample)
    (split_dir / "nshards.txt").write_text(f"{len(shards)}\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A checkpoint in the trainer's format plus a classification and a retrieval set (clip_benchmark layout)."""
    root = tmp_path_factory.mktemp("eval")
    classification = root / "toy_zeroshot"
    _write_shards(classification / "test",
                  [{"__key__": f"s{i:04d}", "png": _png(i), "cls": label} for i, label in enumerate(CLASSIFICATION_LABELS)],
                  per_shard=4)
    (classification / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (classification / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")

    retrieval = root / "toy_retrieval"
    _write_shards(retrieval / "test",
                  [{"__key__": f"r{i:04d}", "png": _png(100 + i), "txt": "\n".join(captions)}
                   for i, captions in enumerate(RETRIEVAL_CAPTIONS)],
                  per_shard=4)
    (retrieval / "dataset_type.txt").write_text("retrieval\n")

    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms("toy-student")
    run_spec = {"model": "toy-student", "data": "dr", "dr": True, "global_batch_size": 128, "seen_samples": 24576}
    checkpoint = root / "epoch_2.pt"
    torch.save({"epoch": 2, "name": "toy_dr", "model_name": "toy-student", "state_dict": model.state_dict(),
                "optimizer": {}, "step": 128, "seen_samples": 16384, "run": run_spec}, checkpoint)

    benchmarks = [
        {"name": "toy_zeroshot", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification",
         "root": str(classification), "recall_k": [1, 5, 10]},
        {"name": "toy_retrieval", "dataset": "wds/toy_retrieval", "task": "zeroshot_retrieval",
         "root": str(retrieval), "recall_k": [1, 5, 10], "split": "test"},
    ]
    benchmarks_json = root / "benchmarks.json"
    benchmarks_json.write_text(json.dumps(benchmarks))
    return {"root": root, "checkpoint": checkpoint, "benchmarks_json": benchmarks_json,
            "classification": classification}


def _evaluate(world, out_dir, *extra):
    return main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--model", "toy-student",
                 "--benchmarks-json", str(world["benchmarks_json"]), "--out-dir", str(out_dir),
                 "--batch-size", "3", *extra])


@pytest.fixture(scope="module")
def records(world):
    out_dir = world["root"] / "records"
    # 3 workers for the 2-shard set: clip_benchmark fails unless workers are clamped to shards.
    assert _evaluate(world, out_dir, "--num-workers", "3") == 0
    return out_dir, {name: json.loads((out_dir / f"{name}.json").read_text()) for name in ("toy_zeroshot", "toy_retrieval")}


def test_records_carry_checkpoint_provenance(records, world):
    _, by_name = records
    for name, record in by_name.items():
        assert record["benchmark"] == name
        assert (record["run"], record["epoch"], record["seen_samples"], record["dr"]) == ("toy_dr", 2, 16384, True)
        assert record["model"] == "toy-student"
        assert record["checkpoint"] == str(world["checkpoint"].resolve())
        assert record["run_spec"]["global_batch_size"] == 128
        assert record["clip_benchmark_version"] == "1.6.2"
        assert record["eval_seconds"] >= 0
        assert record["schema"] == "mobileclip_repro/eval-record/1"


def test_classification_record(records):
    record = records[1]["toy_zeroshot"]
    assert record["task"] == "zeroshot_classification"
    assert record["num_samples"] == len(CLASSIFICATION_LABELS)
    assert record["num_classes"] == len(CLASSES)
    assert record["main_metric_name"] == "acc1"
    acc1 = record["metrics"]["acc1"]
    assert 0.0 <= acc1 <= 1.0 and record["main_metric"] == acc1
    # accuracy over 7 images is a multiple of 1/7
    assert acc1 * 7 == pytest.approx(round(acc1 * 7))
    # clip_benchmark's NaN acc5 (fewer than 5 classes) must become JSON null, not invalid JSON
    assert record["metrics"]["acc5"] is None
    assert 0.0 <= record["metrics"]["mean_per_class_recall"] <= 1.0


def test_retrieval_record_clamps_k_and_averages_recall_at_1(records):
    record = records[1]["toy_retrieval"]
    assert record["num_samples"] == 4 and record["num_texts"] == 8
    # K=5 and K=10 exceed the 4 images: clamped to 4
    assert record["recall_k"] == [1, 4]
    metrics = record["metrics"]
    assert set(metrics) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 4)}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    # every caption's image is among the top 4 of 4 images
    assert metrics["image_retrieval_recall@4"] == 1.0
    assert record["main_metric_name"] == "mean_recall@1"
    assert record["main_metric"] == pytest.approx(
        (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2)


def test_rerun_skips_existing_records_unless_forced(records, world, caplog):
    out_dir, by_name = records
    path = out_dir / "toy_zeroshot.json"
    tampered = dict(by_name["toy_zeroshot"], main_metric=-1.0)
    path.write_text(json.dumps(tampered))
    with caplog.at_level(logging.INFO, logger="mobileclip_repro.evaluate.evaluate"):
        assert _evaluate(world, out_dir) == 0
    assert json.loads(path.read_text())["main_metric"] == -1.0
    assert "exists, skipped" in caplog.text

    assert _evaluate(world, out_dir, "--force") == 0
    redone = json.loads(path.read_text())
    assert redone["metrics"] == by_name["toy_zeroshot"]["metrics"]   # deterministic, and rewritten
    assert redone["main_metric"] == by_name["toy_zeroshot"]["main_metric"]
    assert not list(out_dir.glob("*.partial"))


def test_model_name_must_match_checkpoint(world, tmp_path):
    with pytest.raises(ValueError, match="trained as 'toy-student'"):
        main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--model", "toy-teacher",
              "--benchmarks-json", str(world["benchmarks_json"]), "--out-dir", str(tmp_path)])


def test_task_must_agree_with_dataset_type(world, tmp_path):
    spec = [{"name": "wrong", "dataset": "wds/toy_retrieval", "task": "zeroshot_classification",
             "root": str(world["root"] / "toy_retrieval")}]
    (tmp_path / "b.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="dataset_type.txt says 'retrieval'"):
        main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
              "--out-dir", str(tmp_path / "out")])


def test_missing_dataset_root_fails_before_any_download(world, tmp_path):
    spec = [{"name": "in1k", "dataset": "imagenet1k", "task": "zeroshot_classification", "root": str(tmp_path / "nowhere")}]
    (tmp_path / "b.json").write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
              "--out-dir", str(tmp_path / "out")])


def test_a_benchmark_shard_cut_at_a_member_boundary_is_refused_not_scored(world, tmp_path):
    import shutil
    import tarfile

    root = tmp_path / "toy_zeroshot"
    shutil.copytree(world["classification"], root)
    shard = root / "test" / "0.tar"
    with tarfile.open(shard) as archive:
        third_sample = archive.getmembers()[2 * 2].offset  # png + cls a sample
    shard.write_bytes(shard.read_bytes()[:third_sample])
    spec = [{"name": "toy_zeroshot", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification", "root": str(root)}]
    (tmp_path / "b.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"shard .*0\.tar: truncated"):
        main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
              "--out-dir", str(tmp_path / "out")])
    assert not list((tmp_path / "out").glob("*.json")), "no record from part of a set"


@pytest.mark.parametrize("classnames, message", [(CLASSES[:2], "lists 2 class names, but .* has label 2"),
                                                 ([], "lists no class names")])
def test_a_set_whose_class_names_miss_labels_fails_before_any_record(tmp_path, classnames, message):
    """A set made or fetched after the DAG started is only checked here: a shorter classnames.txt
    would give a record with a meaningless number, an empty one a traceback inside clip_benchmark."""
    root = tmp_path / "short"
    _write_shards(root / "test", [{"__key__": f"s{i}", "png": _png(i), "cls": label}
                                  for i, label in enumerate(CLASSIFICATION_LABELS)], per_shard=4)
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classnames))
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    spec = [{"name": "short", "dataset": "wds/short", "task": "zeroshot_classification", "root": str(root)}]
    (tmp_path / "b.json").write_text(json.dumps(spec))
    with pytest.raises(BenchmarkSetError, match=rf"benchmark 'short': {root / 'classnames.txt'} {message}"):
        main(["evaluate", "--checkpoint", str(tmp_path / "never_read.pt"), "--benchmarks-json",
              str(tmp_path / "b.json"), "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# The CLI's benchmark list is checked by the config schema's benchmark definition: the same
# rules, and errors naming the same keys, as a benchmark in an experiment config.
@pytest.mark.parametrize("spec, message", [
    ({"name": "x", "dataset": "wds/x", "root": "r"}, r"'benchmarks\.0'.*'task' is a required property"),
    ({"name": "x", "dataset": "imagenet1k", "root": "r"}, r"'benchmarks\.0'.*'task' is a required property"),
    ({"name": "x", "dataset": "cifar10", "root": "r", "task": "zeroshot_classification"}, r"'benchmarks\.0\.dataset'"),
    ({"name": "x", "dataset": "flickr30k", "root": "r", "task": "zeroshot_classification"},
     r"'benchmarks\.0\.task'.*'zeroshot_retrieval' was expected"),
    ({"name": "x/y", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval"}, r"'benchmarks\.0\.name'"),
    ({"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval", "recall_k": [0]},
     r"'benchmarks\.0\.recall_k\.0'.*minimum of 1"),
    ({"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval", "recal_k": [1]}, r"'recal_k' was unexpected"),
    ({"name": "x", "dataset": "wds/x", "task": "zeroshot_retrieval"}, "'root' is required"),
    ({"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval", "main_metric": "acc1"},
     r"'benchmarks\.0\.main_metric'.*'mean_recall@1' was expected"),
    ({"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_classification", "main_metric": "acc5"},
     r"'benchmarks\.0\.main_metric'"),
    ({"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval", "hub_repo": "wds_x"},
     r"'benchmarks\.0\.hub_repo'"),
    ({"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval", "tags": "vtab"},
     r"'benchmarks\.0\.tags'.*not of type 'array'"),
])
def test_bad_benchmark_specs_are_rejected_naming_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_benchmark_specs([spec])


def test_duplicate_benchmark_names_are_rejected():
    spec = {"name": "x", "dataset": "wds/x", "root": "r", "task": "zeroshot_retrieval"}
    with pytest.raises(ValueError, match="names must be unique"):
        parse_benchmark_specs([spec, dict(spec)])


def test_benchmark_defaults_come_from_the_schema():
    (spec,) = parse_benchmark_specs([{"name": "flickr", "dataset": "flickr30k", "task": "zeroshot_retrieval",
                                      "root": "/data/flickr30k", "annotation_file": "/data/karpathy.txt"}])
    assert spec.split == "test" and spec.recall_k == (1, 5, 10) and spec.main_metric == "mean_recall@1"
    assert spec.annotation_file == "/data/karpathy.txt"  # a key the CLI used to take and the schema refused


def test_a_listed_main_metric_is_the_records_number(world, tmp_path):
    """DataComp scores Caltech-101, Aircraft, Flowers and Pets by mean per-class recall."""
    spec = {"name": "pets_like", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification",
            "root": str(world["classification"]), "main_metric": "mean_per_class_recall", "tags": ["vtab"]}
    (tmp_path / "b.json").write_text(json.dumps([spec]))
    main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
          "--out-dir", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "pets_like.json").read_text())
    assert record["main_metric_name"] == "mean_per_class_recall" and record["tags"] == ["vtab"]
    assert record["main_metric"] == record["metrics"]["mean_per_class_recall"]


def test_the_datacomp_suite_overlay_parses(repo_root):
    import yaml

    suite = yaml.safe_load((repo_root / "configs" / "eval" / "datacomp_suite.yaml").read_text())
    specs = parse_benchmark_specs(suite["evaluation"]["benchmarks"])
    assert len(specs) == 38
    assert all(spec.hub_repo.startswith(("clip-benchmark/wds_", "djghosh/wds_", "nlphuji/")) for spec in specs)
    by_name = {spec.name: spec for spec in specs}
    assert by_name["imagenet1k"].main_metric == "acc1" and by_name["caltech101"].main_metric == "mean_per_class_recall"
    assert by_name["mscoco"].task == "zeroshot_retrieval" and "retrieval" in by_name["mscoco"].tags
    assert sum("imagenet_dist_shifts" in spec.tags for spec in specs) == 6


# -- the same numbers from clip_benchmark's own CLI ----------------------------------------------

def test_records_say_how_they_were_computed(records):
    """Autocast (`amp`) on CUDA only, fp32 elsewhere; the record names both."""
    for record in records[1].values():
        assert record["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert record["precision"] == ("amp" if record["device"] == "cuda" else "fp32")


@pytest.mark.parametrize("precision, device, autocast", [
    ("amp", "cuda", True), ("fp32", "cuda", False),  # fp32: no autocast even on a GPU, as DataComp classifies
    ("amp", "cpu", False), ("fp32", "cpu", False),   # never on CPU, where it would change the toy's numbers
])
def test_autocast_runs_only_for_amp_on_cuda(precision, device, autocast):
    from mobileclip_repro.evaluate.evaluate import uses_autocast

    assert uses_autocast(precision, device) is autocast


def test_records_name_the_precision_setting_and_the_hub_commit_of_a_fetched_set(world, tmp_path):
    """evaluation.precision reaches the record beside what ran; a set fetched from the hub (its
    root holds the fetch's hub_source.json) is named by repo, requested revision and resolved commit."""
    import shutil

    from mobileclip_repro.benchmark_sets import SOURCE_FILE

    fetched = tmp_path / "fetched_retrieval"
    shutil.copytree(world["root"] / "toy_retrieval", fetched)
    source = {"repo": "nlphuji/flickr_1k_test_image_text_retrieval", "revision": None, "commit": "c" * 40}
    (fetched / SOURCE_FILE).write_text(json.dumps(source))
    specs = [{"name": "fetched", "dataset": "wds/toy_retrieval", "task": "zeroshot_retrieval", "root": str(fetched)},
             {"name": "local", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification",
              "root": str(world["classification"])}]
    (tmp_path / "b.json").write_text(json.dumps(specs))
    assert main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
                 "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--precision", "fp32", "--batch-size", "4"]) == 0
    fetched_record, local_record = (json.loads((tmp_path / "out" / f"{name}.json").read_text())
                                    for name in ("fetched", "local"))
    assert fetched_record["hub_source"] == source and local_record["hub_source"] is None
    for record in (fetched_record, local_record):
        assert (record["precision_setting"], record["precision"]) == ("fp32", "fp32")


def test_the_precision_default_is_amp_and_the_datacomp_suite_sets_fp32(repo_root):
    """amp (autocast on CUDA, fp32 on CPU) is what evaluation always did, so the toy's records keep
    their numbers; the DataComp suite classifies in fp32 as DataComp does."""
    import yaml

    from mobileclip_repro.config import load_schema

    assert load_schema()["properties"]["evaluation"]["properties"]["precision"]["default"] == "amp"
    suite = yaml.safe_load((repo_root / "configs" / "eval" / "datacomp_suite.yaml").read_text())
    assert suite["evaluation"]["precision"] == "fp32"


@pytest.fixture(scope="module")
def exported(world):
    out_dir = world["root"] / "open_clip_export"
    assert main(["export-open-clip", str(world["checkpoint"]), str(out_dir)]) == 0
    return out_dir


def test_export_loads_in_plain_open_clip_as_the_checkpoint(world, exported):
    """`local-dir:` needs no registered config: the folder carries it, the weights and the preprocessing."""
    import open_clip

    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{exported}")
    _, _, ours = create_model_and_transforms("toy-student", pretrained=str(world["checkpoint"]))
    trained = torch.load(world["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    exported_state = model.state_dict()
    assert exported_state.keys() == trained.keys()
    assert all(torch.equal(exported_state[name], trained[name]) for name in trained)
    image = Image.open(io.BytesIO(_png(7)))
    assert torch.equal(transform(image), ours(image))
    assert type(open_clip.get_tokenizer(f"local-dir:{exported}")) is open_clip.SimpleTokenizer
    provenance = json.loads((exported / "open_clip_config.json").read_text())["mobileclip_repro"]
    assert (provenance["run"], provenance["epoch"], provenance["model"]) == ("toy_dr", 2, "toy-student")


def test_clip_benchmark_cli_gives_the_records_number(world, exported, tmp_path):
    """The README's recipe: `clip_benchmark eval --model local-dir:<export> --no_amp` on the set a CPU
    record was computed on, with the same batch size and loader workers, reports exactly its main metric."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    spec = {"name": "toy_zeroshot", "dataset": "wds/toy_zeroshot", "task": "zeroshot_classification",
            "root": str(world["classification"])}
    (tmp_path / "b.json").write_text(json.dumps([spec]))
    assert main(["evaluate", "--checkpoint", str(world["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
                 "--out-dir", str(tmp_path / "ours"), "--device", "cpu", "--batch-size", "3"]) == 0
    record = json.loads((tmp_path / "ours" / "toy_zeroshot.json").read_text())
    assert (record["device"], record["precision"]) == ("cpu", "fp32")

    output = tmp_path / "clip_benchmark.json"
    command = [str(Path(sys.executable).with_name("clip_benchmark")), "eval",
               "--model", f"local-dir:{exported}", "--dataset", "wds/toy_zeroshot",
               "--dataset_root", str(world["classification"]), "--task", "zeroshot_classification",
               "--no_amp", "--batch_size", "3", "--num_workers", "0", "--output", str(output), "--quiet"]
    # The CLI takes CUDA whenever it sees one; hide it, as the record was computed on the CPU.
    subprocess.run(command, check=True, cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    theirs = json.loads(output.read_text())
    assert theirs["task"] == record["task"] and theirs["dataset"] == record["dataset"]
    assert theirs["metrics"]["acc1"] == record["main_metric"] == record["metrics"]["acc1"]
    assert theirs["metrics"]["mean_per_class_recall"] == record["metrics"]["mean_per_class_recall"]


def test_a_set_that_passed_is_checked_again_once_its_files_change(world, tmp_path):
    import shutil
    import tarfile

    root = tmp_path / "toy_zeroshot"
    shutil.copytree(world["classification"], root)
    [spec] = parse_benchmark_specs([{"name": "toy_zeroshot", "dataset": "wds/toy_zeroshot",
                                     "task": "zeroshot_classification", "root": str(root)}])
    check_dataset_present(spec)
    check_dataset_present(spec)  # unchanged: passes from memory
    shard = root / "test" / "0.tar"
    with tarfile.open(shard) as archive:
        cut = archive.getmembers()[2].offset
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(ValueError, match="truncated"):
        check_dataset_present(spec)


def _second_checkpoint(world):
    path = world["root"] / "epoch_3.pt"
    if not path.exists():
        torch.manual_seed(1)
        model, _, _ = create_model_and_transforms("toy-student")
        checkpoint = torch.load(world["checkpoint"], weights_only=False)
        torch.save({**checkpoint, "epoch": 3, "state_dict": model.state_dict()}, path)
    return path


def test_one_job_decodes_each_set_once_for_all_its_checkpoints(world, tmp_path, monkeypatch):
    """An evaluate job runs its checkpoints in turn; the second reuses the first's decoded batches
    and gets the records it would get alone."""
    import clip_benchmark.datasets.builder as builder

    second = _second_checkpoint(world)
    alone = {}
    for checkpoint, name in ((world["checkpoint"], "a"), (second, "b")):
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--model", "toy-student", "--batch-size", "3",
                     "--benchmarks-json", str(world["benchmarks_json"]), "--out-dir", str(tmp_path / "alone" / name)]) == 0
        alone[name] = {p.name: json.loads(p.read_text())["metrics"] for p in (tmp_path / "alone" / name).glob("*.json")}

    built = []
    real_build = builder.build_dataset
    monkeypatch.setattr(builder, "build_dataset", lambda **kwargs: built.append(kwargs["root"]) or real_build(**kwargs))
    assert main(["evaluate", "--checkpoint", str(world["checkpoint"]), str(second), "--model", "toy-student",
                 "--batch-size", "3", "--benchmarks-json", str(world["benchmarks_json"]),
                 "--out-dir", str(tmp_path / "job" / "a"), str(tmp_path / "job" / "b")]) == 0

    assert sorted(built) == sorted({str(world["classification"]), str(world["root"] / "toy_retrieval")})
    for name in ("a", "b"):
        together = {p.name: json.loads(p.read_text())["metrics"] for p in (tmp_path / "job" / name).glob("*.json")}
        assert together == alone[name] and len(together) == 2
    assert alone["a"] != alone["b"], "two different models: a reused batch is not a reused result"


class _ListLoader:
    def __init__(self, batches):
        self.batches, self.dataset, self.passes = batches, "the loader's dataset", 0

    def __iter__(self):
        self.passes += 1
        yield from self.batches


@pytest.mark.parametrize("max_bytes, passes", [(2 * 2 * 6 * 4, 1), (2 * 2 * 6 * 4 - 1, 3)],
                         ids=["fits: read once", "one byte over the budget: streamed every time"])
def test_decoded_batches_are_kept_only_within_the_jobs_budget(max_bytes, passes):
    from mobileclip_repro.evaluate.evaluate import DecodedSets

    batches = [(torch.zeros(2, 6), [0, 1]), (torch.ones(2, 6), [1, 0])]  # 2 x 48 bytes of float32 images
    decoded = DecodedSets(max_bytes=2 * max_bytes)
    loader = _ListLoader(batches)
    other = decoded.loader("other set", lambda: (_ListLoader([(torch.zeros(2, 6), [0, 0])] * 2), "set"), len)
    list(other)  # takes the same share of the budget first
    reused = decoded.loader("key", lambda: (loader, "the benchmark set"), lambda dataset: 4)
    assert decoded.loader("key", None, None) is reused, "one entry per key: built once"
    for _ in range(3):
        assert [(images.tolist(), targets) for images, targets in reused] == [
            (images.tolist(), targets) for images, targets in batches]
    assert loader.passes == passes
    assert (reused.benchmark_set, reused.num_images, reused.dataset) == ("the benchmark set", 4, "the loader's dataset")
