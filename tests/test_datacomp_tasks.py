"""DataComp's own metrics for the five tasks clip_benchmark does not score: each on hand-made
predictions against a hand computation, then each task end to end through `evaluate` on a
small generated set in its mirror's format."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image

from mobileclip_repro import benchmark_sets
from mobileclip_repro.evaluate import datacomp_tasks
from mobileclip_repro.cli import main
from mobileclip_repro.evaluate.evaluate import parse_benchmark_specs

# -- the metrics on hand-made predictions --------------------------------------------------------


def _logits_ranking(rankings, num_classes):
    """Logits whose argsort (best first) is each row of ``rankings``."""
    logits = np.zeros((len(rankings), num_classes))
    for row, ranking in enumerate(rankings):
        for place, label in enumerate(ranking):
            logits[row, label] = num_classes - place
    return logits


def test_worst_group_accuracy_is_the_lowest_accuracy_of_a_group_that_has_samples():
    # top-1 right / wrong per image: group 0 has 2 of 3 right, group 1 1 of 2, group 3 2 of 2; no group 2
    logits = _logits_ranking([[0, 1, 2], [1, 0, 2], [2, 0, 1], [0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]], 3)
    targets = np.array([0, 1, 1, 0, 1, 1, 2])
    groups = np.array([0, 0, 0, 1, 1, 3, 3])
    worst, per_group = datacomp_tasks.worst_group_accuracy(logits, targets, groups)
    assert per_group == {0: (2 / 3, 3), 1: (0.5, 2), 3: (1.0, 2)}
    assert worst == 0.5


def test_top5_worst_group_counts_a_label_ranked_fifth_as_right_and_sixth_as_wrong():
    ranking = [0, 1, 2, 3, 4, 5]
    logits = _logits_ranking([ranking, ranking, ranking, ranking], 6)
    targets = np.array([4, 5, 0, 4])   # ranked 5th, 6th, 1st, 5th
    groups = np.array([7, 7, 8, 8])
    worst, per_group = datacomp_tasks.worst_group_accuracy(logits, targets, groups, k=5)
    assert per_group == {7: (0.5, 2), 8: (1.0, 2)} and worst == 0.5
    metrics = datacomp_tasks.prediction_metrics("acc_top5_wg", logits, targets, np.c_[groups, groups * 10, groups],
                                                ["income_ds", "income_meta", "region"], "income_ds")
    assert metrics["acc_top5_wg"] == 0.5
    assert metrics["acc_top5_income_ds:7"] == 0.5 and metrics["count_income_ds:8"] == 2.0


def test_worst_region_groups_by_the_named_metadata_column():
    logits = _logits_ranking([[0, 1], [0, 1], [1, 0], [1, 0]], 2)
    targets = np.array([0, 1, 1, 1])
    metadata = np.array([[0, 2016, 0], [1, 2016, 1], [1, 2017, 1], [5, 2017, 1]])  # region, year, y
    metrics = datacomp_tasks.prediction_metrics("acc_worst_region", logits, targets, metadata, ["region", "year", "y"],
                                                "region")
    # region 0: 1/1, region 1: 1/2, region 5 ("Other" in WILDS, a bare code here, so counted): 1/1
    assert metrics["acc_worst_region"] == 0.5 and metrics["acc_region:5"] == 1.0


def test_macro_f1_averages_over_the_classes_in_the_ground_truth_only():
    targets = np.array([0, 0, 1, 1])
    predictions = np.array([0, 2, 1, 1])
    # class 0: precision 1, recall 1/2 -> F1 2/3; class 1: F1 1; class 2 is only predicted: left out
    assert datacomp_tasks.macro_f1(predictions, targets) == pytest.approx((2 / 3 + 1) / 2, abs=1e-12)
    logits = np.eye(3)[predictions]
    assert datacomp_tasks.prediction_metrics("F1-macro_all", logits, targets)["F1-macro_all"] == pytest.approx(5 / 6)


def test_a_group_field_missing_from_the_metadata_is_refused_by_name():
    with pytest.raises(datacomp_tasks.MetadataError, match="'income_ds' is not among"):
        datacomp_tasks.prediction_metrics("acc_wg", np.eye(2), np.array([0, 1]), np.zeros((2, 2)),
                                          ["region", "country"], "income_ds")
    with pytest.raises(datacomp_tasks.MetadataError, match="names 3 columns"):
        datacomp_tasks.prediction_metrics("acc_wg", np.eye(2), np.array([0, 1]), np.zeros((2, 2)),
                                          ["region", "country", "x"], "region")


def test_winogavil_prompt_and_instance_jaccard():
    assert datacomp_tasks.clip_prompt("Apple") == "An apple"
    assert datacomp_tasks.clip_prompt(" Moon ") == "A moon"
    # two associations: the two most similar candidates are picked (0 and 2); only 0 is right
    similarities = [0.9, 0.1, 0.8, 0.3, 0.2]
    is_association = [True, False, False, True, False]
    assert datacomp_tasks.association_jaccard(similarities, is_association) == pytest.approx(1 / 3)
    assert datacomp_tasks.association_jaccard([0.1, 0.9, 0.8], [False, True, True]) == 1.0


def test_winogavil_main_metric_averages_the_instances_with_10_or_12_candidates():
    scores = datacomp_tasks.winogavil_scores([0.2, 0.4, 0.5, 1.0, 0.3], [5, 6, 10, 12, 10])
    assert scores["jaccard_score_10-12"] == pytest.approx((0.5 + 1.0 + 0.3) / 3)
    assert scores["jaccard_score_5-6"] == pytest.approx(0.3)
    assert scores["jaccard_score_10"] == pytest.approx(0.4) and scores["avg_jaccard_score"] == pytest.approx(0.48)
    assert np.isnan(datacomp_tasks.winogavil_scores([0.5], [5])["jaccard_score_10-12"])


# -- each task end to end, on generated sets in its mirror's format ------------------------------

SUITE_TASKS = ("iwildcam", "fmow", "dollar_street", "geode", "winogavil")
CLASSES = ["zebra", "lion", "giraffe", "elephant", "rhino", "hippo"]


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(36, 36, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    _image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(row) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(row, dtype=np.int64))
    return buffer.getvalue()


def _suite_specs(repo_root) -> dict:
    suite = yaml.safe_load((repo_root / "configs" / "eval" / "datacomp_suite.yaml").read_text())
    return {spec["name"]: spec for spec in suite["evaluation"]["benchmarks"] if spec["name"] in SUITE_TASKS}


def _write_metadata_set(root, num_fields, num_images=23, per_shard=5, seed=0):
    """A classification set as DataComp's WILDS/fairness mirrors lay it out: png, cls and an npy
    metadata row per image, over several shards. Returns {key: (label, metadata row)}."""
    rng = np.random.default_rng(seed)
    split = root / "test"
    split.mkdir(parents=True)
    truth = {}
    for shard, start in enumerate(range(0, num_images, per_shard)):
        with wds.TarWriter(str(split / f"{shard}.tar")) as writer:
            for index in range(start, min(start + per_shard, num_images)):
                label = int(rng.integers(len(CLASSES)))
                row = [int(rng.integers(3)), *rng.integers(0, 9, size=num_fields - 1).tolist()]
                key = f"{index:05d}"
                writer.write({"__key__": key, "png": _png(seed * 1000 + index), "cls": label, "npy": _npy(row)})
                truth[key] = (label, row)
    (split / "nshards.txt").write_text(f"{shard + 1}\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a camera trap photo of a {c}.\na photo of a {c}.\n")
    return truth


def _winogavil_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for index, count in enumerate([5, 6, 10, 12, 10, 12]):
        candidates = [f"word{index}_{k}" for k in range(count)]
        picked = rng.choice(count, size=int(rng.integers(2, 5)), replace=False)
        rows.append({"cue": ["Apple", "moon", "Orbit", "river", "Ice", "tower"][index], "candidates": candidates,
                     "associations": [candidates[k] for k in sorted(picked)],
                     "candidate_images": [_image(seed * 100 + index * 20 + k) for k in range(count)]})
    return rows


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory, repo_root):
    """The five tasks' suite entries, pointed at generated stand-in sets, evaluated in one job."""
    root = tmp_path_factory.mktemp("datacomp_tasks")
    specs = _suite_specs(repo_root)
    truths = {}
    for position, name in enumerate(SUITE_TASKS):
        spec = specs[name]
        spec["root"] = str(root / name)
        if name == "winogavil":
            assert benchmark_sets.write_winogavil_set(_winogavil_rows(), root / name, per_shard=4) == 6
        else:
            truths[name] = _write_metadata_set(root / name, len(spec["metadata_fields"]), seed=position)
    (root / "benchmarks.json").write_text(json.dumps(list(specs.values())))
    from mobileclip_repro.models import create_model_and_transforms

    torch.manual_seed(3)
    model, _, _ = create_model_and_transforms("toy-student")
    checkpoint = root / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "toy_dr", "model_name": "toy-student", "state_dict": model.state_dict(),
                "optimizer": {}, "step": 8, "seen_samples": 1024, "run": {"model": "toy-student", "dr": True}},
               checkpoint)
    # 3 loader workers over 5 shards: the metadata pass must come out in the images' order
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--benchmarks-json", str(root / "benchmarks.json"),
                 "--out-dir", str(root / "records"), "--batch-size", "4", "--num-workers", "3",
                 "--device", "cpu"]) == 0
    records = {name: json.loads((root / "records" / f"{name}.json").read_text()) for name in SUITE_TASKS}
    return {"root": root, "checkpoint": checkpoint, "specs": specs, "truths": truths, "records": records}


