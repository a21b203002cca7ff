"""Evaluate checkpoints (and the reinforcement's teachers) with clip_benchmark; one JSON record per benchmark.

clip_benchmark 1.6.2 computes the metrics (``zeroshot_classification.evaluate``,
``zeroshot_retrieval.evaluate``); this module picks the datasets, steers around the
library's known traps (docs/reference.md §7) and writes DataComp-style records: the metrics,
a ``main_metric`` (``acc1``; ``mean_recall@1`` for retrieval; DataComp's own metric for the
five tasks clip_benchmark does not score, ``datacomp_tasks.py``) and where the number came
from (run, epoch, seen samples, DR or not; the hub repo, revision and commit of a fetched set)
and how (device; ``precision``: ``amp`` where clip_benchmark's autocast ran, else ``fp32``, and
``precision_setting``, the configured ``evaluation.precision``: ``amp`` autocasts on CUDA only,
``fp32`` never, as DataComp classifies). Tables and plots are derived from these records only
(``tables.py``, ``plots.py``).

Traps handled here rather than left to the user:
- clip_benchmark downloads any dataset whose root is missing (wget/kaggle); there is no
  network on the clusters, so a missing root is an error before clip_benchmark runs.
- a webdataset set read by more loader workers than it has shards fails; workers are
  clamped to the shard count.
- a classification set whose ``classnames.txt`` is shorter than its labels still gives a
  number (an empty one a traceback), and a blank line in it is a class named "" (shifting
  the names after it); all are an error before the first record. Names no label of the
  split uses are the set's label space, not an error (a split may lack classes): a warning
  gives both counts.
- recall@K needs K <= number of images; K is clamped to the number of images.
- a custom webdataset retrieval set is only treated as retrieval when the task says so;
  the task must agree with the set's ``dataset_type.txt``.
- numpy >= 2.4 breaks clip_benchmark's ``accuracy()``.
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import math
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from mobileclip_repro import shards
from mobileclip_repro.evaluate import datacomp_tasks
from mobileclip_repro.checkpoints import CheckpointInfo, checkpoint_model_name, read_checkpoint_info
from mobileclip_repro.benchmark_sets import IMAGE_EXTENSIONS, BenchmarkSetError, check_class_names, read_set_source
from mobileclip_repro.config import validate_benchmarks
from mobileclip_repro.records import FAILURE_SCHEMA, RECORD_SCHEMA

log = logging.getLogger(__name__)

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
ASSOCIATION = datacomp_tasks.ASSOCIATION
DEFAULT_RECALL_K = (1, 5, 10)
MAIN_METRICS = {CLASSIFICATION: ("acc1", "mean_per_class_recall", *datacomp_tasks.PREDICTION_METRICS),
                RETRIEVAL: ("mean_recall@1",), ASSOCIATION: (datacomp_tasks.WINOGAVIL_METRIC,)}
DATASET_TYPES = {CLASSIFICATION: "classification", RETRIEVAL: "retrieval", ASSOCIATION: "association"}
WDS_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS  # the extensions clip_benchmark decodes
PRECISIONS = ("fp32", "amp")  # evaluation.precision
DEFAULT_PRECISION = "amp"  # the schema's default: what every evaluation did before the setting existed


def uses_autocast(precision: str, device: str) -> bool:
    """Whether clip_benchmark runs the model under ``torch.autocast``: ``amp`` on CUDA only (on
    CPU autocast would be bfloat16 and change the numbers; it never ran there), never with ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "amp" and device == "cuda"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    dataset: str
    task: str
    root: str
    split: str = "test"
    recall_k: tuple[int, ...] = DEFAULT_RECALL_K
    annotation_file: str | None = None
    main_metric: str | None = None  # None: DataComp's default for the task
    hub_repo: str | None = None
    tags: tuple[str, ...] = ()
    metadata_fields: tuple[str, ...] = ()  # the columns of each image's npy metadata row
    group_by: str | None = None  # the metadata field a worst-group metric groups by
    revision: str | None = None  # of hub_repo: None is main (the fetch records the commit it resolved to)

    @property
    def is_wds(self) -> bool:
        return self.dataset.startswith("wds/")


