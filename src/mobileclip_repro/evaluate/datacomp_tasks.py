"""The five DataComp tasks clip_benchmark does not score: their metrics, computed as DataComp's
evaluation code (``eval_utils/{wilds,fairness,wino}_eval.py``) defines them.

- iWildCam, ``F1-macro_all``: WILDS' macro F1 of the top-1 predictions, over the classes
  present in the ground truth (a class only ever predicted does not pull the mean down).
- FMoW ``acc_worst_region``, GeoDE ``acc_wg``: top-1 accuracy of the worst group (region),
  over the groups that have samples. DataComp's FMoW code would skip a group whose name holds
  "Other", but it groups by bare region codes, so no group is skipped; neither is one here.
- Dollar Street, ``acc_top5_wg``: top-5 accuracy of the worst income group (``income_ds``).
- WinoGAViL, ``jaccard_score_10-12``: per instance, the cue ("A"/"An" + the cue, lower-cased)
  picks as many candidate images as it has associations, by cosine similarity; the score is
  the Jaccard index of picked and true associations, averaged over the instances with 10 or
  12 candidates (DataComp's main metric; 5-6 and all are reported too).

The four WILDS/fairness sets are clip_benchmark webdataset sets whose samples also carry an
``npy``: one row of integer metadata per image, its columns named by the set's
``metadata_fields`` (DataComp's mirrors: iWildCam ``location, sequence, year, month, day,
hour, minute, second, y``; FMoW ``region, year, y``; Dollar Street ``income_ds, income_meta,
region``; GeoDE ``region, country``). WinoGAViL's set is a webdataset too, one sample per
instance (``benchmark_sets.WINOGAVIL_KEYS``), converted once from the hub's files by
``benchmark_sets.write_winogavil_set``.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from mobileclip_repro.benchmark_sets import IMAGE_EXTENSIONS, WINOGAVIL_KEYS, MetadataError, wds_shard_paths

log = logging.getLogger(__name__)

# main metric -> the top-k accuracy whose worst group it is
WORST_GROUP_METRICS = {"acc_wg": 1, "acc_worst_region": 1, "acc_top5_wg": 5}
MACRO_F1 = "F1-macro_all"
PREDICTION_METRICS = (*WORST_GROUP_METRICS, MACRO_F1)  # need every image's prediction, not only accuracy
WINOGAVIL_METRIC = "jaccard_score_10-12"
ASSOCIATION = "visual_association"  # the task name of WinoGAViL-style sets


def topk_correct(logits, targets, k: int) -> np.ndarray:
    """Per image: is the true class among the k highest logits (k = 1: top-1)."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else np.argsort(-logits, axis=1)
    return (top == targets[:, None]).any(axis=1)


def group_accuracies(correct, groups) -> dict[int, tuple[float, int]]:
    """{group: (accuracy, count)} over the groups that have samples."""
    correct, groups = np.asarray(correct, dtype=float), np.asarray(groups)
    return {int(group): (float(correct[groups == group].mean()), int((groups == group).sum()))
            for group in np.unique(groups)}


def worst_group_accuracy(logits, targets, groups, k: int = 1) -> tuple[float, dict[int, tuple[float, int]]]:
    """The top-k accuracy of the worst non-empty group, and every group's (accuracy, count)."""
    per_group = group_accuracies(topk_correct(logits, targets, k), groups)
    if not per_group:
        raise MetadataError("no samples to group")
    return min(accuracy for accuracy, _ in per_group.values()), per_group


def macro_f1(predictions, targets) -> float:
    """WILDS' ``F1(average="macro")``: sklearn's, over the labels present in ``targets``."""
    from sklearn.metrics import f1_score

    targets = np.asarray(targets)
    return float(f1_score(targets, np.asarray(predictions), average="macro", labels=np.unique(targets)))