def _reference_features(checkpoint):
    """The checkpoint's image and text encoders, outside clip_benchmark, for hand computations."""
    from mobileclip_repro.models import create_model_and_transforms, get_tokenizer

    model, _, transform = create_model_and_transforms("toy-student", pretrained=str(checkpoint))
    model.eval()
    tokenizer = get_tokenizer("toy-student")

    @torch.no_grad()
    def images(pil_images):
        return torch.nn.functional.normalize(model.encode_image(torch.stack([transform(i) for i in pil_images])), dim=-1)

    @torch.no_grad()
    def texts(strings):
        return torch.nn.functional.normalize(model.encode_text(tokenizer(strings)), dim=-1)

    return images, texts


def _hand_predictions(suite_run, name):
    """Top-5 predictions per image key, by the zero-shot classifier computed here."""
    images, texts = _reference_features(suite_run["checkpoint"])
    templates = ["a camera trap photo of a {c}.", "a photo of a {c}."]
    weights = torch.stack([torch.nn.functional.normalize(texts([t.format(c=c) for t in templates]).mean(0), dim=-1)
                           for c in CLASSES])
    keys = sorted(suite_run["truths"][name])
    seeds = {key: SUITE_TASKS.index(name) * 1000 + int(key) for key in keys}
    logits = images([_image(seeds[key]) for key in keys]) @ weights.T
    return {key: logits[row].argsort(descending=True)[:5].tolist() for row, key in enumerate(keys)}