def parse_benchmark_specs(specs: list) -> list[BenchmarkSpec]:
    """The benchmark list (``--benchmarks-json``), validated by the config schema's benchmark definition."""
    if not isinstance(specs, list) or not specs:
        raise ValueError("benchmarks JSON must be a non-empty list of benchmark specs")
    specs = validate_benchmarks(copy.deepcopy(specs), where="benchmarks")
    parsed = []
    for spec in specs:
        if "root" not in spec:  # the config fills it from results_dir; a hand-written list names it
            raise ValueError(f"benchmark {spec['name']!r}: 'root' is required")
        task = spec["task"]
        parsed.append(BenchmarkSpec(name=spec["name"], dataset=spec["dataset"], task=task, root=spec["root"],
                                    split=spec["split"], recall_k=tuple(sorted(set(spec["recall_k"]))),
                                    annotation_file=spec.get("annotation_file"),
                                    main_metric=spec.get("main_metric", MAIN_METRICS[task][0]),
                                    hub_repo=spec.get("hub_repo"), tags=tuple(spec.get("tags", [])),
                                    metadata_fields=tuple(spec.get("metadata_fields", [])),
                                    group_by=spec.get("group_by"), revision=spec.get("revision")))
    return parsed


def load_benchmark_specs(source: str | os.PathLike) -> list[BenchmarkSpec]:
    """From a JSON file, or the JSON text itself (what the Snakemake rule passes)."""
    text = str(source)
    if not text.lstrip().startswith("["):
        with open(source) as stream:
            text = stream.read()
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON: {error}") from error
    return parse_benchmark_specs(specs)


# ---------------------------------------------------------------- webdataset sets on disk

def wds_dataset_type(root: str) -> str:
    """clip_benchmark's rule: ``dataset_type.txt`` if present, else classification."""
    type_file = Path(root) / "dataset_type.txt"
    return type_file.read_text().strip().lower() if type_file.exists() else "classification"


def wds_num_shards(root: str, split: str) -> int:
    nshards_file = Path(root) / split / "nshards.txt"
    if not nshards_file.exists():
        raise FileNotFoundError(f"{nshards_file} missing: not a clip_benchmark webdataset set (root={root}, split={split})")
    text = nshards_file.read_text().strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{nshards_file}: expected a positive shard count, got {text!r}")
    return int(text)


def count_wds_images(root: str, split: str, sample_file: str | None = None) -> int:
    """Samples carrying an image (or, given ``sample_file``, a member with that extension),
    counted from tar headers without decoding anything."""
    extensions = (sample_file,) if sample_file else WDS_IMAGE_EXTENSIONS
    keys = set()
    for shard in range(wds_num_shards(root, split)):
        shard_path = Path(root) / split / f"{shard}.tar"
        with tarfile.open(shard_path) as archive:
            for member in archive:
                key_and_ext = shards.member_key(member.name)
                if member.isfile() and key_and_ext and key_and_ext[1].lower() in extensions:
                    keys.add(key_and_ext[0])
    return len(keys)


def _set_files(spec: BenchmarkSpec) -> tuple:
    """(name, size, mtime) of the files a webdataset set's check reads: its root's and its split
    folder's. The same tuple means the same files, already checked."""
    folders = [Path(spec.root), Path(spec.root) / spec.split]
    entries = []
    for folder in folders:
        if folder.is_dir():
            entries += sorted((entry.path, entry.stat().st_size, entry.stat().st_mtime_ns)
                              for entry in os.scandir(folder) if entry.is_file())
    return tuple(entries)


_CHECKED_SETS: set = set()  # (spec, files) whose check passed in this process