def prediction_metrics(main_metric: str, logits, targets, metadata=None, metadata_fields=(),
                       group_by: str | None = None) -> dict[str, float]:
    """The DataComp metric ``main_metric`` and what it is made of (per-group accuracies and counts)."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    if main_metric == MACRO_F1:
        return {MACRO_F1: macro_f1(logits.argmax(axis=1), targets)}
    if main_metric not in WORST_GROUP_METRICS:
        raise ValueError(f"{main_metric!r} is not one of DataComp's prediction metrics {PREDICTION_METRICS}")
    groups = metadata_column(metadata, metadata_fields, group_by)
    k = WORST_GROUP_METRICS[main_metric]
    worst, per_group = worst_group_accuracy(logits, targets, groups, k)
    name = "acc" if k == 1 else f"acc_top{k}"
    metrics = {main_metric: worst}
    for group, (accuracy, count) in per_group.items():
        metrics[f"{name}_{group_by}:{group}"] = accuracy
        metrics[f"count_{group_by}:{group}"] = float(count)
    return metrics


def metadata_column(metadata, metadata_fields, field: str | None) -> np.ndarray:
    metadata = np.asarray(metadata)
    fields = list(metadata_fields)
    if field not in fields:
        raise MetadataError(f"group_by {field!r} is not among the set's metadata_fields {fields}")
    if metadata.ndim != 2 or metadata.shape[1] != len(fields):
        raise MetadataError(f"metadata rows have shape {metadata.shape[1:]} but metadata_fields names {len(fields)} "
                            f"columns {fields}")
    return metadata[:, fields.index(field)].astype(np.int64)


# ---------------------------------------------------------------- the metadata of a webdataset set

def read_wds_metadata(root: str | os.PathLike, split: str, batch_size: int, num_workers: int):
    """Every image's (label, metadata row) of a clip_benchmark webdataset set, in the order the
    evaluation loader yields its images.

    The same shards, read by a loader with the same batch size and workers as clip_benchmark's
    (webdataset hands shard i to worker i mod n; the loader takes batches from the workers in
    turn), come out in the same order. The caller checks the labels against the evaluated ones,
    so an order that ever differed would be an error, not a silently shuffled grouping.
    """
    import torch
    import webdataset as wds

    paths = wds_shard_paths(root, split)
    if paths is None:
        raise MetadataError(f"{Path(root) / split / 'nshards.txt'} missing: not a webdataset set")
    pattern = os.path.join(str(root), split, "{0..%d}.tar" % (len(paths) - 1))
    # as clip_benchmark builds it (no shard shuffle, no node splitting), minus the image decode
    dataset = wds.WebDataset(pattern, nodesplitter=lambda src: src).to_tuple("cls", "npy", "__key__").map_tuple(
        _decode_int, _decode_npy, None)
    loader = torch.utils.data.DataLoader(dataset.batched(batch_size, collation_fn=_collate_metadata),
                                         batch_size=None, shuffle=False, num_workers=num_workers)
    labels, rows = [], []
    for batch_labels, batch_rows in loader:
        labels.extend(batch_labels)
        rows.extend(batch_rows)
    widths = {row.shape for row in rows}
    if len(widths) > 1:
        raise MetadataError(f"{root}: metadata rows of different shapes {sorted(widths)}")
    return np.asarray(labels, dtype=np.int64), np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)


def _decode_int(data: bytes) -> int:
    return int(data.decode().strip())


def _decode_npy(data: bytes) -> np.ndarray:
    return np.atleast_1d(np.load(io.BytesIO(data), allow_pickle=False)).astype(np.int64)


def _collate_metadata(samples):
    return [label for label, _, _ in samples], [row for _, row, _ in samples]


def check_metadata_matches(labels, evaluated_targets, where: str) -> None:
    labels, evaluated_targets = np.asarray(labels), np.asarray(evaluated_targets)
    if labels.shape != evaluated_targets.shape or not (labels == evaluated_targets).all():
        raise MetadataError(f"{where}: the metadata pass read {len(labels)} labels that do not match the "
                            f"{len(evaluated_targets)} evaluated ones (images and metadata out of step)")


# ---------------------------------------------------------------- WinoGAViL

def clip_prompt(cue: str) -> str:
    """DataComp's (and WinoGAViL's) prompt for a cue: its article, then the cue in lower case."""
    cue = cue.strip().lower()
    return f"An {cue}" if cue[:1] in "aeiou" and cue else f"A {cue}"


def association_jaccard(similarities, is_association) -> float:
    """One instance: pick as many candidates as it has associations, the most similar first;
    the Jaccard index of picked and associated."""
    from sklearn.metrics import jaccard_score

    similarities = np.asarray(similarities, dtype=float)
    is_association = np.asarray(is_association, dtype=bool)
    picks = np.zeros(len(similarities), dtype=bool)
    count = int(is_association.sum())
    if count:
        picks[np.argsort(similarities)[-count:]] = True
    return float(jaccard_score(is_association, picks))


def winogavil_scores(scores, candidate_counts) -> dict[str, float]:
    """DataComp's WinoGAViL summary: the mean Jaccard overall and per candidate count (5, 6, 10,
    12) and range (5-6, 10-12); NaN where no instance has that many candidates."""
    scores, counts = np.asarray(scores, dtype=float), np.asarray(candidate_counts)

    def mean(mask):
        return float(scores[mask].mean()) if mask.any() else float("nan")

    return {"avg_jaccard_score": mean(np.ones(len(scores), dtype=bool)),
            **{f"jaccard_score_{n}": mean(counts == n) for n in (5, 6, 10, 12)},
            "jaccard_score_5-6": mean(counts <= 6), "jaccard_score_10-12": mean(counts >= 10)}


def read_winogavil_sample(sample: dict) -> tuple[str, list, np.ndarray]:
    """(cue, candidate images in order as PIL images, association mask) of one webdataset
    sample as read from its tar (undecoded bytes)."""
    from PIL import Image

    missing = [key for key in WINOGAVIL_KEYS if key not in sample]
    if missing:
        raise MetadataError(f"WinoGAViL sample {sample.get('__key__')!r} lacks {missing}")
    candidates = json.loads(sample["candidates.json"])
    associations = set(json.loads(sample["associations.json"]))
    unknown = associations - set(candidates)
    if unknown:
        raise MetadataError(f"WinoGAViL sample {sample['__key__']!r}: associations {sorted(unknown)} are not candidates")
    images = []
    for position in range(len(candidates)):
        found = [sample[f"{position}.{ext}"] for ext in IMAGE_EXTENSIONS if f"{position}.{ext}" in sample]
        if not found:
            raise MetadataError(f"WinoGAViL sample {sample['__key__']!r}: no image for candidate {position}")
        images.append(Image.open(io.BytesIO(found[0])).convert("RGB"))
    return sample["cue.txt"].decode().strip(), images, np.array([name in associations for name in candidates])