@pytest.mark.parametrize("name", ["fmow", "dollar_street", "geode"])
def test_a_worst_group_task_scores_its_worst_metadata_group_as_computed_by_hand(suite_run, name):
    spec, record = suite_run["specs"][name], suite_run["records"][name]
    truth = suite_run["truths"][name]
    predictions = _hand_predictions(suite_run, name)
    k = datacomp_tasks.WORST_GROUP_METRICS[spec["main_metric"]]
    column = spec["metadata_fields"].index(spec["group_by"])
    by_group: dict[int, list[bool]] = {}
    for key, (label, row) in truth.items():
        by_group.setdefault(row[column], []).append(label in predictions[key][:k])
    expected = {group: sum(hits) / len(hits) for group, hits in by_group.items()}
    assert record["main_metric_name"] == spec["main_metric"]
    assert record["main_metric"] == pytest.approx(min(expected.values()), abs=1e-9)
    prefix = "acc" if k == 1 else f"acc_top{k}"
    for group, accuracy in expected.items():
        assert record["metrics"][f"{prefix}_{spec['group_by']}:{group}"] == pytest.approx(accuracy, abs=1e-9)
        assert record["metrics"][f"count_{spec['group_by']}:{group}"] == len(by_group[group])
    assert record["num_samples"] == len(truth) and record["tags"] == spec["tags"]