def check_dataset_present(spec: BenchmarkSpec) -> None:
    """Fail before clip_benchmark would start a download (no network on the clusters), and on a
    set that is cut short or names too few classes. An evaluate job checks each set before
    every checkpoint; a set whose files have not changed since it passed is not read again
    (the shard and label scans read every tar header of, e.g., ImageNet's 50k images)."""
    root = Path(spec.root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark {spec.name!r}: dataset root {root} does not exist")
    if not spec.is_wds:  # existence checks only: cheap, and of files outside the root too
        _check_dataset(spec, root)
        return
    key = (spec.name, spec.dataset, spec.task, spec.root, spec.split, _set_files(spec))
    if key in _CHECKED_SETS:
        return
    _check_dataset(spec, root)
    _CHECKED_SETS.add(key)


def _check_dataset(spec: BenchmarkSpec, root: Path) -> None:
    if spec.is_wds:
        for shard in range(wds_num_shards(spec.root, spec.split)):
            # a cut shard reads as a shorter set without an error: the record would score a subset
            shard_path = root / spec.split / f"{shard}.tar"
            problem = shards.tar_problem(shard_path) if shard_path.is_file() else "missing"
            if problem is not None:
                raise ValueError(f"benchmark {spec.name!r}: shard {shard_path}: {problem}; "
                                 "regenerate or refetch the set")
        dataset_type = wds_dataset_type(spec.root)
        expected = DATASET_TYPES[spec.task]
        if dataset_type != expected:
            raise ValueError(f"benchmark {spec.name!r}: task {spec.task} but {root}/dataset_type.txt says {dataset_type!r}")
        if spec.task == CLASSIFICATION:
            for required in ("classnames.txt", "zeroshot_classification_templates.txt"):
                if not (root / required).exists():
                    raise FileNotFoundError(f"benchmark {spec.name!r}: {root / required} missing")
            # also at DAG start for sets already there; here for the ones made or fetched since
            try:
                check_class_names(root, spec.split)
            except BenchmarkSetError as error:
                raise BenchmarkSetError(f"benchmark {spec.name!r}: {error}") from None
    elif spec.dataset == "flickr30k":
        annotation = Path(spec.annotation_file or root / f"flickr30k_{spec.split}_karpathy.txt")
        if not annotation.exists():
            raise FileNotFoundError(f"benchmark {spec.name!r}: annotation file {annotation} missing")
    elif spec.dataset == "mscoco_captions":
        images = root / ("train2014" if spec.split == "train" else "val2014")
        annotation = Path(spec.annotation_file or root / f"coco_{spec.split}_karpathy.json")
        for required in (images, annotation):
            if not required.exists():
                raise FileNotFoundError(f"benchmark {spec.name!r}: {required} missing")


# ---------------------------------------------------------------- checkpoint and metrics

def main_metric(task: str, metrics: dict, name: str | None = None) -> tuple[str, float]:
    """DataComp's convention: top-1 accuracy (or the task's listed metric, e.g. mean per-class
    recall for Caltech-101, Aircraft, Flowers, Pets), or the mean of the two retrieval R@1."""
    name = name or MAIN_METRICS[task][0]
    if name == "mean_recall@1":
        return name, (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return name, metrics[name]


def clamp_recall_k(recall_k: tuple[int, ...], num_images: int, benchmark: str) -> list[int]:
    clamped = sorted({min(k, num_images) for k in recall_k})
    if clamped != sorted(recall_k):
        log.warning("%s: recall@K needs K <= %d images; recall_k %s clamped to %s",
                    benchmark, num_images, list(recall_k), clamped)
    return clamped


def _json_safe(value):
    # clip_benchmark reports acc5 as NaN for sets with < 5 classes; strict JSON has no NaN.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _CountingLoader:
    """Counts images (and captions) as clip_benchmark iterates; it exposes ``dataset`` as it expects."""

    def __init__(self, loader):
        self.loader = loader
        self.dataset = loader.dataset
        self.num_images = 0
        self.num_texts = 0

    def __iter__(self):
        for images, targets in self.loader:
            self.num_images += len(images)
            if isinstance(targets, (list, tuple)):
                self.num_texts += sum(len(captions) for captions in targets)
            yield images, targets


DEFAULT_DECODED_BYTES = 1 << 30


class DecodedSets:
    """Each benchmark set's batches as the model's eval transform makes them, decoded once per
    job and reused for every later checkpoint of the same model (an evaluate job runs a run's
    seeds x checkpoints in turn: 18 in the toy, each of whose benchmark sets would otherwise be
    read, JPEG-decoded and transformed again). A set's batches are kept only while all kept
    sets fit in ``max_bytes`` of image tensors; a set that does not fit (ImageNet at 224 px) is
    streamed for every checkpoint, as without the cache."""

    def __init__(self, max_bytes: int = DEFAULT_DECODED_BYTES):
        self.max_bytes, self.used_bytes = max_bytes, 0
        self.sets: dict[tuple, "_ReusedBatches"] = {}

    def loader(self, key: tuple, make_loader, count_images) -> "_ReusedBatches":
        if key not in self.sets:
            loader, dataset = make_loader()
            self.sets[key] = _ReusedBatches(loader, dataset, count_images(dataset), self)
        return self.sets[key]


class _ReusedBatches:
    """A loader's batches: streamed on the first pass, replayed from memory after one complete
    pass that fit the job's budget (``budget`` None: always streamed). ``dataset`` is the
    loader's, as clip_benchmark expects of a loader; ``benchmark_set`` the set clip_benchmark
    built (classes, templates), with its ``num_images``."""

    def __init__(self, loader, benchmark_set, num_images: int, budget: DecodedSets | None):
        self.loader, self.dataset, self.budget = loader, loader.dataset, budget
        self.benchmark_set, self.num_images = benchmark_set, num_images
        self.batches: list | None = None

    def __iter__(self):
        if self.batches is not None:
            yield from self.batches
            return
        kept, size = ([] if self.budget is not None else None), 0
        for batch in self.loader:
            if kept is not None:
                size += batch[0].element_size() * batch[0].nelement()
                if self.budget.used_bytes + size > self.budget.max_bytes:
                    kept = None
                else:
                    kept.append(batch)
            yield batch
        if kept is not None:
            self.batches, self.budget.used_bytes = kept, self.budget.used_bytes + size
            self.loader = None  # its workers and pipeline are no longer needed


def _check_numpy() -> None:
    import numpy

    major, minor = (int(part) for part in numpy.__version__.split(".")[:2])
    if (major, minor) >= (2, 4):
        raise RuntimeError(f"numpy {numpy.__version__} breaks clip_benchmark 1.6.2's accuracy(); install numpy<2.4")


def run_benchmark(model, transform, tokenizer, spec: BenchmarkSpec, device: str, batch_size: int,
                  num_workers: int, decoded: DecodedSets | None = None, precision: str = DEFAULT_PRECISION) -> dict:
    """Metrics for one benchmark: clip_benchmark's dict plus sample counts and the K actually used.
    ``decoded``: the job's decoded sets, shared by its checkpoints (``DecodedSets``);
    ``precision``: ``evaluation.precision`` (``uses_autocast``)."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    check_dataset_present(spec)
    amp = uses_autocast(precision, device)
    if spec.task == ASSOCIATION:
        return run_association(model, transform, tokenizer, spec, device, amp)
    def make_loader():
        dataset = build_dataset(dataset_name=spec.dataset, root=spec.root, transform=transform, split=spec.split,
                                download=False, annotation_file=spec.annotation_file, task=spec.task)
        if not spec.is_wds:
            return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                               collate_fn=get_dataset_collate_fn(spec.dataset)), dataset
        shards = wds_num_shards(spec.root, spec.split)
        workers = num_workers
        if workers > shards:
            log.warning("%s: %d loader workers for %d shards; using %d (more fail in clip_benchmark)",
                        spec.name, workers, shards, shards)
            workers = shards
        return torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None, shuffle=False,
                                           num_workers=workers), dataset

    def count_images(dataset) -> int:
        return count_wds_images(spec.root, spec.split) if spec.is_wds else len(dataset)

    if decoded is None:
        made, dataset = make_loader()
        loader = _ReusedBatches(made, dataset, count_images(dataset), None)
    else:  # the same set, transform and batching: the same batches
        loader = decoded.loader((repr(spec), repr(transform), batch_size, num_workers), make_loader, count_images)
    dataset, num_images = loader.benchmark_set, loader.num_images
    if num_images == 0:
        raise ValueError(f"benchmark {spec.name!r}: no images in {spec.root} (split {spec.split})")
    counting = _CountingLoader(loader)
    model = _MeteredModel(model)  # the FLOPs of its image and text forwards, for the compute ledger
    extra: dict = {}
    if spec.task == CLASSIFICATION and spec.main_metric in datacomp_tasks.PREDICTION_METRICS:
        metrics = _classify_with_metadata(model, counting, tokenizer, dataset, spec, device, amp, batch_size,
                                          num_workers)
        extra["num_classes"] = len(dataset.classes)
    elif spec.task == CLASSIFICATION:
        metrics = zeroshot_classification.evaluate(model, counting, tokenizer, dataset.classes, dataset.templates,
                                                   device=device, amp=amp)
        extra["num_classes"] = len(dataset.classes)
    else:
        recall_k = clamp_recall_k(spec.recall_k, num_images, spec.name)
        if 1 not in recall_k:
            raise ValueError(f"benchmark {spec.name!r}: recall_k must include 1 (the main metric is mean_recall@1)")
        metrics = zeroshot_retrieval.evaluate(model, counting, tokenizer, device=device, amp=amp,
                                              recall_k_list=recall_k)
        extra.update(recall_k=recall_k, num_texts=counting.num_texts)
    if counting.num_images != num_images:
        raise RuntimeError(f"benchmark {spec.name!r}: counted {num_images} images but evaluated {counting.num_images}")
    return {"metrics": {key: _json_safe(float(value)) for key, value in metrics.items()},
            # as the trainer's `precision` names them: "amp" = clip_benchmark's torch.autocast(device)
            "num_samples": counting.num_images, "device": device, "precision": "amp" if amp else "fp32",
            "flops": model.flops(), **extra}


def _classify_with_metadata(model, loader, tokenizer, dataset, spec: BenchmarkSpec, device: str, amp: bool,
                            batch_size: int, num_workers: int) -> dict:
    """clip_benchmark's classification metrics plus a DataComp metric that needs every image's
    prediction and metadata (worst group, macro F1)."""
    from clip_benchmark.metrics.zeroshot_classification import (accuracy, run_classification,
                                                                zero_shot_classifier)
    from sklearn.metrics import balanced_accuracy_score

    classifier = zero_shot_classifier(model, tokenizer, dataset.classes, dataset.templates, device, amp=amp)
    logits, targets = run_classification(model, classifier, loader, device, amp=amp)
    # the three numbers clip_benchmark's evaluate() computes from the same logits, its way
    acc1, acc5 = accuracy(logits, targets, topk=(1, 5)) if len(dataset.classes) >= 5 else (
        accuracy(logits, targets, topk=(1,))[0], float("nan"))
    metrics = {"acc1": acc1, "acc5": acc5,
               "mean_per_class_recall": balanced_accuracy_score(targets, logits.argmax(axis=1))}
    metadata = None
    if spec.main_metric != datacomp_tasks.MACRO_F1:
        labels, metadata = datacomp_tasks.read_wds_metadata(spec.root, spec.split, batch_size, num_workers)
        datacomp_tasks.check_metadata_matches(labels, targets.numpy(), f"benchmark {spec.name!r}")
    metrics.update(datacomp_tasks.prediction_metrics(spec.main_metric, logits.numpy(), targets.numpy(), metadata,
                                                     spec.metadata_fields, spec.group_by))
    return metrics


def run_association(model, transform, tokenizer, spec: BenchmarkSpec, device: str, amp: bool) -> dict:
    """WinoGAViL: per instance, rank the candidates by cosine similarity to the cue's prompt."""
    import torch
    import torch.nn.functional as F
    import webdataset as wds

    num_instances = count_wds_images(spec.root, spec.split, sample_file="cue.txt")
    if num_instances == 0:
        raise ValueError(f"benchmark {spec.name!r}: no instances in {spec.root} (split {spec.split})")
    pattern = os.path.join(spec.root, spec.split, "{0..%d}.tar" % (wds_num_shards(spec.root, spec.split) - 1))
    metered = _MeteredModel(model)
    scores, candidate_counts = [], []
    with torch.no_grad():
        for sample in wds.WebDataset(pattern, nodesplitter=lambda src: src, shardshuffle=False):
            cue, images, is_association = datacomp_tasks.read_winogavil_sample(sample)
            pixels = torch.stack([transform(image) for image in images]).to(device)
            with torch.autocast(device, enabled=amp):
                image_features = F.normalize(metered.encode_image(pixels).float(), dim=-1)
                prompt = tokenizer([datacomp_tasks.clip_prompt(cue)]).to(device)
                text_features = F.normalize(metered.encode_text(prompt).float(), dim=-1)
            similarities = (text_features @ image_features.T)[0].cpu().numpy()
            scores.append(datacomp_tasks.association_jaccard(similarities, is_association))
            candidate_counts.append(len(images))
    if len(scores) != num_instances:
        raise RuntimeError(f"benchmark {spec.name!r}: counted {num_instances} instances but evaluated {len(scores)}")
    metrics = datacomp_tasks.winogavil_scores(scores, candidate_counts)
    if not math.isfinite(metrics[spec.main_metric]):
        raise ValueError(f"benchmark {spec.name!r}: {spec.main_metric} averages over instances with 10 or 12 "
                         f"candidates, and {spec.root} has none (candidate counts: {sorted(set(candidate_counts))})")
    return {"metrics": {key: _json_safe(float(value)) for key, value in metrics.items()},
            "num_samples": len(scores), "device": device, "precision": "amp" if amp else "fp32",
            "flops": metered.flops()}


class _MeteredModel:
    """A CLIP model whose ``encode_image``/``encode_text`` count their FLOPs (``flops.PerItemFlops``:
    the first call of each counted by FlopCounterMode, the rest scaled by batch size)."""

    def __init__(self, model):
        from mobileclip_repro.flops import PerItemFlops

        self._model = model
        self.encode_image = PerItemFlops(model.encode_image)
        self.encode_text = PerItemFlops(model.encode_text)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def flops(self) -> dict:
        return {"total": int(self.encode_image.total + self.encode_text.total),
                "images": self.encode_image.items, "texts": self.encode_text.items,
                "per_image": self.encode_image.per_item, "per_text": self.encode_text.per_item}


def build_record(info: CheckpointInfo, model_name: str, spec: BenchmarkSpec, result: dict,
                 eval_seconds: float, precision: str = DEFAULT_PRECISION) -> dict:
    metric_name, metric_value = main_metric(spec.task, result["metrics"], spec.main_metric)
    record = {
        "schema": RECORD_SCHEMA,
        "run": info.run,
        "role": info.role,
        "seed": info.seed,
        "epoch": info.epoch,
        "seen_samples": info.seen_samples,
        "dr": info.dr,
        "model": model_name,
        "checkpoint": os.path.abspath(info.path),
        "benchmark": spec.name,
        "dataset": spec.dataset,
        "task": spec.task,
        "split": spec.split,
        "tags": list(spec.tags),
        "metrics": result["metrics"],
        "main_metric_name": metric_name,
        "main_metric": metric_value,
        "num_samples": result["num_samples"],
        "device": result["device"],
        "precision": result["precision"],
        "precision_setting": precision,
        # the hub repo, requested revision and resolved commit of a fetched set; None for a set made here
        "hub_source": read_set_source(spec.root),
        "clip_benchmark_version": importlib.metadata.version("clip_benchmark"),
        "eval_seconds": round(eval_seconds, 3),
        "run_spec": info.run_spec,
    }
    record.update({key: result[key] for key in ("num_classes", "recall_k", "num_texts", "flops") if key in result})
    return record


def failure_path(out_dir: str | os.PathLike, benchmark: str) -> Path:
    return Path(out_dir) / f"{benchmark}.failed.json"


def record_failure(out_dir: str | os.PathLike, spec: BenchmarkSpec, info: CheckpointInfo, error: Exception) -> Path:
    """What a benchmark that could not be evaluated leaves instead of its record: which one, for
    which checkpoint, and why (the report names it and leaves it out of every average)."""
    path = failure_path(out_dir, spec.name)
    log.error("%s: failed for %s (%s: %s); recorded in %s, going on with the other benchmarks",
              spec.name, info.path, type(error).__name__, error, path)
    shards.write_json_atomic(path, {"schema": FAILURE_SCHEMA, "run": info.run, "role": info.role, "seed": info.seed,
                                    "epoch": info.epoch, "seen_samples": info.seen_samples, "dr": info.dr,
                                    "checkpoint": os.path.abspath(info.path), "benchmark": spec.name,
                                    "error": f"{type(error).__name__}: {error}"})
    return path


def _evaluate_benchmarks(model, transform, tokenizer, benchmarks: list[BenchmarkSpec], info: CheckpointInfo,
                         model_name: str, device: str, batch_size: int, num_workers: int, skip_failed: bool,
                         record_path, decoded: DecodedSets | None = None,
                         precision: str = DEFAULT_PRECISION) -> list[Path]:
    """One record per benchmark at ``record_path(spec)``; with ``skip_failed`` a benchmark that
    raises leaves a failure file beside it instead, and the others go on."""
    paths = []
    for spec in benchmarks:
        path = record_path(spec)
        started = time.perf_counter()
        log.info("%s: %s on %s (%s split)", spec.name, spec.task, spec.dataset, spec.split)
        try:
            result = run_benchmark(model, transform, tokenizer, spec, device, batch_size, num_workers, decoded,
                                   precision)
        except Exception as error:
            if not skip_failed:
                raise
            paths.append(record_failure(path.parent, spec, info, error))
            continue
        record = build_record(info, model_name, spec, result, time.perf_counter() - started, precision)
        shards.write_json_atomic(path, record, allow_nan=False)
        failure_path(path.parent, spec.name).unlink(missing_ok=True)  # an earlier attempt's, now superseded
        log.info("%s: %s = %.4f on %d images in %.1f s -> %s", spec.name, record["main_metric_name"],
                 record["main_metric"], record["num_samples"], record["eval_seconds"], path)
        paths.append(path)
    return paths


def evaluate_checkpoint(checkpoint: str | os.PathLike, benchmarks: list[BenchmarkSpec], out_dir: str | os.PathLike,
                        model_name: str | None = None, device: str = "cpu", batch_size: int = 256,
                        num_workers: int = 0, force: bool = False, skip_failed: bool = False,
                        decoded: DecodedSets | None = None, precision: str = DEFAULT_PRECISION) -> list[Path]:
    """Evaluate ``checkpoint`` on each benchmark; returns the record paths (existing ones kept
    unless ``force``), and with ``skip_failed`` the failure files of benchmarks that failed.
    ``decoded``: pass one ``DecodedSets`` to each checkpoint of a job to decode its sets once."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    out_dir = Path(out_dir)
    paths = {spec.name: out_dir / f"{spec.name}.json" for spec in benchmarks}
    todo = [spec for spec in benchmarks if force or not paths[spec.name].exists()]
    for spec in benchmarks:
        if spec not in todo:
            log.info("%s: record %s exists, skipped (use --force to redo)", spec.name, paths[spec.name])
    if not todo:
        return list(paths.values())
    _check_numpy()
    if not skip_failed:  # fail before loading anything; with skip_failed each set fails on its own, below
        for spec in todo:
            check_dataset_present(spec)

    from mobileclip_repro.models import create_model_and_transforms, get_tokenizer

    info = read_checkpoint_info(checkpoint)
    model_name = checkpoint_model_name(info, model_name, "evaluate")
    started = time.perf_counter()
    model, _, eval_transform = create_model_and_transforms(model_name, pretrained=str(checkpoint), device=device)
    model.eval()
    tokenizer = get_tokenizer(model_name)
    log.info("loaded %s (%s, run %s, epoch %d, %d seen samples) in %.1f s", checkpoint, model_name, info.run,
             info.epoch, info.seen_samples, time.perf_counter() - started)
    written = _evaluate_benchmarks(model, eval_transform, tokenizer, todo, info, model_name, device, batch_size,
                                   num_workers, skip_failed, lambda spec: paths[spec.name], decoded, precision)
    return [paths[spec.name] for spec in benchmarks if spec not in todo] + written


class _StringBatch(list):
    """Captions handed through clip_benchmark's ``tokenizer(texts).to(device)`` untouched, so that
    each teacher tokenizes them with its own tokenizer."""

    def to(self, device):
        return self


def _teacher_models(ensemble) -> dict[int | None, object]:
    """clip_benchmark-facing models: member k alone (key k) and the whole ensemble (key None).

    Features are each member's L2-normalized output, concatenated for the ensemble: after
    clip_benchmark normalizes again, the ensemble's similarity is the members' mean cosine,
    the quantity whose softmax the DR loss distils (docs/reference.md §5, average over members).
    """
    import torch
    import torch.nn.functional as F

    class Member(torch.nn.Module):
        def __init__(self, member: int | None):
            super().__init__()
            self.member = member

        @torch.inference_mode()
        def encode_image(self, images):
            if self.member is None:
                return ensemble.encode_images(images).to(images.device)
            return F.normalize(ensemble.models[self.member].encode_image(images.to(ensemble.device)).float(), dim=-1)

        @torch.inference_mode()
        def encode_text(self, texts):
            if self.member is None:
                return ensemble.encode_texts(list(texts)).to(ensemble.device)
            tokens = ensemble.tokenizers[self.member](list(texts)).to(ensemble.device)
            return F.normalize(ensemble.models[self.member].encode_text(tokens).float(), dim=-1)

    return {member: Member(member) for member in [*range(len(ensemble.models)), None]}


def teacher_eval_transform(ensemble):
    """The members' shared eval preprocessing; members that preprocess differently cannot be one ensemble view."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    configs = [dict(model.visual.preprocess_cfg) for model in ensemble.models]
    if any(config != configs[0] for config in configs[1:]):
        raise ValueError(f"teachers {list(ensemble.model_names)} preprocess images differently ({configs}); "
                         "their ensemble has no single eval transform")
    return image_transform_v2(PreprocessCfg(**configs[0]), is_train=False)


def evaluate_teachers(reinforce_config: str | os.PathLike, benchmarks: list[BenchmarkSpec],
                      out_dir: str | os.PathLike, pretrained_root: str | os.PathLike | None = None,
                      device: str = "cpu", batch_size: int = 256, num_workers: int = 0,
                      skip_failed: bool = False, precision: str = DEFAULT_PRECISION) -> list[Path]:
    """Evaluate each teacher of a reinforcement JSON and their ensemble: ``<out_dir>/<member>/<benchmark>.json``
    (member = the pretrained entry's stem, or ``<model>_<tag>``) and ``<out_dir>/ensemble/<benchmark>.json``."""
    from mobileclip_repro.teachers import ReinforceConfig, TeacherEnsemble

    if not skip_failed:
        for spec in benchmarks:
            check_dataset_present(spec)
    _check_numpy()
    config = ReinforceConfig.load(reinforce_config)
    ensemble = TeacherEnsemble.from_config(config, pretrained_root=pretrained_root, device=device,
                                           batch_size=batch_size)
    transform = teacher_eval_transform(ensemble)
    # a checkpoint file is named by its stem, an open_clip tag by model and tag (as the ensemble resolved them)
    names = [Path(weights).stem if os.path.isfile(weights) else f"{model}_{entry}"
             for model, entry, weights in zip(config.model_names, config.pretrained, ensemble.pretrained)]
    if len(set(names)) != len(names):
        names = [f"{position}_{name}" for position, name in enumerate(names)]
    out_dir = Path(out_dir)
    paths = []
    for member, model in _teacher_models(ensemble).items():
        label = "ensemble" if member is None else names[member]
        model_name = "+".join(config.model_names) if member is None else config.model_names[member]
        info = CheckpointInfo(path=str(reinforce_config), run=label, epoch=0, seen_samples=0, dr=False,
                              model_name=model_name, role="ensemble" if member is None else "teacher",
                              run_spec={"reinforce_config": str(reinforce_config),
                                        "pretrained": list(ensemble.pretrained)})
        paths += _evaluate_benchmarks(model, transform, _StringBatch, benchmarks, info, model_name, device,
                                      batch_size, num_workers, skip_failed,
                                      lambda spec, label=label: out_dir / label / f"{spec.name}.json",
                                      precision=precision)
    return paths


def _is_failure(path: Path) -> bool:
    return path.name.endswith(".failed.json")