def test_iwildcam_scores_the_macro_f1_of_its_top1_predictions(suite_run):
    from sklearn.metrics import f1_score

    truth = suite_run["truths"]["iwildcam"]
    predictions = _hand_predictions(suite_run, "iwildcam")
    keys = sorted(truth)
    labels = [truth[key][0] for key in keys]
    expected = f1_score(labels, [predictions[key][0] for key in keys], average="macro", labels=sorted(set(labels)))
    record = suite_run["records"]["iwildcam"]
    assert record["main_metric_name"] == "F1-macro_all"
    assert record["main_metric"] == pytest.approx(expected, abs=1e-9)
    assert record["metrics"]["acc1"] == pytest.approx(
        np.mean([truth[key][0] == predictions[key][0] for key in keys]), abs=1e-9)


def test_winogavil_scores_the_jaccard_of_the_cue_picked_candidates_as_computed_by_hand(suite_run):
    images, texts = _reference_features(suite_run["checkpoint"])
    scores = {}
    for row in _winogavil_rows():
        similarities = (texts([datacomp_tasks.clip_prompt(row["cue"])]) @ images(row["candidate_images"]).T)[0]
        picked = {row["candidates"][k] for k in similarities.argsort(descending=True)[:len(row["associations"])]}
        truth = set(row["associations"])
        scores.setdefault(len(row["candidates"]), []).append(len(picked & truth) / len(picked | truth))
    record = suite_run["records"]["winogavil"]
    assert record["task"] == "visual_association" and record["num_samples"] == 6
    assert record["main_metric_name"] == "jaccard_score_10-12"
    assert record["main_metric"] == pytest.approx(np.mean(scores[10] + scores[12]), abs=1e-6)
    assert record["metrics"]["jaccard_score_5-6"] == pytest.approx(np.mean(scores[5] + scores[6]), abs=1e-6)


def test_metadata_out_of_step_with_the_images_is_an_error_not_a_silent_regrouping(suite_run):
    """The metadata pass reads every image's label again; labels that differ from the evaluated
    ones (images and metadata in different orders) stop the benchmark instead of regrouping it."""
    labels, metadata = datacomp_tasks.read_wds_metadata(suite_run["specs"]["geode"]["root"], "test", batch_size=4,
                                                        num_workers=3)
    truth = suite_run["truths"]["geode"]
    assert len(labels) == len(truth) and metadata.shape == (len(truth), 2)
    assert sorted(zip(labels.tolist(), metadata.tolist())) == sorted((label, row) for label, row in truth.values())
    with pytest.raises(datacomp_tasks.MetadataError, match="out of step"):
        datacomp_tasks.check_metadata_matches(labels, np.roll(labels, 1) + 1, "benchmark 'geode'")


def test_a_failing_task_is_recorded_and_the_others_still_evaluate(suite_run, tmp_path):
    """skip_failed_benchmarks: one broken set leaves a failure file naming the error; the job goes on."""
    specs = [dict(suite_run["specs"]["geode"]), dict(suite_run["specs"]["winogavil"], root=str(tmp_path / "absent"))]
    (tmp_path / "b.json").write_text(json.dumps(specs))
    out_dir = tmp_path / "records"
    arguments = ["evaluate", "--checkpoint", str(suite_run["checkpoint"]), "--benchmarks-json", str(tmp_path / "b.json"),
                 "--out-dir", str(out_dir), "--device", "cpu", "--index", str(tmp_path / "index.json")]
    with pytest.raises(FileNotFoundError, match="absent"):
        main(arguments)  # by default a failure fails the job, before anything is evaluated
    assert not (out_dir / "geode.json").exists()
    assert main([*arguments, "--skip-failed-benchmarks"]) == 0
    assert json.loads((out_dir / "geode.json").read_text())["main_metric"] == suite_run["records"]["geode"]["main_metric"]
    failure = json.loads((out_dir / "winogavil.failed.json").read_text())
    assert failure["benchmark"] == "winogavil" and "does not exist" in failure["error"] and failure["epoch"] == 1
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["records"] == [str(out_dir / "geode.json")] and index["failed"] == [str(out_dir / "winogavil.failed.json")]


def test_the_suite_lists_all_38_datacomp_tasks_with_their_main_metrics(repo_root):
    suite = yaml.safe_load((repo_root / "configs" / "eval" / "datacomp_suite.yaml").read_text())
    specs = parse_benchmark_specs(suite["evaluation"]["benchmarks"])
    assert len(specs) == 38 and len({spec.name for spec in specs}) == 38
    by_name = {spec.name: spec for spec in specs}
    assert {name: by_name[name].main_metric for name in SUITE_TASKS} == {
        "iwildcam": "F1-macro_all", "fmow": "acc_worst_region", "dollar_street": "acc_top5_wg", "geode": "acc_wg",
        "winogavil": "jaccard_score_10-12"}
    groups = {tag: sorted(spec.name for spec in specs if tag in spec.tags)
              for tag in ("imagenet", "imagenet_dist_shifts", "vtab", "retrieval")}
    assert groups["imagenet"] == ["imagenet1k"]
    assert len(groups["imagenet_dist_shifts"]) == 6 and len(groups["vtab"]) == 13
    assert groups["retrieval"] == ["flickr30k", "mscoco", "winogavil"]
    assert suite["evaluation"]["skip_failed_benchmarks"] is True


# DataComp's 38 averaged tasks -> (the hub repo its evaluation reads, main metric), from
# mlfoundations/datacomp: the keys and main metrics (default acc1) of tasklist.yml; the repos of
# download_evalsets.py and eval_utils/wds_eval.py (djghosh/wds_<key, "/" -> "-", "fairness/"
# dropped>_test) and of eval_utils/retr_eval.py, wino_eval.py (nlphuji/<key without its prefix>);
# every task's split is "test". FairFace and UTKFace have no main metric and are not averaged.
DATACOMP_TASKS = {
    "vtab/caltech101": ("djghosh/wds_vtab-caltech101_test", "mean_per_class_recall"),
    "cifar10": ("djghosh/wds_cifar10_test", "acc1"),
    "vtab/cifar100": ("djghosh/wds_vtab-cifar100_test", "acc1"),
    "vtab/clevr_count_all": ("djghosh/wds_vtab-clevr_count_all_test", "acc1"),
    "vtab/clevr_closest_object_distance": ("djghosh/wds_vtab-clevr_closest_object_distance_test", "acc1"),
    "country211": ("djghosh/wds_country211_test", "acc1"),
    "vtab/dtd": ("djghosh/wds_vtab-dtd_test", "acc1"),
    "vtab/eurosat": ("djghosh/wds_vtab-eurosat_test", "acc1"),
    "fgvc_aircraft": ("djghosh/wds_fgvc_aircraft_test", "mean_per_class_recall"),
    "food101": ("djghosh/wds_food101_test", "acc1"),
    "gtsrb": ("djghosh/wds_gtsrb_test", "acc1"),
    "imagenet1k": ("djghosh/wds_imagenet1k_test", "acc1"),
    "imagenet_sketch": ("djghosh/wds_imagenet_sketch_test", "acc1"),
    "imagenetv2": ("djghosh/wds_imagenetv2_test", "acc1"),
    "imagenet-a": ("djghosh/wds_imagenet-a_test", "acc1"),
    "imagenet-o": ("djghosh/wds_imagenet-o_test", "acc1"),
    "imagenet-r": ("djghosh/wds_imagenet-r_test", "acc1"),
    "vtab/kitti_closest_vehicle_distance": ("djghosh/wds_vtab-kitti_closest_vehicle_distance_test", "acc1"),
    "mnist": ("djghosh/wds_mnist_test", "acc1"),
    "objectnet": ("djghosh/wds_objectnet_test", "acc1"),
    "vtab/flowers": ("djghosh/wds_vtab-flowers_test", "mean_per_class_recall"),
    "vtab/pets": ("djghosh/wds_vtab-pets_test", "mean_per_class_recall"),
    "voc2007": ("djghosh/wds_voc2007_test", "acc1"),
    "vtab/pcam": ("djghosh/wds_vtab-pcam_test", "acc1"),
    "renderedsst2": ("djghosh/wds_renderedsst2_test", "acc1"),
    "vtab/resisc45": ("djghosh/wds_vtab-resisc45_test", "acc1"),
    "cars": ("djghosh/wds_cars_test", "acc1"),
    "stl10": ("djghosh/wds_stl10_test", "acc1"),
    "sun397": ("djghosh/wds_sun397_test", "acc1"),
    "vtab/svhn": ("djghosh/wds_vtab-svhn_test", "acc1"),
    "retrieval/flickr_1k_test_image_text_retrieval": ("nlphuji/flickr_1k_test_image_text_retrieval", "mean_recall@1"),
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": ("nlphuji/mscoco_2014_5k_test_image_text_retrieval",
                                                           "mean_recall@1"),
    "misc/winogavil": ("nlphuji/winogavil", "jaccard_score_10-12"),
    "wilds/iwildcam": ("djghosh/wds_wilds-iwildcam_test", "F1-macro_all"),
    "wilds/camelyon17": ("djghosh/wds_wilds-camelyon17_test", "acc1"),
    "wilds/fmow": ("djghosh/wds_wilds-fmow_test", "acc_worst_region"),
    "fairness/dollar_street": ("djghosh/wds_dollar_street_test", "acc_top5_wg"),
    "fairness/geode": ("djghosh/wds_geode_test", "acc_wg"),
}


def test_the_suite_reads_exactly_the_sets_datacomp_reads(repo_root):
    suite = yaml.safe_load((repo_root / "configs" / "eval" / "datacomp_suite.yaml").read_text())
    specs = parse_benchmark_specs(suite["evaluation"]["benchmarks"])
    assert sorted((spec.hub_repo, spec.main_metric) for spec in specs) == sorted(DATACOMP_TASKS.values())
    assert {spec.split for spec in specs} == {"test"}
    # each pinned, so a push to a mirror cannot change the suite's numbers unnoticed (datacomp#18: a
    # different Flickr test set alone moved DataComp's published averages)
    assert all(spec.revision and len(spec.revision) == 40 for spec in specs)
    assert suite["evaluation"]["precision"] == "fp32"


@pytest.mark.parametrize("spec, message", [
    ({"name": "g", "dataset": "wds/geode", "task": "zeroshot_classification", "main_metric": "acc_wg",
      "root": "/x"}, "metadata_fields"),
    ({"name": "g", "dataset": "wds/geode", "task": "zeroshot_classification", "main_metric": "acc_wg",
      "root": "/x", "metadata_fields": ["region"], "group_by": "income"}, "'income' is not one of"),
    ({"name": "w", "dataset": "wds/winogavil", "task": "visual_association", "main_metric": "acc1",
      "root": "/x"}, "main_metric"),
])
def test_datacomp_metric_specs_that_cannot_be_computed_are_refused(spec, message):
    from mobileclip_repro.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_benchmark_specs([spec])
